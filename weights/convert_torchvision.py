#!/usr/bin/env python3
"""Convert torchvision AlexNet or SqueezeNet 1.1 weights to the project's HDF5 layout.

    python3 weights/convert_torchvision.py --arch alexnet --pth alexnet.pth --out alexnet.h5
    python3 weights/convert_torchvision.py --arch alexnet --download --out alexnet.h5

The state_dict is checked by loading it into torchvision's own model (strict), then
every parameter is written as a float32 dataset named by its key, with the attributes
and class names described in weights/README.md. The output appears atomically: it is
written to a temporary file in the same folder and renamed at the end.
Needs torch, torchvision, h5py and numpy (on Debian: /usr/bin/python3 with python3-torch).
"""
import argparse
import os
import sys
import tempfile

FORMAT = "alexnet-engine-weights"
FORMAT_VERSION = 1
HEAD = {"alexnet": "classifier.6.weight", "squeezenet1_1": "classifier.1.weight"}


class ConvertError(Exception):
    pass


def weights_enum(arch):
    import torchvision

    if arch == "alexnet":
        return torchvision.models.AlexNet_Weights.IMAGENET1K_V1
    return torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1


def load_state(path):
    import torch

    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu")
    except Exception as e:  # torch raises many types for corrupt files
        raise ConvertError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e})")
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConvertError(f"{path}: does not hold a state_dict of tensors")
    # Checkpoints saved from DataParallel prefix every key with "module.".
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def convert(arch, state, out, class_names, source):
    import h5py
    import numpy as np
    import torchvision

    head = HEAD[arch]
    if head not in state:
        raise ConvertError(f"the state_dict has no '{head}': is it a torchvision {arch}?")
    num_classes = int(state[head].shape[0])
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    result = model.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append("missing keys: " + ", ".join(result.missing_keys))
    if result.unexpected_keys:
        problems.append("unexpected keys: " + ", ".join(result.unexpected_keys))
    expected = model.state_dict()
    for k, v in state.items():
        if k in expected and tuple(v.shape) != tuple(expected[k].shape):
            problems.append(f"{k}: shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    if problems:
        raise ConvertError(f"not a torchvision {arch} state_dict: " + "; ".join(problems))

    if class_names is not None and len(class_names) != num_classes:
        raise ConvertError(f"{len(class_names)} class names for {num_classes} classes")

    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise ConvertError(f"{out}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(out) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = np.int64(FORMAT_VERSION)
            f.attrs["architecture"] = arch
            f.attrs["num_classes"] = np.int64(num_classes)
            f.attrs["source"] = source
            for key, value in expected.items():
                f.create_dataset(key, data=state[key].detach().cpu().float().numpy())
            if class_names is not None:
                f.create_dataset("class_names", data=class_names, dtype=h5py.string_dtype("utf-8"))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return num_classes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", required=True, choices=sorted(HEAD))
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--pth", help="a torchvision state_dict saved with torch.save")
    src.add_argument("--download", action="store_true",
                     help="fetch torchvision's IMAGENET1K_V1 weights (needs internet access)")
    ap.add_argument("--out", required=True, help="the HDF5 file to write")
    ap.add_argument("--class-names", metavar="FILE",
                    help="one class name per line; default: ImageNet's names for 1000-class models")
    ap.add_argument("--source", help="provenance stored in the file (default: the input)")
    args = ap.parse_args(argv)

    try:
        enum = weights_enum(args.arch)
        if args.download:
            state = enum.get_state_dict(progress=True)
            source = args.source or f"torchvision {enum} ({enum.url})"
        else:
            state = load_state(args.pth)
            source = args.source or f"converted from {os.path.basename(args.pth)}"
        if args.class_names:
            with open(args.class_names, encoding="utf-8") as f:
                names = [line.rstrip("\n") for line in f if line.strip()]
        else:
            names = None
        head = HEAD[args.arch]
        if names is None and head in state and state[head].shape[0] == 1000:
            names = list(enum.meta["categories"])
        k = convert(args.arch, state, args.out, names, source)
    except ConvertError as e:
        print(f"convert_torchvision: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"convert_torchvision: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {args.arch}, {k} classes, {len(state)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
