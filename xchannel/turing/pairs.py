"""The pairs folder: the images a Turing-test server shows, and how ``make-pairs`` writes them.

Format (version ``xchannel-turing-pairs/1``)::

    DIR/
      real/<id>.png          the ground-truth colour photos, 256x256 RGB
      random/<id>.png        the Random baseline for photo <id>: its own lightness L with the ab colours of a
                             different, randomly chosen real photo (Table 1's "Random: copies the colors from a
                             random image"); used as a method and for the attention checks
      <method>/<id>.png      each method's recolouring of photo <id> (e.g. ours_full, ours_class, l2, l2_ft)
      ground_truth/<id>.png  optional control (make-pairs --ground-truth): the real photo itself, to be
                             "labelled real" 50% of the time (Table 1's Ground Truth row)
      pairs.json             provenance written by make-pairs (sources, seed, which photo lent each Random
                             its colours, lightness agreement of each method); the server does not need it

``<id>`` is the file's stem and is the same in every folder; ``<method>`` is a folder name of letters, digits,
``_`` and ``-``. PNG and JPEG files are accepted. A method is tested on the ids it shares with ``real/``.

Scanning (:func:`scan_pairs`) happens once, when the server starts. Only regular files whose real location lies
inside ``DIR`` are kept (a symlink that points outside the folder is skipped and reported, as are files that are
not PNG/JPEG images; hidden files are ignored); the server then serves images only by looking up these enumerated
paths, never by interpreting a URL as a path.
"""

from __future__ import annotations

import os
import random
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xchannel.errors import UserError
from xchannel.utils.io import atomic_write, atomic_write_json

FORMAT = "xchannel-turing-pairs/1"
REAL = "real"
RANDOM = "random"
GROUND_TRUTH = "ground_truth"
IMAGE_SIZE = 256  # "Individual images of resolution 256x256 were shown for one second each" (Sec. 3.1)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg"}
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
METHOD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Mean |L_method - L_real| (L in [0, 100]) above which make-pairs warns that a colorization does not seem to be
# of the photo with the same id: a colorizer keeps the input lightness, so honest pairs differ by rounding only.
LIGHTNESS_WARN = 5.0


@dataclass(frozen=True)
class ImageFile:
    """One enumerated image: its resolved location inside the pairs folder and its HTTP content type."""

    path: Path
    content_type: str


@dataclass
class PairsFolder:
    """The images found in a pairs folder: ``real[id]`` and ``fakes[source][id]`` (``source`` is a method
    folder name or ``random``); ``skipped`` lists each file left out and why."""

    root: Path
    real: dict[str, ImageFile]
    fakes: dict[str, dict[str, ImageFile]]
    skipped: list[str] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        """Every folder of recoloured images, ``random`` included (Table 1 reports Random as a row)."""
        return sorted(self.fakes)

    def ids_for(self, source: str) -> list[str]:
        """The ids that have both a real photo and a ``source`` recolouring, sorted."""
        return sorted(set(self.real) & set(self.fakes.get(source, {})))

    def image(self, source: str, image_id: str) -> ImageFile | None:
        """The enumerated file for ``source`` (``real``, ``random`` or a method) and ``image_id``, if any."""
        table = self.real if source == REAL else self.fakes.get(source, {})
        return table.get(image_id)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _scan_images(folder: Path, root: Path, skipped: list[str]) -> dict[str, ImageFile]:
    found: dict[str, ImageFile] = {}
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name.startswith("."):
            continue
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{entry}: not a .png/.jpg/.jpeg file")
            continue
        real = Path(os.path.realpath(entry))
        if not _inside(real, root):
            skipped.append(f"{entry}: resolves to {real}, outside the pairs folder")
            continue
        try:
            st = os.stat(real)
        except OSError as err:
            skipped.append(f"{entry}: cannot stat ({err.strerror})")
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append(f"{entry}: not a regular file")
            continue
        image_id = entry.stem
        if not ID_RE.match(image_id):
            skipped.append(f"{entry}: id {image_id!r} is not made of letters, digits, '_', '-', '.'")
            continue
        if image_id in found:
            skipped.append(f"{entry}: a second file with id {image_id!r} in {folder.name}/")
            continue
        try:
            with Image.open(real) as im:
                fmt = im.format
        except (UnidentifiedImageError, OSError) as err:
            skipped.append(f"{entry}: not a readable image ({err})")
            continue
        if fmt not in CONTENT_TYPES:
            skipped.append(f"{entry}: a {fmt} image; only PNG and JPEG are served")
            continue
        found[image_id] = ImageFile(real, CONTENT_TYPES[fmt])
    return found


def scan_pairs(root: str | os.PathLike) -> PairsFolder:
    """Enumerate a pairs folder (format in the module docstring); raise :class:`UserError` if it is unusable."""
    given = Path(root)
    if not given.is_dir():
        raise UserError(f"{given}: pairs folder not found (expected {REAL}/, {RANDOM}/ and one folder per method)")
    root_real = Path(os.path.realpath(given))
    skipped: list[str] = []
    real: dict[str, ImageFile] | None = None
    fakes: dict[str, dict[str, ImageFile]] = {}
    for sub in sorted(given.iterdir()):
        if sub.name.startswith(".") or not sub.is_dir():
            continue
        sub_real = Path(os.path.realpath(sub))
        if not _inside(sub_real, root_real) or sub_real == root_real:
            skipped.append(f"{sub}/: resolves to {sub_real}, outside the pairs folder")
            continue
        if not METHOD_RE.match(sub.name):
            skipped.append(f"{sub}/: folder name is not made of letters, digits, '_' and '-'")
            continue
        images = _scan_images(sub, root_real, skipped)
        if sub.name == REAL:
            real = images
        else:
            fakes[sub.name] = images
    if not real:
        raise UserError(f"{given}: no images in {given / REAL}/ (the ground-truth photos)")
    folder = PairsFolder(root_real, real, fakes, skipped)
    if not folder.ids_for(RANDOM):
        raise UserError(f"{given}: no images in {given / RANDOM}/ matching {REAL}/: the Random baseline is needed "
                        f"for the attention checks (make-pairs writes it)")
    if not [m for m in folder.methods if folder.ids_for(m)]:
        raise UserError(f"{given}: no method folder shares an image id with {REAL}/")
    return folder


# ----------------------------------------------------------------------------------------------------- make-pairs

def _list_images(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` for the PNG/JPEG files of ``folder``; two files with one stem are an error."""
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        if not ID_RE.match(p.stem):
            raise UserError(f"{p}: the file name (the image id) must be letters, digits, '_', '-', '.'")
        if p.stem in out:
            raise UserError(f"{p}: two images with id {p.stem!r} in {folder} ({out[p.stem].name} and {p.name})")
        out[p.stem] = p
    return out


def _load_fit(path: Path, size: int) -> np.ndarray:
    """Load ``path`` as RGB, resize its shorter side to ``size`` and centre-crop: ``size`` x ``size`` x 3 uint8."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im = ImageOps.fit(im, (size, size), method=Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path}: not a readable image ({err})") from err


def _to_lab(rgb: np.ndarray):
    import torch

    from xchannel.color import rgb_to_lab

    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    return rgb_to_lab(t)


def _lab_to_uint8(lab) -> np.ndarray:
    from xchannel.color import lab_to_rgb

    rgb = lab_to_rgb(lab).clamp(0.0, 1.0)[0].permute(1, 2, 0).numpy()
    return np.round(rgb * 255.0).astype(np.uint8)


def random_recolouring(l_source: np.ndarray, ab_source: np.ndarray) -> np.ndarray:
    """Table 1's Random baseline: the lightness L of ``l_source`` with the ab colours of ``ab_source``.

    Both are H x W x 3 uint8 sRGB images of one size; the result is converted back to sRGB (out-of-gamut colours
    clipped) as H x W x 3 uint8.
    """
    if l_source.shape != ab_source.shape:
        raise ValueError(f"images differ in shape: {l_source.shape} vs {ab_source.shape}")
    lab = _to_lab(l_source)
    lab[:, 1:] = _to_lab(ab_source)[:, 1:]
    return _lab_to_uint8(lab)


def _save_png(path: Path, rgb: np.ndarray) -> None:
    with atomic_write(path, "wb") as f:
        Image.fromarray(rgb, "RGB").save(f, format="PNG")


def make_pairs(real_dir: str | os.PathLike, methods: dict[str, str | os.PathLike], out: str | os.PathLike, *,
               size: int = IMAGE_SIZE, seed: int = 0, ground_truth: bool = False, overwrite: bool = False,
               progress: bool = True) -> dict:
    """Write a pairs folder at ``out`` and return its manifest (also saved as ``out/pairs.json``).

    ``real_dir`` holds the ground-truth photos; ``methods`` maps a method name to a folder of that method's
    colorizations, one per real photo with the same file stem. Every image is resized (shorter side) and
    centre-cropped to ``size`` x ``size`` and written as PNG. ``random/<id>.png`` is made from photo ``<id>``'s
    lightness and the ab channels of a different photo drawn uniformly at random (``seed``), in CIE Lab (D65)
    via :func:`xchannel.color.rgb_to_lab` / :func:`~xchannel.color.lab_to_rgb`. ``ground_truth`` adds the
    ``ground_truth`` control method (the real photo shown against itself).
    """
    from tqdm import tqdm

    real_dir, out = Path(real_dir), Path(out)
    if size < 8:
        raise UserError(f"--size {size}: too small (the paper shows 256x256 images)")
    reals = _list_images(real_dir)
    if len(reals) < 2:
        raise UserError(f"{real_dir}: found {len(reals)} PNG/JPEG image(s); at least 2 are needed (the Random "
                        f"baseline takes its colours from another photo)")
    for name in methods:
        if not METHOD_RE.match(name) or name in (REAL, RANDOM, GROUND_TRUTH):
            raise UserError(f"method name {name!r}: use letters, digits, '_' and '-', and not "
                            f"'{REAL}', '{RANDOM}' or '{GROUND_TRUTH}' (make-pairs writes those)")
    method_files: dict[str, dict[str, Path]] = {}
    for name, folder in methods.items():
        files = _list_images(Path(folder))
        missing = sorted(set(reals) - set(files))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise UserError(f"{folder}: no colorization for {len(missing)} of the {len(reals)} real photos "
                            f"(method {name!r}; missing ids: {shown})")
        method_files[name] = files
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: folder exists and is not empty (pass --overwrite to replace its images)")

    ids = sorted(reals)
    rng = random.Random(seed)
    # A different photo for each id, uniformly among the others: (i + U{1..n-1}) mod n.
    donor = {image_id: ids[(i + rng.randrange(1, len(ids))) % len(ids)] for i, image_id in enumerate(ids)}
    lightness_gap: dict[str, list[float]] = {name: [] for name in methods}
    warnings: list[str] = []
    for image_id in tqdm(ids, desc="make-pairs", unit="photo", disable=not progress):
        rgb = _load_fit(reals[image_id], size)
        _save_png(out / REAL / f"{image_id}.png", rgb)
        if ground_truth:
            _save_png(out / GROUND_TRUTH / f"{image_id}.png", rgb)
        _save_png(out / RANDOM / f"{image_id}.png",
                  random_recolouring(rgb, _load_fit(reals[donor[image_id]], size)))
        l_real = _to_lab(rgb)[:, 0]
        for name, files in method_files.items():
            fake = _load_fit(files[image_id], size)
            gap = float((_to_lab(fake)[:, 0] - l_real).abs().mean())
            lightness_gap[name].append(gap)
            if gap > LIGHTNESS_WARN:
                warnings.append(f"{files[image_id]}: mean |L - L_real| = {gap:.1f} (> {LIGHTNESS_WARN}); "
                                f"is it a colorization of {reals[image_id]}?")
            _save_png(out / name / f"{image_id}.png", fake)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    manifest = {
        "format": FORMAT,
        "size": size,
        "seed": seed,
        "ids": ids,
        "methods": sorted(methods) + [RANDOM] + ([GROUND_TRUTH] if ground_truth else []),
        "sources": {REAL: str(real_dir), **{name: str(folder) for name, folder in methods.items()}},
        "random_ab_from": donor,
        "mean_lightness_gap": {name: float(np.mean(v)) for name, v in lightness_gap.items()},
        "warnings": len(warnings),
    }
    atomic_write_json(out / "pairs.json", manifest)
    return manifest

