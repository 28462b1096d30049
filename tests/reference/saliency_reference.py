#!/usr/bin/env python3
"""Reference saliency maps computed by PyTorch for the saliency tests.

    saliency_reference.py --arch A --pth P --input in.h5 --out ref.h5 [--steps M]

Computes in float32, or float64 with --double. Reads the normalised batch 'x' [N,3,H,W] and integer 'targets' [N]; writes, each
[N,H,W]: 'vanilla' = max_c |dS/dx|, 'integrated' (right Riemann sum, M steps, black
baseline under ImageNet normalisation), 'guided' (every ReLU's backward replaced by the
guided rule), 'gradcam' (at the last convolution's ReLU, bilinear upsampling with
align_corners=False); and 'logits'. S = sum_n logits[n, targets[n]].
"""
import argparse
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import torchvision

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class GuidedReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x.clamp(min=0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (y > 0) * (g > 0)


class GuidedReLU(torch.nn.Module):
    def forward(self, x):
        return GuidedReLUFn.apply(x)


def swap_relus(module):
    for name, child in module.named_children():
        if isinstance(child, torch.nn.ReLU):
            setattr(module, name, GuidedReLU())
        else:
            swap_relus(child)


def score(logits, targets):
    return logits.gather(1, targets[:, None]).sum()


def input_grad(model, x, targets):
    x = x.detach().clone().requires_grad_()
    score(model(x), targets).backward()
    return x.grad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True, choices=["alexnet", "squeezenet1_1"])
    ap.add_argument("--pth", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--double", action="store_true", help="compute in float64")
    args = ap.parse_args()
    torch.set_num_threads(2)

    state = torch.load(args.pth, map_location="cpu")
    head = "classifier.6.weight" if args.arch == "alexnet" else "classifier.1.weight"
    model = getattr(torchvision.models, args.arch)(weights=None, num_classes=state[head].shape[0])
    model.load_state_dict(state)
    model.eval()
    dtype = torch.float64 if args.double else torch.float32
    model.to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    with h5py.File(args.input, "r") as f:
        x = torch.from_numpy(np.asarray(f["x"], dtype=np.float32)).to(dtype)
        targets = torch.from_numpy(np.asarray(f["targets"], dtype=np.int64))

    out = {}
    with torch.no_grad():
        out["logits"] = model(x)
    out["vanilla"] = input_grad(model, x, targets).abs().amax(1)

    baseline = torch.tensor([-m / s for m, s in zip(MEAN, STD)], dtype=dtype)[None, :, None, None].expand_as(x)
    acc = torch.zeros_like(x)
    for k in range(1, args.steps + 1):
        acc += input_grad(model, baseline + (k / args.steps) * (x - baseline), targets)
    out["integrated"] = ((x - baseline) * acc / args.steps).abs().amax(1)

    if args.arch == "alexnet":
        trunk = model.features[:12]
        head_fn = lambda a: model.classifier(torch.flatten(model.avgpool(model.features[12:](a)), 1))
    else:
        trunk = model.features
        head_fn = lambda a: torch.flatten(model.classifier(a), 1)
    with torch.no_grad():
        a = trunk(x)
    a.requires_grad_()
    score(head_fn(a), targets).backward()
    alpha = a.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((alpha * a).sum(1, keepdim=True))
    out["gradcam"] = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]

    swap_relus(model)
    out["guided"] = input_grad(model, x, targets).abs().amax(1)

    with h5py.File(args.out, "w") as f:
        for k, v in out.items():
            f[k] = v.detach().numpy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
