#!/usr/bin/env python3
"""Reference values for the network parity tests, computed by torchvision.

    net_reference.py make-alexnet --seed S --out alexnet.pth
        torchvision's AlexNet with weights from torch.manual_seed(S), saved as a state_dict.
    net_reference.py surgery --classes K --out names.json
        Names and shapes of torchvision's AlexNet after Case 1 (classifier[6] replaced by
        Linear(4096, K)) and Case 2 (classifier[4] and [6] replaced by one Linear(4096, K)),
        and of SqueezeNet 1.1 with classifier[1] replaced by Conv2d(512, K, 1).
    net_reference.py run --arch A --pth P --input in.h5 --out ref.h5
        Loads torchvision's model A with the state_dict P, in eval mode; reads the batch
        'x' [N,3,H,W] and integer 'targets' [N] from in.h5; writes 'logits', 'loss'
        (cross-entropy, mean), 'input_grad' and 'grad.<key>' for every parameter.
"""
import argparse
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import torchvision


def make_alexnet(args):
    torch.manual_seed(args.seed)
    model = torchvision.models.alexnet(weights=None)
    torch.save(model.state_dict(), args.out)


def surgery(args):
    import json

    k = args.classes
    case1 = torchvision.models.alexnet(weights=None)
    case1.classifier[6] = torch.nn.Linear(4096, k)
    case2 = torchvision.models.alexnet(weights=None)
    c = case2.classifier
    case2.classifier = torch.nn.Sequential(c[0], c[1], c[2], c[3], torch.nn.Linear(4096, k))
    squeeze = torchvision.models.squeezenet1_1(weights=None)
    squeeze.classifier[1] = torch.nn.Conv2d(512, k, kernel_size=1)
    out = {name: [[n, list(p.shape)] for n, p in m.named_parameters()]
           for name, m in (("case1", case1), ("case2", case2), ("squeezenet", squeeze))}
    with open(args.out, "w") as f:
        json.dump(out, f)


def run(args):
    torch.set_num_threads(2)
    state = torch.load(args.pth, map_location="cpu")
    head = "classifier.6.weight" if args.arch == "alexnet" else "classifier.1.weight"
    model = getattr(torchvision.models, args.arch)(weights=None, num_classes=state[head].shape[0])
    model.load_state_dict(state)
    model.eval()
    with h5py.File(args.input, "r") as f:
        x = torch.from_numpy(np.asarray(f["x"], dtype=np.float32)).requires_grad_()
        targets = torch.from_numpy(np.asarray(f["targets"], dtype=np.int64))
    logits = model(x)
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    with h5py.File(args.out, "w") as f:
        f["logits"] = logits.detach().numpy()
        f["loss"] = np.asarray(loss.item(), dtype=np.float32)
        f["input_grad"] = x.grad.numpy()
        for name, p in model.named_parameters():
            f["grad." + name] = p.grad.numpy()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-alexnet")
    m.add_argument("--seed", type=int, required=True)
    m.add_argument("--out", required=True)
    s = sub.add_parser("surgery")
    s.add_argument("--classes", type=int, required=True)
    s.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--arch", required=True, choices=["alexnet", "squeezenet1_1"])
    r.add_argument("--pth", required=True)
    r.add_argument("--input", required=True)
    r.add_argument("--out", required=True)
    args = ap.parse_args()
    {"make-alexnet": make_alexnet, "surgery": surgery, "run": run}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
