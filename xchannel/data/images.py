"""Robust image decoding, image data sets, and the transforms of pretext training and probing.

Decoding (:func:`load_rgb`)
---------------------------
Every image enters xchannel through :func:`load_rgb`, which returns an 8-bit RGB ``PIL.Image``:

* the header is read first and an image claiming more than ``max_pixels`` pixels is refused *before* any pixel is
  decoded (a 50000 x 50000 PNG of a few hundred bytes must not exhaust memory);
* EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone photo stored sideways comes out upright;
* CMYK JPEGs are converted by Pillow's CMYK -> RGB path; palette images with transparency, LA and RGBA images
  are composited on white;
* 16-bit grayscale (``I;16*``) and 32-bit integer (``I``, taken to hold 16-bit data) images are *scaled* to 8 bit,
  ``round(v * 255 / 65535)``; Pillow's own ``convert("L")`` clips them at 255, which turns most of a 16-bit image
  white;
* anything unreadable (missing, empty, not an image, truncated, too large) raises :class:`BadImageError`, a
  :class:`~xchannel.errors.UserError` naming the file and the problem.

:func:`check_image` answers "would :func:`load_rgb` decode this file?" through the same code, decoding JPEGs at
1/8 scale: :mod:`xchannel.data.screen` uses it to drop unusable files before a run draws its data order.

Colour (:func:`is_grayscale`)
-----------------------------
ImageNet holds a few percent of grayscale photos. They carry no colour target, so colorization training excludes
them, while probes keep them. A sample is flagged ``has_color = not is_grayscale(image)``. The test is the gray
mask of the authors' release (:func:`xchannel.color.has_color`): an image has colour when some pixel has
``|a|`` or ``|b|`` above 5 (CIE Lab), computed here on a box-filtered thumbnail so that JPEG chroma noise of a
single pixel does not count as colour.

Skipping bad images in long runs
--------------------------------
A data set never raises for a bad image: ``__getitem__`` returns a :class:`Skipped` record (index, path,
reason). :func:`collate_skip` (or :class:`SkipCollate` around any collate function) drops these records from the
batch and lists them under ``batch["skipped"]``; this works unchanged in DataLoader worker processes because the
record travels with the batch. The training loop feeds each batch to a :class:`SkipCounter`, which logs one
warning per bad file and produces the run's summary ``{"skipped": n, "skipped_files": [...]}``::

    loader = DataLoader(ds, batch_size=64, num_workers=2, collate_fn=collate_skip)
    counter = SkipCounter()
    for batch in loader:
        if counter.update(batch) == 0:
            continue  # every image of this batch was bad
        ...
    summary = counter.summary()

Transforms
----------
Items are ``{"image", "label", "has_color", "index", "path"}`` dicts; ``image`` is what the transform returns.
:class:`RandomCropMirror` (colorization training: random crop + horizontal mirror, shorter side upscaled to the
crop when the image is smaller) and :class:`ResizeCenterCrop` (probes and evaluation) return 3 x H x W RGB tensors,
uint8 by default (4x less to move between processes) or float in [0, 1]. Lab conversion happens later, on the
training device (:mod:`xchannel.color`).
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as TF

from xchannel.errors import UserError

log = logging.getLogger("xchannel.data")

#: Largest image (in pixels) that :func:`load_rgb` decodes by default: 2^26 = 67 Mpx, e.g. 8192 x 8192. The
#: largest ImageNet and PASCAL images are far below (a few Mpx). Pillow itself refuses twice its own limit
#: (``Image.MAX_IMAGE_PIXELS``, 89 Mpx) at ``open``; :func:`load_rgb` reports that case the same way.
DEFAULT_MAX_PIXELS = 1 << 26

#: ``|a|`` or ``|b|`` above this (CIE Lab) somewhere in the image means it has colour (the released gray mask).
GRAY_AB_THRESHOLD = 5.0

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class BadImageError(UserError):
    """An image file that cannot be used: missing, empty, not an image, truncated, or too large."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across DataLoader workers (the default would pass only the message)
        return (type(self), (self.path, self.reason))


# --------------------------------------------------------------------------------------------------------------
# Decoding


def load_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, *, upright: bool = True) -> Image.Image:
    """Decode ``path`` to an upright 8-bit RGB image (see the module docstring for every case handled).

    ``upright=False`` keeps the pixels as stored, ignoring an EXIF orientation tag, as MATLAB's ``imread`` in the
    VOC devkit reads them (VOC annotations refer to the stored pixels). Raises :class:`BadImageError` naming the
    file and the problem; never returns a partially decoded image.
    """
    return _decode(path, max_pixels, reduced=False, upright=upright)


def check_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """``None`` when :func:`load_rgb` decodes ``path``, else the reason it refuses it (the same text).

    The file goes through the very code path of :func:`load_rgb` (file checks, header size limit, decode,
    orientation, mode conversion), except that a JPEG is decoded at 1/8 scale (Pillow's ``draft``: libjpeg's
    DCT scaling). The scaled decode reads and entropy-decodes the whole scan just as the full one does, so a
    truncated or broken stream fails the same way; only the inverse DCT and the colour conversion, most of
    a full decode's time, shrink 64-fold. Other formats are decoded in full (a check that reads less, such as
    PNG's ``verify()``, would pass files whose compressed data is corrupt).
    """
    try:
        _decode(path, max_pixels, reduced=True)
    except BadImageError as err:
        return err.reason
    return None


def _decode(path: str | os.PathLike, max_pixels: int, reduced: bool, upright: bool = True) -> Image.Image:
    """:func:`load_rgb`; ``reduced``: decode a JPEG at its smallest DCT scale (see :func:`check_image`)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadImageError(path, "no such file") from None
    except OSError as err:
        raise BadImageError(path, f"cannot read ({err.strerror})") from None
    if not path.is_file():
        raise BadImageError(path, "not a regular file")
    if size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is the authoritative one; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w <= 0 or h <= 0:
                    raise BadImageError(path, f"invalid image size {w}x{h}")
                if w * h > max_pixels:
                    raise BadImageError(path, f"image too large: the header claims {w}x{h} = {w * h} pixels, "
                                              f"more than the limit of {max_pixels} (possible decompression bomb)")
                if reduced and img.format == "JPEG":
                    img.draft(img.mode, (1, 1))  # the smallest scale libjpeg offers: 1/8 (1/4, 1/2 when tiny)
                img.load()  # decode now, inside the error handling (Image.open is lazy)
                return _to_rgb(_upright(img) if upright else img)
    except BadImageError:
        raise
    except Image.DecompressionBombError as err:
        raise BadImageError(path, f"image too large, refused before decoding (possible decompression bomb): "
                                  f"{err}") from None
    except UnidentifiedImageError:
        raise BadImageError(path, "not a recognised image format (unreadable or not an image)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        # Pillow reports truncated or corrupt data as OSError ("image file is truncated", "broken data stream"),
        # and some malformed headers as SyntaxError/ValueError.
        raise BadImageError(path, f"corrupt or truncated image data ({type(err).__name__}: {err})") from None


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError, struct.error):
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (transparency composited on white, 16-bit scaled, not clipped)."""
    mode = img.mode
    if mode == "RGB":
        return img.copy() if img.readonly else img
    if mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(img).astype(np.float64)
        a = np.clip(a, 0, 65535) * (255.0 / 65535.0)
        return Image.fromarray(np.rint(a).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        a = np.nan_to_num(a, nan=0.0)
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0  # [0, 1] floats, else already 0..255
        return Image.fromarray(np.rint(np.clip(a * scale, 0, 255)).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX


def is_grayscale(img: Image.Image, threshold: float = GRAY_AB_THRESHOLD, thumb: int = 96) -> bool:
    """True when the image carries no colour.

    Single-channel modes (L, LA, I, I;16, 1, F) are gray by construction. Otherwise the image is box-filtered to at
    most ``thumb`` pixels on its longer side (averaging away pixel-level JPEG chroma noise) and converted to CIE Lab
    with :func:`xchannel.color.rgb_to_lab`; it is gray when no pixel has ``|a|`` or ``|b|`` above ``threshold``,
    the same rule as :func:`xchannel.color.has_color` uses on the training device. Note ``a = b = 0`` exactly
    when ``R = G = B`` (D65 is the sRGB white point).
    """
    from xchannel.color import rgb_to_lab

    if img.mode in _GRAY_MODES:
        return True
    if img.mode != "RGB":
        img = _to_rgb(img)
    w, h = img.size
    factor = max(1, -(-max(w, h) // thumb))
    if factor > 1:
        img = img.reduce(factor)  # box filter: the mean of factor x factor blocks
    a = np.asarray(img, dtype=np.uint8)
    if np.array_equal(a.max(axis=2), a.min(axis=2)):
        return True  # R == G == B everywhere
    rgb = torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    ab = rgb_to_lab(rgb)[:, 1:]
    return not bool((ab.abs() > threshold).any())


# --------------------------------------------------------------------------------------------------------------
# Skipping bad items


@dataclass(frozen=True)
class Skipped:
    """What a data set returns instead of a sample whose image is bad."""

    index: int
    path: str
    reason: str


class SkipCollate:
    """Collate function that drops :class:`Skipped` records and lists them under ``batch["skipped"]``.

    ``inner`` collates the good samples (``torch.utils.data.default_collate`` by default; :func:`list_collate`
    for variable-size targets). ``batch["skipped"]`` is a list of ``(path, reason)``. When every sample of the
    batch is bad the batch is just ``{"skipped": [...]}``. Picklable, so it works with DataLoader workers.
    """

    def __init__(self, inner: Callable[[list], Any] = default_collate):
        self.inner = inner

    def __call__(self, samples: Sequence[Any]) -> dict:
        good = [s for s in samples if not isinstance(s, Skipped)]
        bad = [(s.path, s.reason) for s in samples if isinstance(s, Skipped)]
        batch = dict(self.inner(good)) if good else {}
        batch["skipped"] = bad
        return batch


def list_collate(samples: list[dict]) -> dict:
    """Collate dict samples into a dict of lists (for images of different sizes, boxes, masks)."""
    return {key: [s[key] for s in samples] for key in samples[0]}


#: The collate function for xchannel's image data sets (stacks images, drops and lists bad ones).
collate_skip = SkipCollate()
#: The same, keeping every field as a list (detection / segmentation samples of different sizes).
collate_skip_lists = SkipCollate(list_collate)


class SkipCounter:
    """Aggregates the bad images of a run (main process); logs a warning once per bad file.

    ``skipped`` counts every time an item was skipped (a bad file read in 3 epochs counts 3), ``skipped_files``
    lists each bad file once, sorted; ``reasons`` maps it to the problem.
    """

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or log
        self.skipped = 0
        self.reasons: dict[str, str] = {}

    def add(self, path: str, reason: str) -> None:
        self.skipped += 1
        if path not in self.reasons:
            self.reasons[path] = reason
            self.logger.warning("skipped bad image %s: %s", path, reason)

    def update(self, batch: dict) -> int:
        """Record the batch's skipped items; return the number of good samples in the batch."""
        for path, reason in batch.get("skipped", ()):
            self.add(path, reason)
        return batch_size(batch)

    def filter(self, samples: Iterable[Any]) -> Iterable[Any]:
        """Iterate over samples outside a DataLoader, counting and dropping :class:`Skipped` ones."""
        for s in samples:
            if isinstance(s, Skipped):
                self.add(s.path, s.reason)
            else:
                yield s

    def summary(self) -> dict:
        return {"skipped": self.skipped, "skipped_files": sorted(self.reasons),
                "reasons": dict(sorted(self.reasons.items()))}


def batch_size(batch: dict) -> int:
    """Number of good samples in a batch made by :class:`SkipCollate` (0 when all were skipped)."""
    for key, value in batch.items():
        if key == "skipped":
            continue
        return len(value)
    return 0


# --------------------------------------------------------------------------------------------------------------
# Transforms (PIL RGB image -> 3 x H x W tensor)


def _to_tensor(img: Image.Image, dtype: torch.dtype) -> torch.Tensor:
    t = TF.pil_to_tensor(img)
    if dtype == torch.uint8:
        return t
    if not dtype.is_floating_point:
        raise ValueError(f"image dtype must be torch.uint8 or a floating type, got {dtype}")
    return t.to(dtype).div_(255.0)


def _resize_shorter(img: Image.Image, size: int) -> Image.Image:
    return TF.resize(img, size, interpolation=InterpolationMode.BICUBIC, antialias=True)


#: aspect ratios (width / height) of the random-resized crop, as torchvision's ``RandomResizedCrop``
RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


class RandomCropMirror:
    """Colorization training: (optionally resize the shorter side to ``resize``) -> random ``size`` x ``size``
    crop -> horizontal mirror with probability 1/2 -> RGB tensor.

    An image whose shorter side is below ``size`` is first upscaled so that it equals ``size`` (never fails,
    never pads). With ``scale=(lo, hi)`` the crop is instead torchvision's random-resized crop (the contrastive
    tasks' augmentation): a box covering a share of the (resized) image's area drawn from [lo, hi], of aspect ratio
    drawn log-uniformly from 3/4 ... 4/3, resized to ``size`` x ``size`` (bilinear). The randomness comes from
    torch's generator, which DataLoader seeds per worker.
    """

    def __init__(self, size: int = 176, resize: int | None = None, mirror: bool = True,
                 dtype: torch.dtype = torch.uint8, scale: tuple[float, float] | None = None):
        if size < 1 or (resize is not None and resize < 1):
            raise ValueError(f"crop size and resize must be positive, got size={size}, resize={resize}")
        if scale is not None and not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"the random-resized crop's area share must be [lo, hi] with 0 < lo <= hi <= 1, "
                             f"got {list(scale)}")
        self.size, self.resize, self.mirror, self.dtype = size, resize, mirror, dtype
        self.scale = None if scale is None else (float(scale[0]), float(scale[1]))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.resize is not None:
            img = _resize_shorter(img, self.resize)
        if self.scale is not None:
            top, left, h, w = RandomResizedCrop.get_params(img, list(self.scale), list(RESIZED_CROP_RATIO))
            img = TF.resized_crop(img, top, left, h, w, [self.size, self.size],
                                  interpolation=InterpolationMode.BILINEAR, antialias=True)
            if self.mirror and bool(torch.rand(()) < 0.5):
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return _to_tensor(img, self.dtype)
        if min(img.size) < self.size:
            img = _resize_shorter(img, self.size)
        w, h = img.size
        top = int(torch.randint(0, h - self.size + 1, ()).item())
        left = int(torch.randint(0, w - self.size + 1, ()).item())
        img = img.crop((left, top, left + self.size, top + self.size))
        if self.mirror and bool(torch.rand(()) < 0.5):
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _to_tensor(img, self.dtype)

    def __repr__(self) -> str:
        scale = "" if self.scale is None else f", scale={self.scale}"
        return (f"RandomCropMirror(size={self.size}, resize={self.resize}, mirror={self.mirror}, "
                f"dtype={self.dtype}{scale})")


class ResizeCenterCrop:
    """Probes / evaluation: resize the shorter side to ``resize`` (at least ``size``), center ``size`` crop."""

    def __init__(self, size: int = 224, resize: int | None = 256, dtype: torch.dtype = torch.uint8):
        self.size, self.resize, self.dtype = size, resize, dtype

    def __call__(self, img: Image.Image) -> torch.Tensor:
        target = max(self.size, self.resize or 0)
        if min(img.size) != target:
            img = _resize_shorter(img, target)
        return _to_tensor(TF.center_crop(img, [self.size, self.size]), self.dtype)

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(size={self.size}, resize={self.resize}, dtype={self.dtype})"


class ToTensor:
    """The whole image as a 3 x H x W tensor (no geometry change)."""

    def __init__(self, dtype: torch.dtype = torch.uint8):
        self.dtype = dtype

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return _to_tensor(img, self.dtype)


# --------------------------------------------------------------------------------------------------------------
# Data sets


class ImageSamples(Dataset):
    """A list of ``(path, label)`` decoded with :func:`load_rgb` then ``transform``.

    Item ``i`` is ``{"image", "label", "has_color", "index", "path"}``, or a :class:`Skipped` record when the
    image is bad (use :data:`collate_skip`). ``label`` is -1 for unlabelled samples. ``samples`` is a plain list:
    a screen (:meth:`xchannel.data.screen.ScreenResult.apply`) replaces it by the usable samples before a run
    draws its data order.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Image.Image], Any] | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, check_color: bool = True):
        self.samples = list(samples)
        self.transform = transform if transform is not None else ToTensor()
        self.max_pixels = max_pixels
        self.check_color = check_color

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, index: int) -> dict | Skipped:
        path, label = self.samples[index]
        try:
            img = load_rgb(path, self.max_pixels)
        except BadImageError as err:
            return Skipped(index, err.path, err.reason)
        has_color = not is_grayscale(img) if self.check_color else True
        return {"image": self.transform(img), "label": label, "has_color": has_color, "index": index,
                "path": str(path)}


class ImageFolderDataset(ImageSamples):
    """An ImageNet-style tree ``root/<class>/<image>`` (classes sorted by name, as torchvision's ImageFolder).

    Files are found with torchvision's ``find_classes``/``make_dataset`` and ``IMG_EXTENSIONS`` (any case:
    ``.JPEG`` included); other files are ignored.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None,
                 extensions: tuple[str, ...] = IMG_EXTENSIONS, allow_empty: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS, check_color: bool = True):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"{root}: image folder not found (expected root/<class>/<image files>)")
        try:
            classes, class_to_idx = find_classes(root)
            samples = make_dataset(root, class_to_idx, extensions=extensions, allow_empty=allow_empty)
        except FileNotFoundError as err:
            raise UserError(f"{root}: not a usable image folder: {err}") from None
        self.root = root
        self.classes = classes
        self.class_to_idx = class_to_idx
        super().__init__(samples, transform, max_pixels, check_color)


class ImageListDataset(ImageSamples):
    """Images listed in a text file, one ``path [label]`` per line, paths relative to the list's folder.

    Blank lines and lines starting with ``#`` are ignored. A line whose last whitespace-separated field is an
    integer is ``path label``; otherwise the whole line is the path (label -1), so paths may contain spaces.
    Missing image files are not checked here: they are skipped and counted when read, like any bad image.
    """

    def __init__(self, list_file: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, check_color: bool = True):
        self.list_file = Path(list_file)
        super().__init__(read_image_list(self.list_file), transform, max_pixels, check_color)


def read_image_list(list_file: str | os.PathLike) -> list[tuple[str, int]]:
    """Parse an image list (see :class:`ImageListDataset`) into ``(absolute path, label)`` pairs."""
    list_file = Path(list_file)
    try:
        text = list_file.read_text()
    except FileNotFoundError:
        raise UserError(f"{list_file}: image list not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{list_file}: cannot read the image list ({err})") from None
    base = list_file.parent
    samples: list[tuple[str, int]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        label = -1
        if len(parts) == 2 and _is_int(parts[1]):
            line, label = parts[0], int(parts[1])
            if label < -1:
                raise UserError(f"{list_file}:{lineno}: label must be >= 0 (or -1 for none), got {label}")
        samples.append((str(base / line), label))
    if not samples:
        raise UserError(f"{list_file}: the image list names no images")
    return samples


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True
