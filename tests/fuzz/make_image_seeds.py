#!/usr/bin/python3
"""Writes the image fuzzer's seed corpus into a folder: tiny JPEG and PNG files of every
mode the decoder handles, made with PIL (Debian's python3-pil) and, for the PNG kinds PIL
does not write (16-bit colour, Adam7 interlacing, 2-bit grey, 4-bit palette), by hand.

    make_image_seeds.py OUT_DIR
"""
import io
import os
import struct
import sys
import warnings
import zlib

from PIL import Image


def pattern(mode, w, h):
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 37 + y * 11) % 256, (x * 5 + y * 53) % 256, (x * y * 7) % 256)
                 for y in range(h) for x in range(w)])
    return img.convert(mode)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(w, h, color_type, depth, rows, interlace=False, plte=None, trns=None):
    """rows: a function (x, y) -> tuple of samples; filter type 0 throughout."""
    def scanline(xs, y):
        bits = []
        for x in xs:
            bits.extend(rows(x, y))
        if depth >= 8:
            fmt = ">" + ("B" if depth == 8 else "H") * len(bits)
            return b"\x00" + struct.pack(fmt, *bits)
        out, acc, n = bytearray(), 0, 0
        for v in bits:
            acc = (acc << depth) | v
            n += depth
            if n == 8:
                out.append(acc)
                acc, n = 0, 0
        if n:
            out.append(acc << (8 - n))
        return b"\x00" + bytes(out)

    raw = b""
    if not interlace:
        for y in range(h):
            raw += scanline(range(w), y)
    else:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        for x0, y0, dx, dy in passes:
            xs = list(range(x0, w, dx))
            if not xs:
                continue
            for y in range(y0, h, dy):
                raw += scanline(xs, y)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 1 if interlace else 0)
    body = png_chunk(b"IHDR", ihdr)
    if plte is not None:
        body += png_chunk(b"PLTE", plte)
    if trns is not None:
        body += png_chunk(b"tRNS", trns)
    body += png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def exif_with_orientation(o):
    # A little-endian TIFF header with one IFD0 entry: Orientation (SHORT).
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, o, 0)
    return b"Exif\x00\x00" + tiff + struct.pack("<I", 0)


def main():
    warnings.simplefilter("ignore")  # PIL's note on palette transparency
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    files = {}

    def save(name, img, **kw):
        buf = io.BytesIO()
        img.save(buf, **kw)
        files[name] = buf.getvalue()

    # JPEG: grey, colour (4:2:0, 4:4:4), progressive, optimised Huffman tables, CMYK, EXIF rotation.
    save("grey.jpg", pattern("L", 9, 7), format="JPEG", quality=80)
    save("rgb420.jpg", pattern("RGB", 17, 11), format="JPEG", quality=75)
    save("rgb444.jpg", pattern("RGB", 8, 13), format="JPEG", quality=90, subsampling=0)
    save("progressive.jpg", pattern("RGB", 16, 16), format="JPEG", quality=70, progressive=True)
    save("cmyk.jpg", pattern("CMYK", 8, 8), format="JPEG", quality=85)
    save("exif6.jpg", pattern("RGB", 12, 5), format="JPEG", quality=60, exif=exif_with_orientation(6))
    save("optimized.jpg", pattern("RGB", 10, 10), format="JPEG", quality=50, optimize=True)
    # PNG through PIL: 1-bit, grey, grey+alpha, RGB, RGBA, palette (with tRNS), 16-bit grey.
    save("bilevel.png", pattern("1", 13, 5), format="PNG")
    save("grey.png", pattern("L", 6, 9), format="PNG")
    save("grey_alpha.png", pattern("LA", 7, 3), format="PNG")
    save("rgb.png", pattern("RGB", 5, 8), format="PNG")
    save("rgba.png", pattern("RGBA", 8, 4), format="PNG")
    pal = pattern("RGB", 9, 9).quantize(colors=6)
    pal.info["transparency"] = 2
    save("palette.png", pal, format="PNG", transparency=2)
    save("grey16.png", pattern("L", 4, 4).convert("I").point(lambda v: v * 300), format="PNG")
    # PNG by hand.
    files["rgb16.png"] = raw_png(5, 3, 2, 16, lambda x, y: (x * 9000, y * 20000, 65535 - x * 700))
    files["rgba16.png"] = raw_png(3, 4, 6, 16, lambda x, y: (x * 9000, y * 9000, 1234, 40000))
    files["interlaced.png"] = raw_png(11, 9, 2, 8, lambda x, y: (x * 20, y * 25, (x + y) * 10), interlace=True)
    files["grey2.png"] = raw_png(7, 3, 0, 2, lambda x, y: ((x + y) % 4,))
    files["palette4.png"] = raw_png(6, 2, 3, 4, lambda x, y: ((x * 3 + y) % 12,),
                                    plte=bytes(range(0, 30)), trns=b"\x00\x80")
    for name, data in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        # Every seed must decode with PIL, so the corpus starts from valid files.
        Image.open(io.BytesIO(data)).convert("RGB")
    print(f"make_image_seeds: {len(files)} files in {out}")


if __name__ == "__main__":
    main()
