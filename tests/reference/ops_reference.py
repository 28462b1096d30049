#!/usr/bin/env python3
"""PyTorch reference values for tests/test_ops_reference.cpp.

usage: ops_reference.py IN.h5 OUT.h5

IN (written by the C++ test) lists its cases in the string dataset `cases`. For each
case C it holds:
  C.op      one string: the op's name (as in engine/ops.h and torch.nn.functional)
  C.params  int64 parameters of the op (layout per op below)
  C.in0..   the op's tensor inputs (float32 or float64)
  C.gy      the upstream gradient, shaped like the op's output
  C.target  int64 class targets (cross_entropy only)
  C.scalar  a one-element tensor (mul_scalar only)
Ops without a gradient in the engine (abs_max) and guided_relu, whose backward is not
relu's derivative, are compared on their forward values only.
OUT receives C.y = op(inputs) and C.gin<i> = d(sum(y * gy))/d(in<i>) for every input
(only C.y when gy's shape, taken from the engine's output, is not y's). torch computes
them in float64 from the stored values, whatever their dtype, so the reference is exact
up to float64 rounding and the C++ tolerance measures the engine's rounding alone
(torch's own float32 softmax gradient, for one, is less accurate than the engine's).
The file is written beside OUT and renamed over it when complete.
"""
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F


FORWARD_ONLY = ("abs_max", "guided_relu")


def text(ds):
    v = ds[()]
    v = v[0] if isinstance(v, np.ndarray) else v
    return v.decode() if isinstance(v, bytes) else str(v)


def compute(op, p, xs, f, c):
    """op applied to the input tensors xs with integer parameters p."""
    if op == "conv2d":  # [sh, sw, ph, pw, has_bias]
        bias = xs[2] if p[4] else None
        return F.conv2d(xs[0], xs[1], bias, stride=(p[0], p[1]), padding=(p[2], p[3]))
    if op == "linear":  # [has_bias]
        return F.linear(xs[0], xs[1], xs[2] if p[0] else None)
    if op in ("relu", "guided_relu"):  # the same forward
        return F.relu(xs[0])
    if op == "abs_max":  # [dim, keepdim]
        return torch.amax(xs[0].abs(), dim=p[0], keepdim=bool(p[1]))
    if op == "max_pool2d":  # [kh, kw, sh, sw, ph, pw, ceil_mode]
        return F.max_pool2d(xs[0], (p[0], p[1]), (p[2], p[3]), (p[4], p[5]), ceil_mode=bool(p[6]))
    if op == "adaptive_avg_pool2d":  # [oh, ow]
        return F.adaptive_avg_pool2d(xs[0], (p[0], p[1]))
    if op == "cat":  # [dim]
        return torch.cat(xs, dim=p[0])
    if op in ("sum", "mean"):  # [over_all, dim, keepdim]
        fn = torch.sum if op == "sum" else torch.mean
        return fn(xs[0]) if p[0] else fn(xs[0], dim=p[1], keepdim=bool(p[2]))
    if op == "softmax":  # [dim]
        return F.softmax(xs[0], dim=p[0])
    if op == "log_softmax":  # [dim]
        return F.log_softmax(xs[0], dim=p[0])
    if op == "cross_entropy":
        target = torch.from_numpy(np.asarray(f[c + ".target"][()], dtype=np.int64))
        return F.cross_entropy(xs[0], target)
    if op == "add":
        return xs[0] + xs[1]
    if op == "sub":
        return xs[0] - xs[1]
    if op == "mul":
        return xs[0] * xs[1]
    if op == "mul_scalar":
        return xs[0] * float(np.asarray(f[c + ".scalar"][()]).reshape(-1)[0])
    raise SystemExit(f"ops_reference.py: case {c}: unknown op {op!r}")


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    tmp = dst + ".tmp"
    with h5py.File(src, "r") as f, h5py.File(tmp, "w") as out:
        for c in [s.decode() if isinstance(s, bytes) else s for s in f["cases"][()]]:
            op = text(f[c + ".op"])
            p = [int(v) for v in np.asarray(f[c + ".params"][()]).reshape(-1)]
            xs = []
            while f"{c}.in{len(xs)}" in f:
                x = torch.from_numpy(np.asarray(f[f"{c}.in{len(xs)}"][()]))
                xs.append(x.double().requires_grad_())
            y = compute(op, p, xs, f, c)
            gy = torch.from_numpy(np.asarray(f[c + ".gy"][()])).double()
            out.create_dataset(c + ".y", data=y.detach().numpy())
            if op in FORWARD_ONLY:
                continue
            if tuple(gy.shape) != tuple(y.shape):
                # The engine's output shape differs from torch's: the test reports it.
                print(f"ops_reference.py: case {c}: gy {tuple(gy.shape)} but y {tuple(y.shape)}",
                      file=sys.stderr)
                continue
            grads = torch.autograd.grad(y, xs, gy, allow_unused=True)
            for i, (x, g) in enumerate(zip(xs, grads)):
                g = torch.zeros_like(x) if g is None else g
                out.create_dataset(f"{c}.gin{i}", data=g.numpy())
    os.replace(tmp, dst)


if __name__ == "__main__":
    main()
