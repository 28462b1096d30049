#!/usr/bin/env python3
"""The PyTorch twin of `finetune --arch alexnet --case 1 --train new`, for timing only:
torchvision's ImageFolder, DataLoader workers and evaluation transform (Resize(256),
CenterCrop(224), normalise), AlexNet with its last layer replaced by Linear(4096, K) and
everything else frozen, SGD with momentum 0.9 and weight decay 5e-4 at batch 32.

Three rows, as `finetune` reports them:
  features  - the frozen trunk (features, avgpool, flatten) over every train and test
              image, decoding included, under no_grad: seconds and images/s
  cached    - one training epoch of the classifier on the cached trunk outputs
              (shuffled, batch 32, dropout on): seconds per epoch (median of --epochs)
  full      - one training epoch through the whole network from the images, frozen
              trunk: seconds

    /usr/bin/python3 bench/pytorch_finetune.py --data ../shared/data/wikiart-7styles
Lines `features_s: X`, `cached_epoch_s: X`, `full_epoch_s: X` end the output.
"""
import argparse
import os
import statistics
import time

import torch
import torch.nn as nn
import torchvision
from torchvision import transforms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3, help="cached epochs timed (median)")
    ap.add_argument("--rows", default="features,cached,full")
    args = ap.parse_args()
    rows = set(args.rows.split(","))

    torch.manual_seed(0)
    tf = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    train = torchvision.datasets.ImageFolder(os.path.join(args.data, "train"), tf)
    test = torchvision.datasets.ImageFolder(os.path.join(args.data, "test"), tf)
    K = len(train.classes)
    net = torchvision.models.alexnet(weights=None)
    net.classifier[6] = nn.Linear(4096, K)
    for p in net.parameters():
        p.requires_grad_(False)
    for p in net.classifier[6].parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(net.classifier[6].parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    trunk = nn.Sequential(net.features, net.avgpool, nn.Flatten(1))

    def loader(ds, shuffle):
        return torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=shuffle,
                                           num_workers=args.workers)

    print(f"threads {torch.get_num_threads()}, {len(train)} train + {len(test)} test images, {K} classes")
    if "features" in rows or "cached" in rows:
        net.eval()
        t0 = time.perf_counter()
        feats, labels = [], []
        with torch.no_grad():
            for ds in (train, test):
                for x, y in loader(ds, False):
                    feats.append(trunk(x))
                    labels.append(y)
        features_s = time.perf_counter() - t0
        n = sum(f.shape[0] for f in feats)
        print(f"features of {n} images in {features_s:.2f} s ({n / features_s:.1f} images/s)")
        ftrain = torch.cat(feats)[: len(train)]
        ltrain = torch.cat(labels)[: len(train)]
    if "cached" in rows:
        net.classifier.train()
        times = []
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            perm = torch.randperm(len(ftrain))
            for i in range(0, len(perm), args.batch):
                idx = perm[i:i + args.batch]
                opt.zero_grad(set_to_none=True)
                loss_fn(net.classifier(ftrain[idx]), ltrain[idx]).backward()
                opt.step()
            times.append(time.perf_counter() - t0)
        print(f"cached epochs: {', '.join(f'{t:.2f}' for t in times)} s")
    if "full" in rows:
        net.train()
        t0 = time.perf_counter()
        for x, y in loader(train, True):
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()
        full_s = time.perf_counter() - t0
        print(f"full-path epoch over {len(train)} images in {full_s:.2f} s")
    if "features" in rows:
        print(f"features_s: {features_s:.3f}")
    if "cached" in rows:
        print(f"cached_epoch_s: {statistics.median(times):.3f}")
    if "full" in rows:
        print(f"full_epoch_s: {full_s:.3f}")


if __name__ == "__main__":
    main()
