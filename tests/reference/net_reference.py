#!/usr/bin/env python3
"""Reference values for the network parity tests, computed by torchvision.

    net_reference.py make-alexnet --seed S --out alexnet.pth
        torchvision's AlexNet with weights from torch.manual_seed(S), saved as a state_dict.
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
    r = sub.add_parser("run")
    r.add_argument("--arch", required=True, choices=["alexnet", "squeezenet1_1"])
    r.add_argument("--pth", required=True)
    r.add_argument("--input", required=True)
    r.add_argument("--out", required=True)
    args = ap.parse_args()
    make_alexnet(args) if args.cmd == "make-alexnet" else run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
