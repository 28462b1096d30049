#!/usr/bin/env python3
"""Reference values for the image tests, computed by PIL and torchvision.

    image_reference.py make-decode-cases --out DIR
        Writes PNG and JPEG files of many kinds into DIR (grey 1/2/4/8/16-bit, grey+alpha,
        RGB, RGBA, 16-bit, palette with and without tRNS, indices past the palette,
        Adam7-interlaced, JPEG grey/RGB/4:4:4/progressive/CMYK, every EXIF orientation)
        and DIR/expected.h5 with one float32 dataset [H,W,3] per file, named by the file:
        what PIL gives after convert('RGB') (after ImageOps.exif_transpose for JPEGs).
    image_reference.py eval --list L --resize R --crop C --out ref.h5 [--pixels]
        For the k-th path in L: 'tensor.k' = torchvision's evaluation transform
        (Resize(R), CenterCrop(C), ToTensor, Normalize(ImageNet)) of PIL's
        open(...).convert('RGB'); with --pixels also 'pixels.k' = the decoded RGB [H,W,3].
    image_reference.py resized-crop --list L --size S --out ref.h5
        Lines of L: "top left height width flip path". 'tensor.k' = F.resized_crop to SxS
        with PIL bilinear, then F.hflip when flip is 1, ToTensor, Normalize(ImageNet).
    image_reference.py check-npy --ours A.npy --shape 3,5,7 --numpy-out B.npy
        Checks that numpy.load reads A.npy as float32, C order, with that shape and
        values (i % 1000) * 0.25 - 7; writes B.npy with numpy.save (float32 [2,3,4] of
        i * 0.5 - 1) for the engine's reader. Exit status 1 on any mismatch.
"""
import argparse
import os
import struct
import sys
import warnings
import zlib

import h5py
import numpy as np
from PIL import Image, ImageOps

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# ---- a small PNG encoder, so that every colour type / bit depth / interlace can be made --

def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _pack_rows(samples, bit_depth):
    """samples: uint array [h, w*channels] -> list of packed rows (bytes)."""
    rows = []
    for r in samples:
        if bit_depth == 16:
            rows.append(r.astype(">u2").tobytes())
        elif bit_depth == 8:
            rows.append(r.astype(np.uint8).tobytes())
        else:
            per_byte = 8 // bit_depth
            padded = np.zeros(((len(r) + per_byte - 1) // per_byte) * per_byte, dtype=np.uint8)
            padded[: len(r)] = r
            padded = padded.reshape(-1, per_byte)
            packed = np.zeros(len(padded), dtype=np.uint8)
            for i in range(per_byte):
                packed |= (padded[:, i] << (8 - bit_depth * (i + 1))).astype(np.uint8)
            rows.append(packed.tobytes())
    return rows


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def write_png(path, pixels, color_type, bit_depth, interlace=False, palette=None, trns=None, filters=True):
    """pixels: uint array [h, w, channels] of raw samples (indices for palette images)."""
    h, w, c = pixels.shape
    raw = b""
    passes = ADAM7 if interlace else [(0, 0, 1, 1)]
    for n, (x0, y0, dx, dy) in enumerate(passes):
        sub = pixels[y0::dy, x0::dx]
        if sub.shape[0] == 0 or sub.shape[1] == 0:
            continue
        for i, row in enumerate(_pack_rows(sub.reshape(sub.shape[0], -1), bit_depth)):
            # Filter type 0 (none) or 1 (sub), alternating, so both paths of the decoder run.
            ftype = (i + n) % 2 if filters else 0
            if ftype == 1:
                bpp = max(1, c * bit_depth // 8)
                b = np.frombuffer(row, dtype=np.uint8).astype(np.int32)
                out = b.copy()
                out[bpp:] = (b[bpp:] - b[:-bpp]) % 256
                row = out.astype(np.uint8).tobytes()
            raw += bytes([ftype]) + row
    data = b"\x89PNG\r\n\x1a\n"
    data += _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 1 if interlace else 0))
    if palette is not None:
        data += _chunk(b"PLTE", bytes(np.asarray(palette, dtype=np.uint8).ravel()))
    if trns is not None:
        data += _chunk(b"tRNS", trns)
    comp = zlib.compress(raw, 9)
    half = len(comp) // 2  # two IDAT chunks
    data += _chunk(b"IDAT", comp[:half]) + _chunk(b"IDAT", comp[half:])
    data += _chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def _exif_orientation(value, big_endian=False):
    if big_endian:
        tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
        tiff += struct.pack(">HHIHH", 0x0112, 3, 1, value, 0) + struct.pack(">I", 0)
    else:
        # A first entry before Orientation, so that the parser must walk the IFD.
        tiff = b"II\x2a\x00" + struct.pack("<I", 8) + struct.pack("<H", 2)
        tiff += struct.pack("<HHII", 0x010F, 2, 4, 0x00414243)  # Make = "CBA"
        tiff += struct.pack("<HHIHH", 0x0112, 3, 1, value, 0) + struct.pack("<I", 0)
    return b"Exif\x00\x00" + tiff


def make_decode_cases(args):
    out = args.out
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(1234)
    h, w = 37, 53  # odd, non-square; 37 rows exercise every Adam7 pass

    def rnd(shape, hi):
        return rng.integers(0, hi, size=shape, endpoint=False)

    smooth = np.stack(np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h)), -1)
    photo = np.concatenate([smooth, (smooth[..., :1] * 0.5 + 60)], -1).astype(np.uint8)  # [h,w,3]
    photo = np.clip(photo.astype(np.int32) + rnd(photo.shape, 40) - 20, 0, 255).astype(np.uint8)

    files = []

    def png(name, pixels, ct, bd, **kw):
        write_png(os.path.join(out, name), pixels, ct, bd, **kw)
        files.append(name)

    for interlace in (False, True):
        s = "_i" if interlace else ""
        for bd in (1, 2, 4, 8):
            png(f"gray{bd}{s}.png", rnd((h, w, 1), 1 << bd), 0, bd, interlace=interlace)
        png(f"gray16{s}.png", rnd((h, w, 1), 600), 0, 16, interlace=interlace)  # PIL clips to 255
        png(f"gray_alpha8{s}.png", rnd((h, w, 2), 256), 4, 8, interlace=interlace)
        png(f"gray_alpha16{s}.png", rnd((h, w, 2), 65536), 4, 16, interlace=interlace)
        png(f"rgb8{s}.png", photo, 2, 8, interlace=interlace)
        png(f"rgb16{s}.png", rnd((h, w, 3), 65536), 2, 16, interlace=interlace)
        png(f"rgba8{s}.png", rnd((h, w, 4), 256), 6, 8, interlace=interlace)
        png(f"rgba16{s}.png", rnd((h, w, 4), 65536), 6, 16, interlace=interlace)
        for bd in (1, 2, 4, 8):
            n = 1 << bd
            pal = rnd((n, 3), 256)
            png(f"palette{bd}{s}.png", rnd((h, w, 1), n), 3, bd, palette=pal, interlace=interlace)
        pal = rnd((200, 3), 256)
        trns = bytes(rnd(150, 256).astype(np.uint8))
        png(f"palette_trns{s}.png", rnd((h, w, 1), 200), 3, 8, palette=pal, trns=trns, interlace=interlace)
    # Indices past the end of a short palette.
    png("palette_short.png", rnd((h, w, 1), 256), 3, 8, palette=rnd((10, 3), 256))
    png("gray8_trns.png", rnd((h, w, 1), 256), 0, 8, trns=struct.pack(">H", 7))
    png("rgb8_trns.png", photo, 2, 8, trns=struct.pack(">HHH", 1, 2, 3))
    png("rgb8_nofilter.png", photo, 2, 8, filters=False)
    # 1x1 and a single row/column.
    png("tiny.png", rnd((1, 1, 3), 256), 2, 8)
    png("row.png", rnd((1, 9, 3), 256), 2, 8, interlace=True)
    png("column.png", rnd((9, 1, 1), 256), 0, 8, interlace=True)

    # JPEGs, written by PIL (libjpeg).
    big = Image.fromarray(np.kron(photo, np.ones((3, 3, 1), dtype=np.uint8))[:101, :147])
    def jpeg(name, im, **kw):
        im.save(os.path.join(out, name), "JPEG", **kw)
        files.append(name)
    jpeg("rgb420.jpg", big, quality=90)
    jpeg("rgb444.jpg", big, quality=95, subsampling=0)
    jpeg("rgb422.jpg", big, quality=80, subsampling=1)
    jpeg("progressive.jpg", big, quality=85, progressive=True)
    jpeg("optimized.jpg", big, quality=75, optimize=True)
    jpeg("gray.jpg", big.convert("L"), quality=90)
    jpeg("cmyk.jpg", big.convert("CMYK"), quality=90)
    for o in range(1, 9):
        jpeg(f"exif{o}.jpg", big, quality=90, exif=_exif_orientation(o))
    jpeg("exif6_motorola.jpg", big, quality=90, exif=_exif_orientation(6, big_endian=True))
    jpeg("exif8_gray.jpg", big.convert("L"), quality=90, exif=_exif_orientation(8))

    with h5py.File(os.path.join(out, "expected.h5"), "w") as f:
        for name in files:
            im = Image.open(os.path.join(out, name))
            if name.endswith(".jpg"):
                im = ImageOps.exif_transpose(im)
            f[name] = np.asarray(im.convert("RGB"), dtype=np.float32)


def _eval_transform(resize, crop):
    import torchvision.transforms as T
    return T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _read_list(path):
    with open(path) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def run_eval(args):
    import torch
    torch.set_num_threads(2)
    tf = _eval_transform(args.resize, args.crop)
    with h5py.File(args.out, "w") as f:
        for k, path in enumerate(_read_list(args.list)):
            with Image.open(path) as im:
                rgb = im.convert("RGB")
            f[f"tensor.{k}"] = tf(rgb).numpy()
            if args.pixels:
                f[f"pixels.{k}"] = np.asarray(rgb, dtype=np.float32)


def run_resized_crop(args):
    import torch
    import torchvision.transforms as T
    import torchvision.transforms.functional as F
    torch.set_num_threads(2)
    finish = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    with h5py.File(args.out, "w") as f:
        for k, line in enumerate(_read_list(args.list)):
            top, left, height, width, flip, path = line.split(" ", 5)
            with Image.open(path) as im:
                rgb = im.convert("RGB")
            out = F.resized_crop(rgb, int(top), int(left), int(height), int(width), [args.size, args.size],
                                 T.InterpolationMode.BILINEAR)
            if flip == "1":
                out = F.hflip(out)
            f[f"tensor.{k}"] = finish(out).numpy()


def check_npy(args):
    a = np.load(args.ours)
    shape = tuple(int(s) for s in args.shape.split(","))
    ok = True
    if a.dtype != np.dtype("<f4"):
        print(f"check-npy: dtype {a.dtype}, expected <f4")
        ok = False
    if a.shape != shape:
        print(f"check-npy: shape {a.shape}, expected {shape}")
        ok = False
    if not a.flags["C_CONTIGUOUS"]:
        print("check-npy: not C order")
        ok = False
    if ok:
        expected = ((np.arange(a.size) % 1000) * 0.25 - 7).astype(np.float32).reshape(shape)
        if not np.array_equal(a, expected):
            print(f"check-npy: values differ, max |diff| {np.abs(a - expected).max()}")
            ok = False
    np.save(args.numpy_out, (np.arange(24) * 0.5 - 1).astype(np.float32).reshape(2, 3, 4))
    return 0 if ok else 1


def main():
    # PIL warns when converting palette images whose tRNS lists several alphas; expected.
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-decode-cases")
    m.add_argument("--out", required=True)
    e = sub.add_parser("eval")
    e.add_argument("--list", required=True)
    e.add_argument("--resize", type=int, default=256)
    e.add_argument("--crop", type=int, default=224)
    e.add_argument("--out", required=True)
    e.add_argument("--pixels", action="store_true")
    r = sub.add_parser("resized-crop")
    r.add_argument("--list", required=True)
    r.add_argument("--size", type=int, default=224)
    r.add_argument("--out", required=True)
    n = sub.add_parser("check-npy")
    n.add_argument("--ours", required=True)
    n.add_argument("--shape", required=True)
    n.add_argument("--numpy-out", required=True)
    args = ap.parse_args()
    if args.cmd == "make-decode-cases":
        make_decode_cases(args)
    elif args.cmd == "eval":
        run_eval(args)
    elif args.cmd == "resized-crop":
        run_resized_crop(args)
    else:
        return check_npy(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
