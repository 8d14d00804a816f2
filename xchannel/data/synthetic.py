"""The embedded data set: a seeded, procedural stand-in for ImageNet and PASCAL VOC, written in their real formats.

No ImageNet or PASCAL exists on the project's machines, so :func:`make_dataset` (``xchannel make-data OUT``) draws
a small data set that exercises every benchmark through the real on-disk formats:

* ``OUT/imagenet/{train,val}/<class>/<class>_<n>.JPEG``: an ImageFolder tree, one dominant object of the labelled
  class per image (plus up to two small distractors of other classes), JPEG quality 90; about 2 % of the images are
  stored as grayscale JPEGs, as ImageNet holds some, to exercise the gray-image path. ``OUT/imagenet/{train,val}.txt``
  list the same images as ``path label`` lines (``label`` = the ImageFolder index of the class).
* ``OUT/VOCdevkit/VOC2007``: JPEGImages, Annotations (boxes of the visible extent, difficult and truncated flags),
  SegmentationClass (palette PNGs, 255 on a 2-px band either side of every object boundary and on difficult
  objects), ImageSets/Main (train, val, trainval, test and the per-class ``<cls>_<split>.txt`` with 1 / 0 / -1) and
  ImageSets/Segmentation (train, val, trainval, test). ``VOC2012`` holds another draw with train/val splits
  (the segmentation benchmark's year).
* ``OUT/VOCdevkit/VOC2011`` (another draw, the year of the authors' segmentation validation) and
  ``OUT/SBD/dataset``: the Semantic Boundaries Dataset in its release layout, ``img/<id>.jpg``, ``cls/<id>.mat``
  (MATLAB files with the struct ``GTcls``: ``Segmentation``, class indices 0..20 without void, ``Boundaries``, a
  20 x 1 cell of sparse boundary maps, ``CategoriesPresent``), ``train.txt`` and ``val.txt``. As in the real
  release, SBD holds images of VOC2011 (every segmentation ``train`` image and a third of ``val``) and images of
  its own; ``VOC2011/ImageSets/Segmentation/seg11valid.txt`` lists the VOC2011 ``val`` images that are not in
  SBD ``train``, the authors' validation set.
* ``OUT/manifest.json``: the spec, the classes with their colour modes, file counts and the generation time.

What makes colorization a meaningful pretext task here
------------------------------------------------------
* 20 object classes (:data:`SHAPE_CLASSES`), each a distinct silhouette and/or luminance texture (disc, ring,
  star, cross, crescent, arrow, ...; plain, stripes, checker, polka dots, concentric rings, spokes): the class is
  visible in the lightness channel L. The VOC tree maps shape class i to VOC class i.
* Colours depend on the class for half of the classes and are multimodal: such a class is drawn in one of its 2-3
  hue modes (e.g. the disc is red, yellow or green, never blue), hue jittered by N(0, 5 deg) clipped to 10 deg,
  HSV saturation 0.65-1. The other half (:data:`ANY`: cross, dotted hexagon, flower, ...) come in any hue, as cars, clothes
  and furniture do: colour says nothing of their class.
* Every scene holds 1-3 unlabelled blobs of any colour (:func:`draw_clutter`: leaves, signs, litter) that belong to
  the background, so a saturated region is not necessarily an object.
* The colour mode is *not* visible in L: an object's luminance is drawn independently of its mode. The object's
  colour is built in linear RGB with a prescribed relative luminance Y (uniform in 0.06-0.40): the hue's RGB is
  scaled to luminance Y and, when a channel would exceed 1, mixed with the gray of the same Y (which keeps Y).
  Texture and shading multiply all three linear channels alike, so they change L but not the hue.
* Backgrounds have their own typical colours: sky gradients, grass textures, neutral walls, sand, and sky-over-grass
  landscapes; a global illumination ramp (+-20 %), per-object sphere-like shading, and sensor noise (1-3 levels)
  give natural luminance variation.

Generator v2 drew every class in its own hue modes over clean backgrounds. There colour was a per-pixel class
label: the colorization network's output segmented the objects by class, and FCN fine-tuned from it scored
14.7 ± 2.2 mIU against 6.2 ± 0.7 for the supervised network (ranked first everywhere else). v3's any-hue classes and
clutter make colour a partial cue, as it is in photographs.

Everything is vectorised numpy; every image has its own generator ``default_rng([seed, stream, i, j])``, so a spec
always gives byte-identical files, and adding classes or images leaves the existing ones unchanged.
"""

from __future__ import annotations

import colorsys
import io
import math
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from xchannel.data.voc import IGNORE_INDEX, VOC_CLASSES, VOC_PALETTE, image_labels
from xchannel.errors import UserError
from xchannel.utils.config import to_dict
from xchannel.utils.io import atomic_write_json

GENERATOR_VERSION = 3

# Hue modes (HSV hue of the sRGB colour, degrees).
RED, ORANGE, YELLOW, LIME, GREEN, TEAL, CYAN, BLUE, VIOLET, MAGENTA, PINK = (
    0.0, 28.0, 55.0, 90.0, 125.0, 165.0, 190.0, 225.0, 268.0, 305.0, 335.0)

#: Linear-RGB weights of the relative luminance Y (the Y row of the sRGB -> XYZ matrix used by xchannel.color).
LUMA = np.array([0.212671, 0.715160, 0.072169], dtype=np.float32)
LUM_RANGE = (0.06, 0.40)
SAT_RANGE = (0.65, 1.0)
HUE_JITTER_SD, HUE_JITTER_MAX = 5.0, 10.0


@dataclass(frozen=True)
class ShapeClass:
    """One object class: folder name, silhouette, luminance texture, allowed hue modes, VOC class it stands for."""

    name: str
    shape: str
    texture: str
    hues: tuple[float, ...]
    voc_name: str


ANY = ()  # no colour modes: the hue is uniform on the circle (as cars, clothes or furniture come in any colour)
_CLASS_TABLE = [
    ("disc", "disc", "plain", (RED, YELLOW, GREEN)),
    ("ring", "ring", "plain", (ORANGE, BLUE)),
    ("checker_square", "square", "checker", (RED, BLUE)),
    ("triangle", "triangle", "plain", (YELLOW, MAGENTA)),
    ("star", "star", "plain", (YELLOW, RED)),
    ("cross", "cross", "plain", ANY),
    ("dotted_hexagon", "hexagon", "dots", ANY),
    ("crescent", "crescent", "plain", (YELLOW, CYAN)),
    ("flower", "flower", "plain", ANY),
    ("striped_disc", "disc", "stripes", (ORANGE, GREEN)),
    ("square", "square", "plain", ANY),
    ("ringed_ellipse", "ellipse", "rings", (RED, CYAN)),
    ("striped_diamond", "diamond", "stripes", (YELLOW, VIOLET)),
    ("arrow", "arrow", "plain", ANY),
    ("frame", "frame", "plain", ANY),
    ("dotted_semicircle", "semicircle", "dots", (MAGENTA, LIME)),
    ("tee", "tee", "plain", ANY),
    ("spoked_disc", "disc", "spokes", ANY),
    ("striped_triangle", "triangle", "stripes", ANY),
    ("checker_pentagon", "pentagon", "checker", ANY),
]
#: The 20 classes; shape class i stands for ``VOC_CLASSES[i]`` in the VOC trees.
SHAPE_CLASSES: tuple[ShapeClass, ...] = tuple(
    ShapeClass(name, shape, texture, hues, VOC_CLASSES[i])
    for i, (name, shape, texture, hues) in enumerate(_CLASS_TABLE)
)

BACKGROUNDS = ("sky", "grass", "wall", "sand", "landscape")


@dataclass
class SyntheticSpec:
    """What :func:`make_dataset` draws. The defaults are the project's default small set."""

    seed: int = 0
    classes: int = 16  # ImageFolder classes: the first N of SHAPE_CLASSES (the VOC trees always use all 20)
    train_per_class: int = 100  # 1600 images: 40 per class let the 300-step demo networks run 15 epochs
    val_per_class: int = 150  # 2400 val images: a probe's 95 % interval is about +-2 points at 50 % accuracy
    voc_trainval: int = 800  # VOC2007 trainval (split in halves into train / val); VOC2012 trainval as well
    voc_test: int = 800  # VOC2007 test, scored by classification and detection (supervised cls mAP +-1.9 at 800)
    voc2012: bool = True
    sbd: bool = True  # VOC2011 and the SBD tree (VOC2011's train images, some of its val, voc_trainval // 2 own)
    seg_val: int = 300  # VOC2011 segmentation val images (those not in SBD train are seg11valid, the scored set)
    size: int = 160  # shorter image side, pixels
    gray_fraction: float = 0.02  # share of ImageFolder images stored as grayscale JPEGs
    jpeg_quality: int = 90

    def validate(self) -> None:
        problems = []
        if self.seed < 0:
            problems.append(f"seed must be >= 0 (got {self.seed})")
        if not 1 <= self.classes <= len(SHAPE_CLASSES):
            problems.append(f"classes must be in 1..{len(SHAPE_CLASSES)} (got {self.classes})")
        for name in ("train_per_class", "val_per_class", "voc_trainval", "voc_test", "seg_val"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if not 32 <= self.size <= 1024:
            problems.append(f"size must be in 32..1024 pixels (got {self.size})")
        if not 0.0 <= self.gray_fraction <= 1.0:
            problems.append(f"gray_fraction must be in [0, 1] (got {self.gray_fraction})")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality must be in 1..100 (got {self.jpeg_quality})")
        if problems:
            raise UserError("synthetic data spec: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------------------------
# Colour


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055)


def colour_with_luminance(hue: float, sat: float, lum: float) -> np.ndarray:
    """Linear RGB (3,) of HSV hue ``hue`` (degrees) and saturation ``sat`` with relative luminance exactly ``lum``.

    The fully bright sRGB colour (value 1) is linearised and scaled to luminance ``lum``; if a channel then
    exceeds 1 the colour is mixed with the gray of luminance ``lum`` (``c' = lum + t (c - lum)``), the largest
    ``t`` that fits. Both steps keep Y, so Y (hence CIE L*) is independent of the hue.
    """
    srgb = np.array(colorsys.hsv_to_rgb((hue % 360.0) / 360.0, sat, 1.0), dtype=np.float64)
    lin = srgb_to_linear(srgb)
    c = lin * (lum / float(LUMA @ lin))
    if c.max() > 1.0:
        t = (1.0 - lum) / (c.max() - lum)
        c = lum + t * (c - lum)
    return c.astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# Silhouettes: signed distances in object units (radius ~1), negative inside


def _polygon(n: int, inradius: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    angles = [2 * math.pi * k / n + math.pi / 2 for k in range(n)]

    def sdf(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        d = u * math.cos(angles[0]) + v * math.sin(angles[0])
        for a in angles[1:]:
            d = np.maximum(d, u * math.cos(a) + v * math.sin(a))
        return d - inradius

    return sdf


def _box(u: np.ndarray, v: np.ndarray, hx: float, hy: float, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    return np.maximum(np.abs(u - cx) - hx, np.abs(v - cy) - hy)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    frac = (5 * theta / (2 * math.pi)) % 1.0
    tri = np.abs(2 * frac - 1)  # 1 at the tips, 0 between them
    return (rho - (0.42 + 0.58 * tri)) * 0.6


def _flower(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    return (rho - (0.68 + 0.3 * np.cos(6 * theta))) * 0.7


def _arrow(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    shaft = _box(u, v, 0.55, 0.17, cx=-0.4)
    head = np.maximum(0.1 - u, ((u - 0.95) * 0.55 + np.abs(v) * 0.85) / math.hypot(0.55, 0.85))
    return np.minimum(shaft, head)


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": lambda u, v: np.hypot(u, v) - 0.95,
    "ring": lambda u, v: np.abs(np.hypot(u, v) - 0.7) - 0.25,
    "square": lambda u, v: _box(u, v, 0.72, 0.72),
    "frame": lambda u, v: np.abs(_box(u, v, 0.62, 0.62)) - 0.12,
    "triangle": _polygon(3, 0.5),
    "pentagon": _polygon(5, 0.78),
    "hexagon": _polygon(6, 0.84),
    "star": _star,
    "flower": _flower,
    "cross": lambda u, v: np.minimum(_box(u, v, 0.95, 0.27), _box(u, v, 0.27, 0.95)),
    "tee": lambda u, v: np.minimum(_box(u, v, 0.9, 0.22, cy=-0.62), _box(u, v, 0.22, 0.72, cy=0.18)),
    "crescent": lambda u, v: np.maximum(np.hypot(u, v) - 0.95, 0.8 - np.hypot(u - 0.5, v)),
    "ellipse": lambda u, v: (np.hypot(u / 0.95, v / 0.55) - 1.0) * 0.55,
    "diamond": lambda u, v: (np.abs(u) / 0.95 + np.abs(v) / 0.6 - 1.0) * 0.5,
    "semicircle": lambda u, v: np.maximum(np.hypot(u, v + 0.4) - 1.0, -(v + 0.4)),
    "arrow": _arrow,
}


def _soft(x: np.ndarray, sharp: float = 2.5) -> np.ndarray:
    """A periodic signal in [-1, 1] -> a nearly square wave in [0, 1] with soft (anti-aliased) edges."""
    return np.clip(0.5 + sharp * x, 0.0, 1.0)


def _dots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    period = 0.42
    du = (u / period + 0.5) % 1.0 - 0.5
    dv = (v / period + 0.5) % 1.0 - 0.5
    return np.clip((0.32 - np.hypot(du, dv)) * 12.0 + 0.5, 0.0, 1.0)


#: Luminance textures: 1 where the texture darkens the surface, 0 where it does not.
TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "plain": lambda u, v: np.zeros_like(u),
    "stripes": lambda u, v: _soft(np.sin(u * (2 * math.pi / 0.38))),
    "checker": lambda u, v: _soft(np.sin(u * (math.pi / 0.3)) * np.sin(v * (math.pi / 0.3))),
    "dots": _dots,
    "rings": lambda u, v: _soft(np.sin(np.hypot(u, v) * (2 * math.pi / 0.32))),
    "spokes": lambda u, v: _soft(np.sin(8 * np.arctan2(v, u))),
}


# --------------------------------------------------------------------------------------------------------------
# Scenes


@dataclass
class SceneObject:
    """One drawn object: class, geometry (pixels), colour mode and appearance."""

    cls: int
    cx: float
    cy: float
    radius: float
    angle: float
    mode: int
    hue: float
    sat: float
    lum: float
    depth: float
    light: tuple[float, float]
    full_area: int = 0  # pixels of the whole object (coverage >= 1/2), inside the image or not
    in_image_area: int = 0  # of those, inside the image
    visible_area: int = 0  # of those, not covered by later objects


@dataclass
class Scene:
    """A rendered image: ``rgb`` (H x W x 3 uint8 sRGB), ``owner`` (H x W int16: index of the topmost object
    covering the pixel, -1 for background), the objects in drawing order, and the background kind."""

    rgb: np.ndarray
    owner: np.ndarray
    objects: list[SceneObject]
    background: str


def sample_object(rng: np.random.Generator, cls: int, cx: float, cy: float, radius: float) -> SceneObject:
    """Draw an object's appearance: a hue mode of its class (uniformly), hue jitter, saturation, luminance."""
    hues = SHAPE_CLASSES[cls].hues
    mode = int(rng.integers(len(hues))) if hues else -1
    jitter = float(np.clip(rng.normal(0.0, HUE_JITTER_SD), -HUE_JITTER_MAX, HUE_JITTER_MAX))
    hue = hues[mode] + jitter if hues else float(rng.uniform(0.0, 360.0))
    light = float(rng.uniform(0, 2 * math.pi))
    return SceneObject(
        cls=cls, cx=cx, cy=cy, radius=radius, angle=float(rng.uniform(0, 2 * math.pi)), mode=mode,
        hue=hue % 360.0, sat=float(rng.uniform(*SAT_RANGE)), lum=float(rng.uniform(*LUM_RANGE)),
        depth=float(rng.uniform(0.35, 0.55)), light=(math.cos(light), math.sin(light)),
    )


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Smooth random field (about unit variance) from a coarse normal grid upsampled bilinearly."""
    grid = rng.standard_normal((cells_y + 1, cells_x + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _fill(h: int, w: int, colour: np.ndarray) -> np.ndarray:
    return np.broadcast_to(colour, (h, w, 3)).astype(np.float32)


def _sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    hue = rng.uniform(200, 222)
    lum = rng.uniform(0.18, 0.32)
    top = colour_with_luminance(hue, rng.uniform(0.45, 0.7), lum)
    bottom = colour_with_luminance(hue - rng.uniform(0, 10), rng.uniform(0.1, 0.3),
                                   min(0.75, lum * rng.uniform(1.5, 2.2)))  # paler and lighter at the horizon
    t = (np.linspace(0, 1, h, dtype=np.float32) ** 0.8)[:, None, None]
    img = top * (1 - t) + bottom * t
    clouds = np.clip(_smooth_noise(rng, h, w, 3, 5), 0, None)[..., None]
    return (img * (1 + 0.25 * clouds) + 0.04 * clouds).astype(np.float32)


def _grass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = colour_with_luminance(rng.uniform(85, 115), rng.uniform(0.5, 0.8), rng.uniform(0.06, 0.16))
    blades = _smooth_noise(rng, h, w, max(2, h // 10), w)  # streaks: long in y, fine in x
    patches = _smooth_noise(rng, h, w, 3, 4)
    fine = rng.standard_normal((h, w)).astype(np.float32)
    mod = np.clip(1 + 0.3 * blades + 0.15 * patches + 0.08 * fine, 0.3, 2.0)
    return (_fill(h, w, base) * mod[..., None]).astype(np.float32)


def _wall(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = colour_with_luminance(rng.uniform(0, 360), rng.uniform(0.0, 0.12), rng.uniform(0.15, 0.5))
    mod = 1 + 0.08 * _smooth_noise(rng, h, w, 2, 3) + 0.03 * rng.standard_normal((h, w)).astype(np.float32)
    if rng.random() < 0.5:  # courses of bricks or panels: faint dark horizontal lines
        period = int(rng.integers(max(6, h // 10), max(7, h // 5)))
        rows = (np.arange(h) % period) < max(1, period // 10)
        mod = mod * np.where(rows, 0.8, 1.0)[:, None]
    return (_fill(h, w, base) * mod[..., None]).astype(np.float32)


def _sand(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = colour_with_luminance(rng.uniform(28, 42), rng.uniform(0.25, 0.45), rng.uniform(0.15, 0.35))
    mod = 1 + 0.18 * _smooth_noise(rng, h, w, 3, 3) + 0.1 * rng.standard_normal((h, w)).astype(np.float32)
    return (_fill(h, w, base) * np.clip(mod, 0.4, 2.0)[..., None]).astype(np.float32)


def background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
    """A linear-RGB background (H x W x 3 float32) of a random kind."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    if kind == "landscape":
        horizon = int(h * rng.uniform(0.35, 0.65))
        img = _grass(rng, h, w)
        img[:horizon] = _sky(rng, horizon, w)  # horizon >= 0.35 h >= 11 px
        return img, kind
    return {"sky": _sky, "grass": _grass, "wall": _wall, "sand": _sand}[kind](rng, h, w), kind


#: Unlabelled coloured "stuff" in every scene (leaves, signs, litter): blobs of any hue that belong to the background.
CLUTTER_COUNT = (1, 4)
CLUTTER_RADIUS = (0.05, 0.14)


def draw_clutter(rng: np.random.Generator, canvas: np.ndarray, size: int) -> None:
    """Composite 1-3 irregular blobs of random hue, saturation and luminance over the background (not objects:
    their pixels stay background in every label)."""
    h, w, _ = canvas.shape
    for _ in range(int(rng.integers(*CLUTTER_COUNT))):
        r = rng.uniform(*CLUTTER_RADIUS) * size
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        x0, x1 = max(int(cx - 1.5 * r), 0), min(int(cx + 1.5 * r) + 1, w)
        y0, y1 = max(int(cy - 1.5 * r), 0), min(int(cy + 1.5 * r) + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        xs = np.arange(x0, x1, dtype=np.float32) + 0.5 - cx
        ys = np.arange(y0, y1, dtype=np.float32) + 0.5 - cy
        rho, theta = np.hypot(xs[None, :], ys[:, None]), np.arctan2(ys[:, None], xs[None, :])
        edge = np.ones_like(theta)
        for k in (2, 3, 5):
            edge += rng.uniform(0.0, 0.22) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
        alpha = np.clip(0.5 - (rho - r * edge), 0.0, 1.0)[..., None]
        colour = colour_with_luminance(rng.uniform(0, 360), rng.uniform(0.4, 1.0), rng.uniform(*LUM_RANGE))
        region = canvas[y0:y1, x0:x1]
        region *= 1.0 - alpha
        region += alpha * colour


def draw_object(canvas: np.ndarray, owner: np.ndarray, index: int, obj: SceneObject) -> None:
    """Composite ``obj`` over the linear-RGB ``canvas`` (anti-aliased) and mark its pixels in ``owner``.

    Coverage ``alpha = clip(1/2 - d, 0, 1)`` with ``d`` the signed distance in pixels; the object's colour is
    multiplied by ``(1 - depth * texture) * shading``, shading = ``1 + 0.22 (p . light) - 0.18 |p|^2`` (a lit,
    rounded surface), which changes luminance only.
    """
    h, w = owner.shape
    sc = SHAPE_CLASSES[obj.cls]
    r = obj.radius
    ext = 1.05 * r + 1.0
    x0, x1 = int(math.floor(obj.cx - ext)), int(math.ceil(obj.cx + ext)) + 1
    y0, y1 = int(math.floor(obj.cy - ext)), int(math.ceil(obj.cy + ext)) + 1
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - obj.cx) / r
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - obj.cy) / r
    ca, sa = math.cos(obj.angle), math.sin(obj.angle)
    u = ca * xs[None, :] + sa * ys[:, None]
    v = -sa * xs[None, :] + ca * ys[:, None]
    alpha = np.clip(0.5 - SHAPES[sc.shape](u, v) * r, 0.0, 1.0).astype(np.float32)
    obj.full_area = int(np.count_nonzero(alpha >= 0.5))
    cx0, cx1, cy0, cy1 = max(x0, 0), min(x1, w), max(y0, 0), min(y1, h)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    sub = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    a, u, v = alpha[sub], u[sub], v[sub]
    obj.in_image_area = int(np.count_nonzero(a >= 0.5))
    shade = 1.0 + 0.22 * (u * obj.light[0] + v * obj.light[1]) - 0.18 * (u * u + v * v)
    mod = (1.0 - obj.depth * TEXTURES[sc.texture](u, v)) * np.clip(shade, 0.4, 1.3)
    colour = colour_with_luminance(obj.hue, obj.sat, obj.lum)
    region = canvas[cy0:cy1, cx0:cx1]
    region *= (1.0 - a)[..., None]
    region += (a * mod)[..., None] * colour
    own = owner[cy0:cy1, cx0:cx1]
    own[a >= 0.5] = index


def finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Global illumination ramp (x0.8..x1.2 along a random direction), sRGB encoding, noise, 8-bit quantisation."""
    h, w, _ = canvas.shape
    phi = rng.uniform(0, 2 * math.pi)
    xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    ramp = 1.0 + rng.uniform(0.05, 0.2) * (math.cos(phi) * xx + math.sin(phi) * yy) / math.sqrt(2)
    srgb = linear_to_srgb(np.clip(canvas * ramp[..., None], 0.0, 1.0))
    sigma = rng.uniform(1.0, 3.0) / 255.0
    noise = sigma * rng.standard_normal((h, w, 1)).astype(np.float32)  # luminance noise
    noise = noise + 0.3 * sigma * rng.standard_normal((h, w, 3)).astype(np.float32)  # a little chroma noise
    return np.clip(np.rint((srgb + noise) * 255.0), 0, 255).astype(np.uint8)


def _image_shape(rng: np.random.Generator, size: int, aspect: tuple[float, float],
                 p_landscape: float) -> tuple[int, int]:
    """(height, width): shorter side ``size``, longer side ``size`` times U(aspect), landscape with p_landscape."""
    long = int(round(size * rng.uniform(*aspect)))
    return (size, long) if rng.random() < p_landscape else (long, size)


def render_imagenet_image(rng: np.random.Generator, cls: int, size: int, classes: int) -> Scene:
    """An ImageFolder image of class ``cls``: one dominant object (radius 27-40 % of the shorter side, near the
    centre) drawn over 0-2 small distractors of other classes among the first ``classes``."""
    h, w = _image_shape(rng, size, (1.0, 1.33), 0.75)
    canvas, kind = background(rng, h, w)
    draw_clutter(rng, canvas, size)
    owner = np.full((h, w), -1, dtype=np.int16)
    objects = []
    others = [k for k in range(classes) if k != cls]
    n_distractors = int(rng.choice(3, p=[0.4, 0.4, 0.2])) if others else 0
    for _ in range(n_distractors):
        k = others[int(rng.integers(len(others)))]
        rad = rng.uniform(0.08, 0.15) * size
        objects.append(sample_object(rng, k, rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h, rad))
    rad = rng.uniform(0.27, 0.40) * size
    cx, cy = w * (0.5 + rng.uniform(-0.12, 0.12)), h * (0.5 + rng.uniform(-0.12, 0.12))
    objects.append(sample_object(rng, cls, cx, cy, rad))
    for i, obj in enumerate(objects):
        draw_object(canvas, owner, i, obj)
    _count_visible(owner, objects)
    return Scene(finish(rng, canvas), owner, objects, kind)


#: VOC scenes: a main object (radius :data:`VOC_MAIN_RADIUS` of the shorter side, centre within
#: :data:`VOC_MAIN_OFFSET` of the image centre, as photographed objects tend to be) and, with probability
#: :data:`VOC_SECOND_P`, a second one of radius :data:`VOC_SECOND_RADIUS` anywhere (truncated by the border or
#: occluding / occluded). Generator v1 drew 1-4 objects of 4-38 % anywhere: half were under ~12 % (a few pixels at
#: conv5's stride of 16 on 160 px images) and no encoder, supervised ones included, fine-tuned above random scores.
VOC_MAIN_RADIUS = (0.25, 0.40)
VOC_MAIN_OFFSET = 0.15
VOC_SECOND_P = 0.5
VOC_SECOND_RADIUS = (0.12, 0.25)


def render_voc_image(rng: np.random.Generator, size: int) -> Scene:
    """A VOC-like scene of 1-2 objects of any of the 20 classes (the ``VOC_*`` constants above)."""
    h, w = _image_shape(rng, size, (1.2, 1.5), 0.8)
    canvas, kind = background(rng, h, w)
    draw_clutter(rng, canvas, size)
    owner = np.full((h, w), -1, dtype=np.int16)
    objects = []
    if rng.random() < VOC_SECOND_P:
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        rad = rng.uniform(*VOC_SECOND_RADIUS) * size
        objects.append(sample_object(rng, cls, rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h, rad))
    cls = int(rng.integers(len(SHAPE_CLASSES)))
    rad = rng.uniform(*VOC_MAIN_RADIUS) * size
    cx = w * (0.5 + rng.uniform(-VOC_MAIN_OFFSET, VOC_MAIN_OFFSET))
    cy = h * (0.5 + rng.uniform(-VOC_MAIN_OFFSET, VOC_MAIN_OFFSET))
    objects.append(sample_object(rng, cls, cx, cy, rad))
    # drawn in list order: the second object lies behind the main one, which may hide part of it
    for i, obj in enumerate(objects):
        draw_object(canvas, owner, i, obj)
    _count_visible(owner, objects)
    return Scene(finish(rng, canvas), owner, objects, kind)


def _count_visible(owner: np.ndarray, objects: list[SceneObject]) -> None:
    counts = np.bincount(owner.ravel().astype(np.int64) + 1, minlength=len(objects) + 1)
    for i, obj in enumerate(objects):
        obj.visible_area = int(counts[i + 1])


# --------------------------------------------------------------------------------------------------------------
# VOC targets


#: Objects with fewer visible pixels, or less than this share of their in-image area visible, are not annotated.
MIN_VISIBLE_PIXELS, MIN_VISIBLE_SHARE = 6, 0.1
#: An annotated object is difficult when its visible box is smaller than max(8 px, 6 % of the shorter side) or
#: when less than 35 % of it is visible (heavily occluded).
DIFFICULT_SIDE, DIFFICULT_SIDE_SHARE, DIFFICULT_VISIBLE_SHARE = 8, 0.06, 0.35
#: Half-width of the void band on object boundaries in the segmentation masks (VOC's band is about 5 px).
BOUNDARY_BAND = 2


def voc_targets(scene: Scene) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Annotations (devkit boxes of the visible extent, difficult/truncated flags), the segmentation mask and the
    class labels without void (SBD's kind of mask: class index + 1 on the visible pixels of annotated objects).

    An object is annotated when at least ``MIN_VISIBLE_PIXELS`` and ``MIN_VISIBLE_SHARE`` of it are visible; it
    is difficult when its visible box is small, when it is heavily occluded, or when no pixel of it survives the
    boundary band (too thin or small to segment). Mask: 0 background, class index + 1 on visible object pixels,
    255 on (a) a band of ``BOUNDARY_BAND`` px either side of every boundary between different labels, (b)
    difficult objects and (c) visible pixels of objects too hidden to annotate.
    """
    h, w = scene.owner.shape
    short = min(h, w)
    labels = np.zeros((h, w), dtype=np.uint8)
    void = np.zeros((h, w), dtype=bool)
    kept: list[tuple[SceneObject, np.ndarray, tuple[int, int, int, int], bool]] = []
    for i, obj in enumerate(scene.objects):
        if obj.visible_area == 0:
            continue
        pix = scene.owner == i
        share = obj.visible_area / max(obj.in_image_area, 1)
        if obj.visible_area < MIN_VISIBLE_PIXELS or share < MIN_VISIBLE_SHARE:
            void |= pix
            continue
        labels[pix] = obj.cls + 1
        ys, xs = np.nonzero(pix)
        box = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        side = min(box[2] - box[0] + 1, box[3] - box[1] + 1)
        difficult = side < max(DIFFICULT_SIDE, DIFFICULT_SIDE_SHARE * short) or share < DIFFICULT_VISIBLE_SHARE
        kept.append((obj, pix, box, difficult))
    # Boundary band: any pixel whose (2b+1)^2 neighbourhood holds another label (class-level, as VOC's masks).
    b = BOUNDARY_BAND
    padded = np.pad(labels, b, mode="edge")
    band = np.zeros((h, w), dtype=bool)
    for dy in range(-b, b + 1):
        for dx in range(-b, b + 1):
            if dy or dx:
                band |= padded[b + dy:b + dy + h, b + dx:b + dx + w] != labels
    annotations = []
    for obj, pix, box, difficult in kept:
        difficult = difficult or not bool((pix & ~band).any())
        if difficult:
            void |= pix
        annotations.append({
            "name": SHAPE_CLASSES[obj.cls].voc_name, "bbox": box, "difficult": bool(difficult),
            "truncated": obj.in_image_area < 0.9 * obj.full_area,
        })
    mask = labels.copy()
    mask[band | void] = IGNORE_INDEX
    return annotations, mask, labels


def annotation_xml(image_id: str, folder: str, size: tuple[int, int], objects: list[dict]) -> bytes:
    """A devkit-format annotation file."""
    w, h = size
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    src = ET.SubElement(root, "source")
    ET.SubElement(src, "database").text = "xchannel synthetic VOC"
    ET.SubElement(src, "annotation").text = "xchannel make-data"
    sz = ET.SubElement(root, "size")
    for tag, val in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(val)
    ET.SubElement(root, "segmented").text = "1"
    for o in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = o["name"]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(o["truncated"]))
        ET.SubElement(node, "difficult").text = str(int(o["difficult"]))
        bnd = ET.SubElement(node, "bndbox")
        for tag, val in zip(("xmin", "ymin", "xmax", "ymax"), o["bbox"]):
            ET.SubElement(bnd, tag).text = str(val)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


# --------------------------------------------------------------------------------------------------------------
# Writing the trees

_STREAM_IMAGENET = {"train": 1, "val": 2}
_STREAM_VOC = {("2007", "trainval"): 3, ("2007", "test"): 4, ("2012", "trainval"): 5, ("2011", "trainval"): 6}
_STREAM_SBD = 7


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _save_jpeg(rgb: np.ndarray, path: Path, quality: int, gray: bool = False) -> None:
    img = Image.fromarray(rgb, "RGB")
    if gray:
        img = img.convert("L")
    img.save(path, "JPEG", quality=quality)


def _save_mask(mask: np.ndarray, path: Path) -> None:
    img = Image.fromarray(mask, "P")
    img.putpalette(VOC_PALETTE.ravel().tolist())
    img.save(path, "PNG")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{ln}\n" for ln in lines))


class _Runner:
    """Runs the per-image jobs of :func:`make_dataset`, in order, in this process or in ``workers`` processes
    (every image has its own generator, so the files do not depend on ``workers``), and advances the progress
    bar."""

    def __init__(self, workers: int, bar: object | None = None) -> None:
        self.bar = bar
        self.pool = None
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(max_workers=workers)

    def map(self, fn: Callable, jobs: list) -> list:
        results = self.pool.map(fn, jobs, chunksize=16) if self.pool is not None else map(fn, jobs)
        out = []
        for r in results:
            out.append(r)
            if self.bar is not None:
                self.bar.update(1)
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        if self.bar is not None:
            self.bar.close()


def _imagenet_job(job: tuple) -> bool:
    """Render and write one ImageFolder image; whether it was stored as a grayscale JPEG."""
    seed, stream, k, j, size, classes, gray_fraction, quality, path = job
    rng = _rng(seed, stream, k, j)
    scene = render_imagenet_image(rng, k, size, classes)
    gray = bool(rng.random() < gray_fraction)
    _save_jpeg(scene.rgb, path, quality, gray=gray)
    return gray


def _write_imagenet(base: Path, spec: SyntheticSpec, runner: _Runner) -> dict:
    names = [SHAPE_CLASSES[k].name for k in range(spec.classes)]
    folder_index = {name: i for i, name in enumerate(sorted(names))}  # ImageFolder's class index
    counts: dict[str, int] = {}
    gray_files: list[str] = []
    for split, per_class in (("train", spec.train_per_class), ("val", spec.val_per_class)):
        rels, jobs = [], []
        for k, name in enumerate(names):
            (base / split / name).mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                rel = f"{split}/{name}/{name}_{j:05d}.JPEG"
                rels.append((rel, folder_index[name]))
                jobs.append((spec.seed, _STREAM_IMAGENET[split], k, j, spec.size, spec.classes, spec.gray_fraction,
                             spec.jpeg_quality, base / rel))
        grays = runner.map(_imagenet_job, jobs)
        gray_files += [rel for (rel, _), gray in zip(rels, grays) if gray]
        _write_lines(base / f"{split}.txt", [f"{rel} {label}" for rel, label in rels])
        counts[split] = len(rels)
    return {"classes": names, "images": counts, "gray_images": gray_files}


def _voc_ids(year: str, split: str, n: int, offset: int) -> list[str]:
    if year == "2007":
        return [f"{offset + i + 1:06d}" for i in range(n)]
    return [f"{year}_{offset + i + 1:06d}" for i in range(n)]


def _voc_job(job: tuple) -> tuple[np.ndarray, int, int, int]:
    """Render and write one VOC image (JPEG, annotation, segmentation mask); its 20 image labels and its counts
    of objects, difficult and truncated objects."""
    seed, stream, j, image_id, size, quality, root = job
    scene = render_voc_image(_rng(seed, stream, j), size)
    objects, mask, _ = voc_targets(scene)
    h, w = scene.owner.shape
    _save_jpeg(scene.rgb, root / "JPEGImages" / f"{image_id}.jpg", quality)
    (root / "Annotations" / f"{image_id}.xml").write_bytes(annotation_xml(image_id, root.name, (w, h), objects))
    _save_mask(mask, root / "SegmentationClass" / f"{image_id}.png")
    return (image_labels({"objects": objects}), len(objects), sum(o["difficult"] for o in objects),
            sum(o["truncated"] for o in objects))


def _write_voc_year(devkit: Path, year: str, splits: dict[str, list[str]], spec: SyntheticSpec,
                    runner: _Runner, n_train: int | None = None) -> dict:
    """Render and write one ``VOC<year>`` tree. ``splits`` maps a rendering stream ('trainval', 'test') to ids;
    the first ``n_train`` trainval images (default: half) are ``train``, the others ``val``."""
    root = devkit / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(spec.seed, _STREAM_VOC[(year, stream)], j, image_id, spec.size, spec.jpeg_quality, root)
            for stream, ids in splits.items() for j, image_id in enumerate(ids)]
    done = runner.map(_voc_job, jobs)
    labels = {job[3]: r[0] for job, r in zip(jobs, done)}
    n_objects, n_difficult, n_truncated = (sum(r[i] for r in done) for i in (1, 2, 3))
    trainval = splits.get("trainval", [])
    half = (len(trainval) + 1) // 2 if n_train is None else n_train
    sets = {"train": trainval[:half], "val": trainval[half:], "trainval": trainval}
    if "test" in splits:
        sets["test"] = splits["test"]
    for split, ids in sets.items():
        _write_lines(root / "ImageSets" / "Main" / f"{split}.txt", ids)
        _write_lines(root / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
        for k, cls in enumerate(VOC_CLASSES):
            _write_lines(root / "ImageSets" / "Main" / f"{cls}_{split}.txt",
                         [f"{i} {int(labels[i][k]):2d}" for i in ids])
    return {"images": {s: len(ids) for s, ids in sets.items()}, "objects": n_objects, "difficult": n_difficult,
            "truncated": n_truncated}


#: The descriptive text of a MAT-file version 5 header (116 bytes).
MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, written by xchannel make-data".ljust(116, b" ")


def _sbd_mat(labels: np.ndarray, path: Path) -> None:
    """SBD's ``cls/<id>.mat``: the struct ``GTcls`` with ``Segmentation`` (H x W uint8 class indices),
    ``Boundaries`` (20 x 1 cell of sparse H x W maps of each class's boundary pixels) and ``CategoriesPresent``."""
    from scipy.io import savemat
    from scipy.sparse import csc_matrix

    edge = np.zeros(labels.shape, dtype=bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    boundaries = np.empty((len(VOC_CLASSES), 1), dtype=object)
    for k in range(len(VOC_CLASSES)):
        boundaries[k, 0] = csc_matrix(edge & (labels == k + 1))
    present = np.array([k for k in range(1, len(VOC_CLASSES) + 1) if (labels == k).any()], dtype=np.uint8)
    buf = io.BytesIO()
    savemat(buf, {"GTcls": {"Segmentation": labels.astype(np.uint8), "Boundaries": boundaries,
                            "CategoriesPresent": present.reshape(-1, 1)}}, do_compression=True)
    data = bytearray(buf.getvalue())
    data[:116] = MAT_HEADER  # the 116-byte text header, which scipy stamps with the time: same spec, same bytes
    path.write_bytes(bytes(data))


def _sbd_job(job: tuple) -> None:
    """One SBD image: ``cls/<id>.mat`` and ``img/<id>.jpg``, copied from ``source`` (a VOC2011 JPEGImages folder)
    when given, else rendered."""
    seed, stream, j, image_id, size, quality, source, root = job
    scene = render_voc_image(_rng(seed, stream, j), size)
    _, _, labels = voc_targets(scene)
    if source is not None:
        shutil.copyfile(source / f"{image_id}.jpg", root / "img" / f"{image_id}.jpg")
    else:
        _save_jpeg(scene.rgb, root / "img" / f"{image_id}.jpg", quality)
    _sbd_mat(labels, root / "cls" / f"{image_id}.mat")


def _write_sbd(out: Path, devkit: Path, spec: SyntheticSpec, runner: _Runner) -> dict:
    """The SBD tree (``out/dataset``) over the VOC2011 tree in ``devkit`` and ``seg11valid.txt`` (module
    docstring)."""
    voc = devkit / "VOC2011"
    seg_train = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    seg_val = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    root = out / "dataset"
    for sub in ("img", "cls"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    overlap = seg_val[: len(seg_val) // 3]
    listed = seg_train + seg_val
    own = _voc_ids("2011", "sbd", max(spec.voc_trainval // 2, 2), len(listed))
    # SBD's copies of VOC2011 images (annotated without void), then its own images
    jobs = [(spec.seed, _STREAM_VOC[("2011", "trainval")], listed.index(i), i, spec.size, spec.jpeg_quality,
             voc / "JPEGImages", root) for i in seg_train + overlap]
    jobs += [(spec.seed, _STREAM_SBD, j, i, spec.size, spec.jpeg_quality, None, root) for j, i in enumerate(own)]
    runner.map(_sbd_job, jobs)
    cut = (4 * len(own)) // 5
    train, val = seg_train + overlap + own[:cut], own[cut:]
    _write_lines(root / "train.txt", train)
    _write_lines(root / "val.txt", val)
    seg11valid = [i for i in seg_val if i not in set(train)]
    _write_lines(voc / "ImageSets" / "Segmentation" / "seg11valid.txt", seg11valid)
    return {"train": len(train), "val": len(val), "seg11valid": len(seg11valid)}


def make_dataset(out: str | os.PathLike, spec: SyntheticSpec | None = None, *, overwrite: bool = False,
                 progress: bool = False, workers: int | None = None) -> dict:
    """Draw the data set of ``spec`` into ``out`` (see the module docstring); returns the manifest.

    ``workers`` processes render the images (default: one per core, at most 4); the files are the same for any
    number.

    The trees are built in a temporary folder inside ``out`` and moved into place at the end, so an interrupted
    run leaves ``out`` as it was. Existing ``imagenet``/``VOCdevkit``/``manifest.json`` in ``out`` are an error
    unless ``overwrite``.
    """
    spec = spec or SyntheticSpec()
    spec.validate()
    out = Path(out)
    targets = ("imagenet", "VOCdevkit", "SBD", "manifest.json")
    existing = [t for t in targets if (out / t).exists()]
    if existing and not overwrite:
        raise UserError(f"{out}: already holds {', '.join(existing)}; use --force to replace them")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    total = (spec.classes * (spec.train_per_class + spec.val_per_class) + spec.voc_trainval + spec.voc_test
             + (spec.voc_trainval if spec.voc2012 else 0)
             + ((spec.voc_trainval + 1) // 2 + spec.seg_val + max(spec.voc_trainval // 2, 2) if spec.sbd else 0))
    copies = spec.seg_val // 3 if spec.sbd else 0  # VOC2011 val images that SBD holds too (_write_sbd)
    tmp = Path(tempfile.mkdtemp(prefix=".make-data-", dir=out))
    runner = None
    try:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total + copies, desc="make-data", unit="img")
        runner = _Runner(workers if workers is not None else min(os.cpu_count() or 1, 4), bar)
        imagenet = _write_imagenet(tmp / "imagenet", spec, runner)
        voc = {"2007": _write_voc_year(tmp / "VOCdevkit", "2007", {
            "trainval": _voc_ids("2007", "trainval", spec.voc_trainval, 0),
            "test": _voc_ids("2007", "test", spec.voc_test, spec.voc_trainval)}, spec, runner)}
        if spec.voc2012:
            voc["2012"] = _write_voc_year(tmp / "VOCdevkit", "2012", {
                "trainval": _voc_ids("2012", "trainval", spec.voc_trainval, 0)}, spec, runner)
        sbd = None
        if spec.sbd:
            n_train = (spec.voc_trainval + 1) // 2
            voc["2011"] = _write_voc_year(tmp / "VOCdevkit", "2011", {
                "trainval": _voc_ids("2011", "trainval", n_train + spec.seg_val, 0)}, spec, runner, n_train)
            sbd = _write_sbd(tmp / "SBD", tmp / "VOCdevkit", spec, runner)
        manifest = {
            "generator": f"xchannel.data.synthetic v{GENERATOR_VERSION}",
            "spec": to_dict(spec),
            "classes": [{"name": c.name, "shape": c.shape, "texture": c.texture, "hues": list(c.hues) or "any",
                         "voc_name": c.voc_name} for c in SHAPE_CLASSES],
            "imagenet": imagenet,
            "voc": voc,
            "sbd": sbd,
            "images": total,
            "seconds": round(time.perf_counter() - start, 3),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
        for t in targets:
            if (out / t).exists():
                os.replace(out / t, tmp / f"old-{t}")
            if (tmp / t).exists():
                os.replace(tmp / t, out / t)
    finally:
        if runner is not None:
            runner.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
