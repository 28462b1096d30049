#!/usr/bin/env python3
"""The PyTorch twin of alexnet_throughput: torchvision's AlexNet, the same modes, the
same timing rule (warm-up runs, then the median of timed runs); last line `images/s: X`.

    /usr/bin/python3 bench/pytorch_throughput.py --batch 64 --mode forward
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--mode", choices=["forward", "train", "saliency"], default="forward")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    torch.manual_seed(1)
    dev = torch.device(args.device)
    # The engine computes in exact FP32 on the GPU unless asked otherwise: compare at the
    # same precision (PyTorch lets cuDNN use TF32 by default).
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    net = torchvision.models.alexnet(weights=None).to(dev)
    x = torch.randn(args.batch, 3, 224, 224, device=dev)
    labels = torch.tensor([(i * 37) % 1000 for i in range(args.batch)], device=dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    net.train(args.mode == "train")
    if args.mode == "saliency":
        for p in net.parameters():
            p.requires_grad_(False)

    def once():
        if args.mode == "forward":
            with torch.no_grad():
                net(x)
        elif args.mode == "train":
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), labels).backward()
            opt.step()
        else:
            xin = x.detach().requires_grad_()
            net(xin).gather(1, labels[:, None]).sum().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        once()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"pytorch alexnet {args.mode} batch {args.batch} on {dev}: median {med:.4f} s per batch over "
          f"{args.iters} runs (min {min(times):.4f}, max {max(times):.4f}); threads {torch.get_num_threads()}")
    print(f"images/s: {args.batch / med:.2f}")


if __name__ == "__main__":
    main()
