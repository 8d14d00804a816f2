"""Builders of odd and bad input files, shared by the data, reliability and property tests.

Every file is generated here (nothing is downloaded), deterministically and small.

Two kinds of files a user's data folder may hold:

* *unusable* files, which every long job must skip, count and name: a zero-byte file, a truncated JPEG, a text
  file named ``.jpg``, and a PNG whose header claims 50000 x 50000 pixels (a decompression bomb: 2.5 Gpx, 7.5 GB
  of RGB if it were decoded);
* *odd but valid* files, which must decode to an upright 8-bit RGB image: a CMYK JPEG, a 16-bit PNG, a palette
  PNG with a transparent entry, a 1 x 1 image, an image smaller than the training crop, a grayscale JPEG and an
  EXIF-rotated photo.

:func:`dirty_and_clean_folders` writes two ImageFolder trees holding the same usable images, one of them with
the unusable files added, so a test can check that the results on the good images do not depend on the bad ones.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Side claimed by the decompression-bomb PNG's header.
BOMB_SIDE = 50_000
#: Side of the image "smaller than the crop" (every crop used in the tests is larger).
SMALL_SIDE = 12
#: Orientation tag 6: "rotate 90 degrees clockwise to display".
EXIF_ROTATE_CW = 6
EXIF_ORIENTATION_TAG = 0x0112


def photo(w: int = 40, h: int = 30, seed: int = 0) -> Image.Image:
    """A small colourful RGB image with smooth structure (JPEG-friendly): red and green ramps over a blue level."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    a = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), rng.uniform(50, 200))], -1)
    return Image.fromarray(a.astype(np.uint8), "RGB")


def bomb_png(path: Path, width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> Path:
    """A valid 8 x 8 PNG whose IHDR is patched to claim ``width`` x ``height`` (CRC recomputed, so the header
    is well-formed and only the pixel count betrays it)."""
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def truncated_jpeg(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    """The first half of a valid JPEG: the header parses, the entropy-coded data stops mid-scan."""
    tmp = path.with_name(path.name + ".full.jpg")
    photo(w, h, seed).save(tmp, quality=95)
    data = tmp.read_bytes()
    tmp.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def exif_rotated_jpeg(path: Path) -> Path:
    """Stored 32 wide x 16 tall, left half red, right half blue, EXIF orientation 6: upright it is 16 wide x 32
    tall with red on top."""
    a = np.zeros((16, 32, 3), np.uint8)
    a[:, :16] = (255, 0, 0)
    a[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = EXIF_ROTATE_CW
    Image.fromarray(a).save(path, quality=95, exif=exif)
    return path


def cmyk_jpeg(path: Path, size: int = 24) -> Path:
    """A CMYK JPEG: cyan = 0, magenta = yellow = 255, black = 0 on the left (red), a blue band on the right."""
    img = Image.new("CMYK", (size, size), (0, 255, 255, 0))
    img.paste((255, 255, 0, 0), (size // 2, 0, size, size))
    img.save(path, quality=95)
    return path


def png16(path: Path, w: int = 24, h: int = 20) -> Path:
    """A 16-bit grayscale PNG (mode ``I;16``) spanning the full 0..65535 range."""
    a = (np.linspace(0, 65535, w * h).reshape(h, w)).astype(np.uint16)
    Image.fromarray(a).save(path)
    return path


def palette_png_with_transparency(path: Path, w: int = 20, h: int = 16) -> Path:
    """A palette PNG: entry 0 (red) is transparent and fills the left half, entry 1 (green) the right half."""
    p = Image.new("P", (w, h), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.paste(1, (w // 2, 0, w, h))
    p.save(path, transparency=0)
    return path


def one_pixel_png(path: Path) -> Path:
    Image.new("RGB", (1, 1), (200, 10, 10)).save(path)
    return path


def small_jpeg(path: Path, side: int = SMALL_SIDE) -> Path:
    """An image smaller than any crop the tests use (upscaled by the transforms, never padded or refused)."""
    photo(side, side - 2, seed=7).save(path, quality=95)
    return path


def gray_jpeg(path: Path, side: int = 24) -> Path:
    """A grayscale (mode ``L``) JPEG: no colour target for colorization, a normal image for probes."""
    Image.fromarray((np.arange(side * side, dtype=np.uint32).reshape(side, side) * 7 % 256).astype(np.uint8),
                    "L").save(path)
    return path


def write_unusable(folder: Path) -> dict[str, Path]:
    """The unusable files, in ``folder``: {kind: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"zero_bytes": folder / "zero.jpg", "text_named_jpg": folder / "notes.jpg"}
    out["zero_bytes"].write_bytes(b"")
    out["text_named_jpg"].write_text("this is a text file, not a JPEG\n")
    out["truncated_jpeg"] = truncated_jpeg(folder / "truncated.jpg")
    out["bomb_png"] = bomb_png(folder / "bomb.png")
    return out


def write_odd_valid(folder: Path) -> dict[str, Path]:
    """The odd but valid files, in ``folder``: {kind: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "cmyk_jpeg": cmyk_jpeg(folder / "cmyk.jpg"),
        "png16": png16(folder / "gray16.png"),
        "palette_transparency": palette_png_with_transparency(folder / "palette.png"),
        "one_pixel": one_pixel_png(folder / "one.png"),
        "smaller_than_crop": small_jpeg(folder / "small.jpg"),
        "gray_jpeg": gray_jpeg(folder / "gray.jpg"),
        "exif_rotated": exif_rotated_jpeg(folder / "rotated.jpg"),
    }


#: Phrases of :class:`xchannel.data.images.BadImageError` reasons, per unusable kind.
UNUSABLE_REASONS = {
    "zero_bytes": "empty file",
    "text_named_jpg": "not a recognised image",
    "truncated_jpeg": "truncated",
    "bomb_png": "too large",
}


@dataclass(frozen=True)
class DirtyAndClean:
    """Two ImageFolder trees with the same usable images; ``dirty`` also holds the unusable files (``bad``)."""

    clean: Path
    dirty: Path
    bad: dict[str, Path]  # kind -> path inside ``dirty``
    odd: dict[str, Path]  # kind -> path inside ``clean`` (the same relative path exists in ``dirty``)

    @property
    def bad_paths(self) -> list[str]:
        return sorted(str(p) for p in self.bad.values())


def dirty_and_clean_folders(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 4,
                            size: tuple[int, int] = (40, 32), seed: int = 0, split: str = "") -> DirtyAndClean:
    """``root/clean/<split>`` and ``root/dirty/<split>``: ``per_class`` photos per class plus the odd-but-valid
    files (in the first class); ``dirty`` adds the unusable files, split over the classes so each class meets
    some. Call it once per split (``"train"``, ``"val"``) to build the DIR/train + DIR/val trees of a probe."""
    clean = root / "clean" / split
    for k, cls in enumerate(classes):
        (clean / cls).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            photo(size[0] + 4 * j, size[1], seed=seed + 10 * k + j).save(clean / cls / f"{cls}{j}.jpg", quality=92)
    odd = write_odd_valid(clean / classes[0])
    dirty = root / "dirty" / split
    shutil.copytree(clean, dirty)
    unusable = write_unusable(dirty / classes[-1])
    if len(classes) > 1:  # move half of them into the first class
        for kind in ("zero_bytes", "bomb_png"):
            dst = dirty / classes[0] / unusable[kind].name
            unusable[kind].rename(dst)
            unusable[kind] = dst
    return DirtyAndClean(clean=clean, dirty=dirty, bad=unusable, odd=odd)


# --------------------------------------------------------------------------------------------------------------
# PASCAL VOC trees


def _voc_xml(objects: list[tuple[str, tuple[int, int, int, int]]], w: int, h: int) -> str:
    body = "".join(
        f"<object>\n<name>{name}</name>\n<truncated>0</truncated>\n<difficult>0</difficult>\n<bndbox>"
        + "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
        + "</bndbox>\n</object>\n" for name, box in objects)
    return (f"<annotation>\n<folder>VOC2007</folder>\n<filename>x.jpg</filename>\n"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n{body}</annotation>\n")


def voc_tree(root: Path, w: int = 50, h: int = 40) -> Path:
    """A small valid VOC2007 tree under ``root/VOCdevkit``: 4 images with a dog and/or a cat, ImageSets/Main
    (trainval, test) and ImageSets/Segmentation (train, val) with their palette masks. Returns the VOC2007
    folder."""
    from xchannel.data.voc import VOC_PALETTE

    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    objects = {"000001": [("dog", (1, 1, 20, 15))], "000002": [("cat", (10, 10, 50, 40))],
               "000003": [("dog", (5, 5, 30, 30)), ("cat", (31, 2, 49, 39))], "000004": [("cat", (2, 3, 25, 20))]}
    for i, (image_id, objs) in enumerate(objects.items()):
        photo(w, h, seed=i).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=92)
        (voc / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(objs, w, h))
        mask = Image.fromarray(np.zeros((h, w), np.uint8), "P")
        mask.putpalette(VOC_PALETTE.ravel().tolist())
        mask.save(voc / "SegmentationClass" / f"{image_id}.png")
    (voc / "ImageSets/Main/trainval.txt").write_text("000001\n000002\n")
    (voc / "ImageSets/Main/test.txt").write_text("000003\n000004\n")
    (voc / "ImageSets/Segmentation/train.txt").write_text("000001\n000002\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("000003\n000004\n")
    return voc


#: How :func:`break_voc` damages a tree, and the phrase the resulting error must contain.
VOC_DAMAGE = {
    "malformed_xml": r"000002\.xml:4: malformed XML: mismatched tag: line 4",
    "box_outside_image": r"000002\.xml: box \(10, 10, 60, 40\) of 'cat' is empty or outside the 50x40 image",
    "unknown_class": r"000002\.xml: unknown class 'unicorn'",
    "missing_mask": r"segmentation mask PNG\(s\) missing: \S*SegmentationClass/000002\.png",
}


def break_voc(voc: Path, damage: str) -> Path:
    """Damage image 000002 of a :func:`voc_tree` (a key of :data:`VOC_DAMAGE`); returns the damaged file."""
    xml = voc / "Annotations" / "000002.xml"
    if damage == "malformed_xml":  # <object> never closed: expat stops at line 4
        xml.write_text("<annotation>\n<size><width>50</width>\n<height>40</height></size>\n<object></annotation>\n")
    elif damage == "box_outside_image":  # xmax 60 > width 50
        xml.write_text(_voc_xml([("cat", (10, 10, 60, 40))], 50, 40))
    elif damage == "unknown_class":
        xml.write_text(_voc_xml([("unicorn", (10, 10, 50, 40))], 50, 40))
    elif damage == "missing_mask":
        (voc / "SegmentationClass" / "000002.png").unlink()
        return voc / "SegmentationClass" / "000002.png"
    else:
        raise ValueError(f"unknown damage {damage!r}; expected one of {', '.join(VOC_DAMAGE)}")
    return xml


__all__ = ["BOMB_SIDE", "DirtyAndClean", "SMALL_SIDE", "UNUSABLE_REASONS", "VOC_DAMAGE", "bomb_png", "break_voc",
           "cmyk_jpeg", "dirty_and_clean_folders", "exif_rotated_jpeg", "gray_jpeg", "one_pixel_png",
           "palette_png_with_transparency", "photo", "png16", "small_jpeg", "truncated_jpeg", "voc_tree",
           "write_odd_valid", "write_unusable"]
