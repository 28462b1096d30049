#!/usr/bin/python3
"""Reference trajectories of torch.optim.SGD (and StepLR) for tests/test_optim.cpp.

usage: sgd_reference.py IN.h5 OUT.h5

IN.h5 (written by the test, all datasets at the root):
  configs                 strings: the configuration names
  dtypes                  strings: dtype tags, e.g. "f32", "f64"
  num_params, num_steps   int64 [1]
  {dt}_p{j}               initial value of parameter j
  {dt}_g{s}_p{j}          gradient of parameter j at step s; absent = no gradient at that step
  {c}_groups              float64 [G, 5]: lr, momentum, dampening, weight_decay, nesterov
  {c}_group_of            int64 [num_params]: the group of each parameter
  {c}_steplr              float64 [2]: step_size, gamma (absent: no scheduler)

OUT.h5, for each configuration c and dtype dt, after step s (0-based):
  {c}_{dt}_s{s}_p{j}      parameter j, in its own dtype
  {c}_{dt}_s{s}_lr        float64 [G]: each group's lr used by the next step
  {c}_{dt}_buf{j}         momentum buffer of parameter j after the last step (absent: none)

The scheduler, when present, steps once after every optimiser step.
"""
import sys

import h5py
import numpy as np
import torch


def names(f, key):
    return [v.decode() if isinstance(v, bytes) else str(v) for v in f[key][()]]


def run(f, out, config, dt, num_params, num_steps):
    params = [torch.tensor(f[f"{dt}_p{j}"][()]) for j in range(num_params)]
    table = f[f"{config}_groups"][()]
    group_of = [int(v) for v in f[f"{config}_group_of"][()]]
    groups = []
    for g, row in enumerate(table):
        lr, momentum, dampening, weight_decay, nesterov = (float(v) for v in row)
        groups.append({
            "params": [p for j, p in enumerate(params) if group_of[j] == g],
            "lr": lr, "momentum": momentum, "dampening": dampening,
            "weight_decay": weight_decay, "nesterov": bool(nesterov),
        })
    opt = torch.optim.SGD(groups, lr=groups[0]["lr"])
    sched = None
    if f"{config}_steplr" in f:
        step_size, gamma = (float(v) for v in f[f"{config}_steplr"][()])
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=int(step_size), gamma=gamma)
    for s in range(num_steps):
        for j, p in enumerate(params):
            key = f"{dt}_g{s}_p{j}"
            p.grad = torch.tensor(f[key][()]) if key in f else None
        opt.step()
        if sched is not None:
            sched.step()
        for j, p in enumerate(params):
            out[f"{config}_{dt}_s{s}_p{j}"] = p.detach().numpy()
        out[f"{config}_{dt}_s{s}_lr"] = np.array([g["lr"] for g in opt.param_groups], dtype=np.float64)
    for j, p in enumerate(params):
        buf = opt.state[p].get("momentum_buffer") if p in opt.state else None
        if buf is not None:
            out[f"{config}_{dt}_buf{j}"] = buf.numpy()


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: sgd_reference.py IN.h5 OUT.h5")
    torch.set_num_threads(1)
    with h5py.File(sys.argv[1], "r") as f, h5py.File(sys.argv[2], "w") as out:
        num_params = int(f["num_params"][()].reshape(-1)[0])
        num_steps = int(f["num_steps"][()].reshape(-1)[0])
        for config in names(f, "configs"):
            for dt in names(f, "dtypes"):
                run(f, out, config, dt, num_params, num_steps)


if __name__ == "__main__":
    main()
