"""PASCAL VOC readers: annotations, image sets, and the classification / detection / segmentation data sets.

Layout (the devkit's)::

    ROOT/VOC2007/JPEGImages/<id>.jpg
                /Annotations/<id>.xml
                /ImageSets/Main/{train,val,trainval,test}.txt and <class>_<split>.txt
                /ImageSets/Segmentation/{train,val,trainval}.txt
                /SegmentationClass/<id>.png

``ROOT`` is the ``VOCdevkit`` folder; passing its parent also works. The same tree is readable by torchvision's
``VOCDetection`` / ``VOCSegmentation`` (root = parent of ``VOCdevkit``, ``download=False``); xchannel parses
the files itself for the difficult flags and for errors that name the file, line or box.

Conventions (those of the devkit):

* boxes are ``(xmin, ymin, xmax, ymax)`` integers, 1-based and pixel-inclusive, as written in the XML files
  (:func:`boxes_to_xyxy` gives 0-based continuous corners);
* classification labels per image and class: ``1`` = at least one non-difficult instance, ``0`` = only
  difficult instances, ``-1`` = no instance; the per-class files ``<cls>_<split>.txt`` hold the same numbers;
* segmentation masks are palette PNGs of class indices: 0 background, 1..20 the classes, 255 "void" (object
  boundaries and ambiguous regions, ignored by training and the mIU metric).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from xchannel.data.images import (DEFAULT_MAX_PIXELS, BadImageError, Skipped, ToTensor, is_grayscale, load_rgb)
from xchannel.errors import UserError

#: The 20 PASCAL VOC classes in the devkit's order (class index i+1 in segmentation masks).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
CLASS_TO_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}
#: Mask value of void pixels.
IGNORE_INDEX = 255


def voc_palette() -> np.ndarray:
    """The devkit's 256-entry colour map (256 x 3 uint8): bits of the index spread over R, G, B, high bit first."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


VOC_PALETTE = voc_palette()


def resolve_root(root: str | os.PathLike, year: str | int) -> Path:
    """The ``VOC<year>`` folder under ``root`` (a ``VOCdevkit`` folder or its parent)."""
    root = Path(root)
    for cand in (root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if cand.is_dir():
            return cand
    raise UserError(f"{root}: no VOC{year} folder found (looked for {root / f'VOC{year}'} and "
                    f"{root / 'VOCdevkit' / f'VOC{year}'})")


# --------------------------------------------------------------------------------------------------------------
# Annotations


#: How :func:`read_annotation` treats boxes that the devkit would take as written but a trainer should not:
#: ``strict`` refuses them (an error naming the file), ``clip`` clips them to the image, ``devkit`` keeps every
#: coordinate exactly as written (floats included) and notes the irregularity instead (evaluation).
BOX_POLICIES = ("strict", "clip", "devkit")


def read_annotation(xml_path: str | os.PathLike, box_policy: str = "strict") -> dict:
    """Parse one VOC annotation file.

    Returns ``{"filename", "size": (w, h, depth) or None, "segmented": bool, "objects": [{"name", "bbox": (xmin,
    ymin, xmax, ymax), "difficult": bool, "truncated": bool}], "irregular": [text, ...]}``. Missing
    ``<difficult>``, ``<truncated>``, ``<pose>`` and ``<depth>`` read as the devkit's defaults (0, 0, none, 3).
    Malformed XML (with line and column), a missing ``<name>`` or ``<bndbox>`` coordinate, or a non-number is
    always an error naming the file.

    ``box_policy`` (:data:`BOX_POLICIES`) decides about boxes and sizes the devkit does not check:

    * ``strict`` (training's default): coordinates rounded to integers; an unknown class, a missing or zero
      ``<size>``, or a box that is empty or reaches outside ``1..w x 1..h`` is an error that names the file and
      points at ``--clip-boxes``;
    * ``clip``: as strict, but a box reaching outside the image is clipped to it (an empty box stays an error);
    * ``devkit`` (evaluation): nothing is refused and nothing is changed. ``VOCreadxml``/``PASreadrecord`` read
      the coordinates as numbers and ``VOCevaldet.m`` scores every box of the class as written (pixel-inclusive
      widths ``x2 - x1 + 1``) and ignores objects of other classes; each irregularity (a box starting at 0 or
      reaching past ``<size>``, float coordinates, an unknown class, a missing ``<size>``) is listed in
      ``irregular`` for the caller's warning.
    """
    if box_policy not in BOX_POLICIES:
        raise ValueError(f"box_policy must be one of {BOX_POLICIES}, got {box_policy!r}")
    xml_path = Path(xml_path)
    try:
        tree = ET.parse(xml_path)
    except FileNotFoundError:
        raise UserError(f"{xml_path}: annotation file not found") from None
    except ET.ParseError as err:
        line, _ = err.position
        raise UserError(f"{xml_path}:{line}: malformed XML: {err}") from None  # err names line and column
    except OSError as err:
        raise UserError(f"{xml_path}: cannot read ({err.strerror})") from None
    root = tree.getroot()
    if root.tag != "annotation":
        raise UserError(f"{xml_path}: not a VOC annotation (root element <{root.tag}>, expected <annotation>)")
    devkit = box_policy == "devkit"
    hint = ("; clip such boxes to the image with --clip-boxes (config clip_boxes=true), or fix the annotation "
            "(boxes are 1-based and pixel-inclusive: 1 <= xmin <= xmax <= width)")
    irregular: list[str] = []

    def text(node: ET.Element, tag: str, default: str | None = None) -> str:
        child = node.find(tag)
        if child is None or child.text is None or not child.text.strip():
            if default is not None:
                return default
            raise UserError(f"{xml_path}: missing <{tag}> in <{node.tag}>")
        return child.text.strip()

    def number(node: ET.Element, tag: str, default: str | None = None) -> float:
        value = text(node, tag, default)
        try:
            return float(value)
        except ValueError:
            raise UserError(f"{xml_path}: <{tag}> is not a number: {value!r}") from None

    def integer(node: ET.Element, tag: str, default: str | None = None) -> int:
        return int(round(number(node, tag, default)))  # a few real VOC files write coordinates as "273.0"

    size = root.find("size")
    if size is None or size.find("width") is None or size.find("height") is None:
        if not devkit:
            raise UserError(f"{xml_path}: missing <size> (width and height)")
        dims = None
        irregular.append("no <size>")
    else:
        w, h, depth = integer(size, "width"), integer(size, "height"), integer(size, "depth", "3")
        if (w <= 0 or h <= 0) and not devkit:
            raise UserError(f"{xml_path}: invalid image size {w}x{h}")
        dims = (w, h, depth) if w > 0 and h > 0 else None
        if dims is None:
            irregular.append(f"image size {w}x{h}")
    objects = []
    for obj in root.iter("object"):
        name = text(obj, "name")
        if name not in CLASS_TO_INDEX:
            if not devkit:
                raise UserError(f"{xml_path}: unknown class {name!r} (the 20 VOC classes are "
                                f"{', '.join(VOC_CLASSES)})")
            irregular.append(f"unknown class {name!r} (not scored)")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise UserError(f"{xml_path}: object {name!r} has no <bndbox>")
        raw = tuple(number(bnd, k) for k in ("xmin", "ymin", "xmax", "ymax"))
        if devkit:
            box: tuple = tuple(int(v) if v == int(v) else v for v in raw)
            if any(v != int(v) for v in raw):
                irregular.append(f"float coordinates {raw} of {name!r}")
            if dims is not None and not (1 <= raw[0] <= raw[2] <= dims[0] and 1 <= raw[1] <= raw[3] <= dims[1]):
                irregular.append(f"box {box} of {name!r} starts at 0, is empty or reaches past the "
                                 f"{dims[0]}x{dims[1]} image (scored as written)")
        else:
            xmin, ymin, xmax, ymax = (int(round(v)) for v in raw)
            w, h = dims[0], dims[1]
            if box_policy == "clip":
                xmin, ymin, xmax, ymax = max(xmin, 1), max(ymin, 1), min(xmax, w), min(ymax, h)
            if not (1 <= xmin <= xmax <= w and 1 <= ymin <= ymax <= h):
                what = "is empty after clipping to" if box_policy == "clip" else "is empty or outside"
                raise UserError(f"{xml_path}: box {tuple(int(round(v)) for v in raw)} of {name!r} {what} the "
                                f"{w}x{h} image" + ("" if box_policy == "clip" else hint))
            box = (xmin, ymin, xmax, ymax)
        objects.append({
            "name": name,
            "bbox": box,
            "difficult": integer(obj, "difficult", "0") != 0,
            "truncated": integer(obj, "truncated", "0") != 0,
        })
    return {
        "filename": text(root, "filename", f"{xml_path.stem}.jpg"),
        "size": dims,
        "segmented": integer(root, "segmented", "0") != 0,
        "objects": objects,
        "irregular": irregular,
    }


def warn_irregular(annotations: dict[str, dict], folder: str | os.PathLike, shown: int = 5) -> None:
    """One warning (on stderr) that names the annotation files :func:`read_annotation` found irregular under the
    ``devkit`` policy and what it found, so that a score computed from them is never silent about them."""
    import sys

    bad = {i: a["irregular"] for i, a in annotations.items() if a.get("irregular")}
    if not bad:
        return
    items = list(bad.items())
    listed = "; ".join(f"{Path(folder) / f'{i}.xml'}: {', '.join(p[:4])}{' ...' if len(p) > 4 else ''}"
                       for i, p in items[:shown])
    more = f"; and {len(items) - shown} more file(s)" if len(items) > shown else ""
    print(f"warning: {len(items)} annotation file(s) hold boxes or fields the VOC devkit scores as written but a "
          f"strict reader refuses; they are scored as the devkit scores them: {listed}{more}", file=sys.stderr)


def image_labels(annotation: dict) -> np.ndarray:
    """The 20-vector of classification labels of an annotation: 1 / 0 (only difficult) / -1 (absent)."""
    labels = np.full(len(VOC_CLASSES), -1, dtype=np.int8)
    for obj in annotation["objects"]:
        k = CLASS_TO_INDEX[obj["name"]]
        if not obj["difficult"]:
            labels[k] = 1
        elif labels[k] == -1:
            labels[k] = 0
    return labels


def boxes_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Devkit boxes (1-based, pixel-inclusive) -> 0-based continuous corners: ``(xmin - 1, ymin - 1, xmax, ymax)``.

    A box covering pixel columns 1..w has width w in both conventions.
    """
    offset = torch.tensor([1, 1, 0, 0], dtype=boxes.dtype, device=boxes.device)
    return boxes - offset


# --------------------------------------------------------------------------------------------------------------
# Image sets


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read {what} ({err})") from None


def read_image_set(root: str | os.PathLike, year: str | int, split: str, task: str = "Main") -> list[str]:
    """Image ids of ``ImageSets/<task>/<split>.txt`` (task ``Main`` or ``Segmentation``), in file order."""
    path = resolve_root(root, year) / "ImageSets" / task / f"{split}.txt"
    ids = []
    for lineno, line in enumerate(_read_lines(path, f"image set {task}/{split}"), 1):
        fields = line.split()
        if len(fields) != 1:
            raise UserError(f"{path}:{lineno}: expected one image id per line, got {line!r}")
        ids.append(fields[0])
    return ids


def read_class_labels(root: str | os.PathLike, year: str | int, split: str) -> tuple[list[str], np.ndarray]:
    """The per-class files ``ImageSets/Main/<cls>_<split>.txt`` -> (ids, N x 20 int8 labels in {1, 0, -1}).

    Every class file must list the same ids in the same order (as the devkit's do).
    """
    base = resolve_root(root, year) / "ImageSets" / "Main"
    ids: list[str] | None = None
    columns = []
    for cls in VOC_CLASSES:
        path = base / f"{cls}_{split}.txt"
        cls_ids, labels = [], []
        for lineno, line in enumerate(_read_lines(path, f"class label file for {cls!r}"), 1):
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("1", "0", "-1"):
                raise UserError(f"{path}:{lineno}: expected '<image id> <1|0|-1>', got {line!r}")
            cls_ids.append(fields[0])
            labels.append(int(fields[1]))
        if ids is None:
            ids = cls_ids
        elif cls_ids != ids:
            raise UserError(f"{path}: lists different image ids than {base / f'{VOC_CLASSES[0]}_{split}.txt'}")
        columns.append(labels)
    return list(ids or []), np.array(columns, dtype=np.int8).T.reshape(len(ids or []), len(VOC_CLASSES))


def _check_files(paths: list[Path], what: str, folder: Path) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise UserError(f"{folder}: {len(missing)} {what} missing: {shown}{more}")


# --------------------------------------------------------------------------------------------------------------
# Data sets


class _VOCBase(Dataset):
    def __init__(self, root: str | os.PathLike, year: str | int, split: str, task: str,
                 max_pixels: int = DEFAULT_MAX_PIXELS, ids: list[str] | None = None):
        self.voc_root = resolve_root(root, year)
        self.year, self.split = str(year), split
        self.ids = read_image_set(root, year, split, task) if ids is None else list(ids)
        self.max_pixels = max_pixels
        self.images = [self.voc_root / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        _check_files(self.images, "image file(s)", self.voc_root / "JPEGImages")

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, index: int) -> Image.Image | Skipped:
        """The image's pixels as stored (an EXIF orientation tag is not applied, as the devkit's ``imread``
        does not apply it: VOC annotations and masks refer to the stored pixels)."""
        try:
            return load_rgb(self.images[index], self.max_pixels, upright=False)
        except BadImageError as err:
            return Skipped(index, err.path, err.reason)


class VOCClassification(_VOCBase):
    """Image + 20 labels in {1, 0, -1} (see the module docstring), built from the per-image annotations.

    Item: ``{"image", "labels" (int8 tensor of 20), "has_color", "index", "id", "path"}`` or a :class:`Skipped`
    record for a bad image (collate with :data:`~xchannel.data.images.collate_skip`).
    """

    def __init__(self, root: str | os.PathLike, year: str | int = 2007, split: str = "trainval",
                 transform: Callable[[Image.Image], Any] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 clip_boxes: bool = False):
        super().__init__(root, year, split, "Main", max_pixels)
        self.transform = transform if transform is not None else ToTensor()
        ann_dir = self.voc_root / "Annotations"
        policy = "clip" if clip_boxes else "strict"
        self.labels = np.stack([image_labels(read_annotation(ann_dir / f"{i}.xml", policy)) for i in self.ids]) \
            if self.ids else np.zeros((0, len(VOC_CLASSES)), dtype=np.int8)

    def __getitem__(self, index: int) -> dict | Skipped:
        img = self.load_image(index)
        if isinstance(img, Skipped):
            return img
        return {"image": self.transform(img), "labels": torch.from_numpy(self.labels[index].copy()),
                "has_color": not is_grayscale(img), "index": index, "id": self.ids[index],
                "path": str(self.images[index])}


class VOCDetection(_VOCBase):
    """Image + boxes + labels + difficult flags.

    Item: ``{"image", "boxes" (int64 N x 4, devkit convention), "labels" (int64 N, indices into VOC_CLASSES),
    "difficult" (bool N), "truncated" (bool N), "size" (w, h), "index", "id", "path"}``. ``transforms(image,
    target) -> (image, target)`` may change both (e.g. resize with the boxes); the default turns the image into
    a uint8 tensor. Collate with :data:`~xchannel.data.images.collate_skip_lists`.
    """

    def __init__(self, root: str | os.PathLike, year: str | int = 2007, split: str = "trainval",
                 transforms: Callable[[Image.Image, dict], tuple[Any, dict]] | None = None,
                 clip_boxes: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(root, year, split, "Main", max_pixels)
        self.transforms = transforms
        ann_dir = self.voc_root / "Annotations"
        policy = "clip" if clip_boxes else "strict"
        self.annotations = [read_annotation(ann_dir / f"{i}.xml", policy) for i in self.ids]

    def load_image(self, index: int) -> Image.Image | Skipped:
        """The stored pixels (as the devkit reads them), checked against the annotation's ``<size>``: boxes are
        only meaningful on the image they were drawn on, so a mismatch (typically an EXIF orientation tag that
        turned the photo in the annotation tool) is an error naming both files, never a silent misalignment."""
        img = super().load_image(index)
        if isinstance(img, Skipped):
            return img
        w, h = self.annotations[index]["size"][:2]
        if img.size != (w, h):
            path = self.images[index]
            orientation = _exif_orientation(path)
            why = ""
            if orientation not in (None, 1):
                why = (f"; its EXIF orientation tag ({orientation}) turns the stored pixels to "
                       f"{'%dx%d' % img.size[::-1] if orientation >= 5 else '%dx%d' % img.size}, so the boxes were "
                       f"probably drawn on the turned view: store the pixels upright (e.g. exiftran -ai) and remove "
                       f"the tag, or annotate the stored pixels")
            raise UserError(f"{path}: the stored image is {img.width}x{img.height} but its annotation "
                            f"{self.voc_root / 'Annotations' / f'{self.ids[index]}.xml'} says <size> {w}x{h}"
                            f"{why}; its boxes would not fit the pixels")
        return img

    def target(self, index: int) -> dict:
        objs = self.annotations[index]["objects"]
        return {
            "boxes": torch.tensor([o["bbox"] for o in objs], dtype=torch.int64).reshape(-1, 4),
            "labels": torch.tensor([CLASS_TO_INDEX[o["name"]] for o in objs], dtype=torch.int64),
            "difficult": torch.tensor([o["difficult"] for o in objs], dtype=torch.bool),
            "truncated": torch.tensor([o["truncated"] for o in objs], dtype=torch.bool),
            "size": self.annotations[index]["size"][:2],
        }

    def __getitem__(self, index: int) -> dict | Skipped:
        img = self.load_image(index)
        if isinstance(img, Skipped):
            return img
        target = self.target(index)
        if self.transforms is not None:
            image, target = self.transforms(img, target)
        else:
            image = ToTensor()(img)
        return {"image": image, **target, "index": index, "id": self.ids[index], "path": str(self.images[index])}


def _exif_orientation(path: str | os.PathLike) -> int | None:
    """The EXIF orientation tag (274) of an image file, or None (no tag, unreadable)."""
    try:
        with Image.open(path) as img:
            value = img.getexif().get(274)
    except Exception:  # noqa: BLE001 - only used to explain an error
        return None
    return int(value) if value is not None else None


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """A segmentation PNG -> H x W uint8 array of class indices (0..20, 255 void).

    The file must be a palette (``P``) or 8-bit gray (``L``) PNG whose values are the indices; an RGB rendering
    of the palette is refused (its colours are not indices).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: segmentation mask not found")
    try:
        with Image.open(path) as m:
            if m.mode not in ("P", "L"):
                raise UserError(f"{path}: segmentation mask must be a palette (P) or gray (L) PNG of class "
                                f"indices, got mode {m.mode}")
            mask = np.array(m, dtype=np.uint8)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoding failure is reported with the file name
        raise UserError(f"{path}: unreadable segmentation mask ({type(err).__name__}: {err})") from None
    bad = (mask > len(VOC_CLASSES)) & (mask != IGNORE_INDEX)
    if bad.any():
        raise UserError(f"{path}: mask values {sorted(set(np.unique(mask[bad]).tolist()))[:10]} are neither a class "
                        f"index (0..{len(VOC_CLASSES)}) nor {IGNORE_INDEX} (void)")
    return mask


class VOCSegmentation(_VOCBase):
    """Image + mask of class indices (``ImageSets/Segmentation/<split>.txt``, or the given ``ids``).

    Item: ``{"image", "mask" (int64 H x W, 255 void), "index", "id", "path"}``. ``transforms(image, mask) ->
    (image, mask)`` receives the PIL image and the mask as a PIL ``L`` image (use :class:`PairedCropMirror` or
    keep the default: both to tensors, unchanged geometry). A missing mask PNG is an error at construction,
    naming it; a mask that does not match its image's size is an error when read.
    """

    def __init__(self, root: str | os.PathLike, year: str | int = 2012, split: str = "train",
                 transforms: Callable[[Image.Image, Image.Image], tuple[Any, Any]] | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, ids: list[str] | None = None):
        super().__init__(root, year, split, "Segmentation", max_pixels, ids)
        self.masks = [self.voc_root / "SegmentationClass" / f"{i}.png" for i in self.ids]
        _check_files(self.masks, "segmentation mask PNG(s)", self.voc_root / "SegmentationClass")
        self.transforms = transforms

    def __getitem__(self, index: int) -> dict | Skipped:
        img = self.load_image(index)
        if isinstance(img, Skipped):
            return img
        mask = load_mask(self.masks[index])
        if mask.shape != (img.height, img.width):
            raise UserError(f"{self.masks[index]}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{self.images[index]} is {img.width}x{img.height}")
        mask_img = Image.fromarray(mask, "L")
        if self.transforms is not None:
            image, mask_t = self.transforms(img, mask_img)
        else:
            image, mask_t = image_mask_tensors(img, mask)
        return {"image": image, "mask": mask_t, "index": index, "id": self.ids[index],
                "path": str(self.images[index])}


def image_mask_tensors(img: Image.Image, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A segmentation item without transforms: the image as a uint8 tensor, the mask as int64 labels."""
    return ToTensor()(img), torch.from_numpy(np.asarray(mask, dtype=np.uint8).astype(np.int64))


class PairedScale:
    """Resize image (bilinear) and mask (nearest neighbour, so labels and void stay labels) by ``scale``, then apply
    ``then`` (e.g. :class:`PairedCropMirror`) or convert to tensors as the data sets do without transforms."""

    def __init__(self, scale: float, then: Callable[[Image.Image, Image.Image], tuple[Any, Any]] | None = None):
        if scale <= 0:
            raise ValueError(f"scale must be > 0 (got {scale})")
        self.scale, self.then = float(scale), then

    def __call__(self, img: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        size = (max(1, round(img.width * self.scale)), max(1, round(img.height * self.scale)))
        img = img.resize(size, Image.Resampling.BILINEAR)
        mask = mask.resize(size, Image.Resampling.NEAREST)
        if self.then is not None:
            return self.then(img, mask)
        return image_mask_tensors(img, np.asarray(mask))


class PairedCropMirror:
    """Segmentation transform applied to image and mask alike.

    Training (``train=True``): pad to at least ``size`` (image with black, mask with 255 = void), random
    ``size`` x ``size`` crop, horizontal mirror with probability 1/2. Evaluation: no geometric change. Returns
    (3 x H x W image tensor, H x W int64 mask).
    """

    def __init__(self, size: int = 224, train: bool = True, dtype: torch.dtype = torch.uint8):
        self.size, self.train, self.dtype = size, train, dtype

    def __call__(self, img: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        image = ToTensor(self.dtype)(img)
        m = torch.from_numpy(np.asarray(mask, dtype=np.uint8).astype(np.int64))
        if not self.train:
            return image, m
        _, h, w = image.shape
        ph, pw = max(0, self.size - h), max(0, self.size - w)
        if ph or pw:
            image = torch.nn.functional.pad(image, (0, pw, 0, ph), value=0)
            m = torch.nn.functional.pad(m, (0, pw, 0, ph), value=IGNORE_INDEX)
            h, w = h + ph, w + pw
        top = int(torch.randint(0, h - self.size + 1, ()).item())
        left = int(torch.randint(0, w - self.size + 1, ()).item())
        image = image[:, top:top + self.size, left:left + self.size]
        m = m[top:top + self.size, left:left + self.size]
        if bool(torch.rand(()) < 0.5):
            image, m = image.flip(-1), m.flip(-1)
        return image.contiguous(), m.contiguous()
