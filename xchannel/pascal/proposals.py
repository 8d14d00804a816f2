"""Region proposals for Fast R-CNN: selective search computed once and cached, or a user's proposal file.

Fast R-CNN (Girshick, ICCV 2015) classifies and refines a fixed set of class-agnostic boxes per image. The
protocol the paper followed for its Table 2 detection column (Krähenbühl et al., ICLR 2016) uses the selective
search boxes that R-CNN computed (Girshick et al., CVPR 2014; released as ``selective_search_data/voc_2007_
{trainval,test}.mat``), at most 2000 per image. This module computes those boxes, reads and writes R-CNN's file
format; the learned alternative (a region proposal network trained jointly) lives in
:mod:`xchannel.pascal.detection`.

Box convention
--------------
Every box returned here is float32 ``(x1, y1, x2, y2)`` in **0-based continuous pixel corners** (torchvision's
convention): a box covering the pixel columns ``i .. j`` (0-based, inclusive) has ``x1 = i`` and ``x2 = j + 1``, so
its width is ``x2 - x1``. A VOC devkit box ``(xmin, ymin, xmax, ymax)`` (1-based, inclusive) is
``(xmin - 1, ymin - 1, xmax, ymax)`` (:func:`xchannel.data.voc.boxes_to_xyxy`).

Selective search
----------------
:func:`selective_search` runs OpenCV contrib's implementation (``cv2.ximgproc.segmentation``): the image is
over-segmented with Felzenszwalb's graph segmentation in several colour spaces, regions are merged hierarchically
by colour, texture, size and fill similarities, and every merged region's bounding box is a proposal. OpenCV ranks
the boxes with a random component (as the original does), so their order may differ between runs.

``mode="rcnn"`` (the default) is R-CNN's ``selective_search_boxes.m`` in fast mode (``rbgirshick/rcnn``,
``selective_search/selective_search_boxes.m``, called with ``fast_mode = true`` and ``im_width = 500``):

* the image resized to 500 pixels wide (``imresize(im, [NaN im_width])``; here bicubic with antialiasing, as
  ``imresize``), boxes scaled back with ``(boxes - 1) * scale + 1`` in 1-based coordinates;
* colour spaces HSV and Lab (``colorTypes(1:2)``), Felzenszwalb k = 50 and 100 (``ks(1:2)``) with ``minSize = k``
  and sigma 0.8, the two merge strategies colour+texture+size+fill and texture+size+fill
  (``simFunctionHandles(1:2)``), built from OpenCV's components (OpenCV's own ``switchToSelectiveSearchFast``
  uses three k values and a fixed minimum size of 100, so it is not that search);
* boxes with a side below 20 pixels at the resized scale removed (``FilterBoxesWidth(boxes, 20)``), duplicates
  removed (``BoxRemoveDuplicates``).

``mode="fast"``, ``"quality"``, ``"single"`` are OpenCV's presets (``base_k``, ``inc_k``, ``sigma``, optionally
on images shrunk to ``max_side``).

:func:`compute_selective_search` runs it over a list of images with a cache: one ``.npz`` file per image set and
parameter set, named ``selective_search_<tag>_<key>.npz`` where ``key`` hashes the parameters. The file stores,
per image id, the raw boxes (in rank order) and the sha256 of the image file; an image whose file changed is
recomputed. The cache is written atomically, every ``save_every`` new images and at the end, so an interrupted run
keeps what it computed. Fast R-CNN's post-processing (:func:`filter_proposals`: clip, drop duplicates and boxes
with a side under 2 px, keep the first 2000, as py-faster-rcnn's ``selective_search_roidb``) is applied when the
boxes are used, so changing it does not invalidate the cache. :func:`save_rcnn_mat` writes one image set's boxes
as R-CNN's release files, so a run's trainval and test proposals can be reused (``proposals.train_file`` /
``test_file``) or compared with R-CNN's own.

User proposal files (:func:`load_proposal_file`)
------------------------------------------------
``.npz``
    Either one array per image id (key = image id, value N x 4), or the cache layout (arrays ``ids`` (M strings),
    ``offsets`` (M + 1 int64; image k's boxes are rows ``offsets[k]:offsets[k+1]``) and ``boxes`` (total x 4)).
``.pt`` / ``.pth``
    A dict image id -> N x 4 tensor or array (loaded with ``weights_only=True``).
``.mat``
    The R-CNN / Fast R-CNN release format, one file per image set (``selective_search_data/voc_2007_trainval.mat``
    and ``voc_2007_test.mat``): cell arrays ``images`` (ids) and ``boxes`` (each N x 4 doubles as ``y1 x1 y2 x2``,
    1-based, inclusive), as py-faster-rcnn's ``_load_selective_search_roidb`` reads them
    (``raw_data[i][:, (1, 0, 3, 2)] - 1``).

The coordinates of ``.npz`` and ``.pt`` files are given by ``box_format``:

* ``"xyxy"`` (default): 0-based continuous corners, as above;
* ``"xyxy_inclusive"``: 0-based, pixel-inclusive (``x2`` = last pixel; the layout of py-faster-rcnn's roidb);
* ``"voc"``: 1-based, pixel-inclusive (the devkit's annotation layout);
* ``"rcnn"``: ``y1 x1 y2 x2``, 1-based, inclusive (the ``.mat`` layout; the default for ``.mat`` files).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xchannel.errors import UserError
from xchannel.utils.io import atomic_write, safe_torch_load, sha256_file

#: Bumped when the computation of cached proposals changes (invalidates every cache file).
CACHE_VERSION = 2
BOX_FORMATS = ("xyxy", "xyxy_inclusive", "voc", "rcnn")
#: Fast R-CNN keeps the first 2000 selective-search boxes of an image (``top_k`` of its roidb).
DEFAULT_MAX_PROPOSALS = 2000
SEARCH_MODES = ("rcnn", "fast", "quality", "single")


@dataclass(frozen=True)
class SelectiveSearchParams:
    """Parameters of one selective search run (they key the cache); see the module docstring.

    ``mode``: ``"rcnn"`` (R-CNN's fast mode: ``ks``, ``sigma``, ``width``, ``min_box``) or OpenCV's ``"fast"``,
    ``"quality"``, ``"single"`` (``base_k``, ``inc_k``, ``sigma``, ``max_side``: 0 runs on the image as stored,
    a positive value first shrinks images whose longer side exceeds it).
    """

    mode: Literal["rcnn", "fast", "quality", "single"] = "rcnn"
    ks: tuple[int, ...] = (50, 100)
    sigma: float = 0.8
    width: int = 500
    min_box: int = 20
    base_k: int = 150
    inc_k: int = 150
    max_side: int = 0

    def validate(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise UserError(f"selective search: mode must be one of {', '.join(SEARCH_MODES)}, got {self.mode!r}")
        if not self.ks or min(self.ks) <= 0 or self.base_k <= 0 or self.inc_k <= 0 or not self.sigma > 0:
            raise UserError(f"selective search: ks, base_k, inc_k and sigma must be > 0, got {list(self.ks)}, "
                            f"{self.base_k}, {self.inc_k}, {self.sigma}")
        if self.max_side < 0 or self.width < 0 or self.min_box < 0:
            raise UserError(f"selective search: max_side, width and min_box must be >= 0, got {self.max_side}, "
                            f"{self.width}, {self.min_box}")

    def meta(self) -> dict[str, Any]:
        """The parameters and the cache version as stored in a cache file (JSON types)."""
        return json.loads(json.dumps({"version": CACHE_VERSION, **asdict(self)}, sort_keys=True))

    def key(self) -> str:
        """12 hex digits identifying the parameters and the cache version."""
        return hashlib.sha256(json.dumps(self.meta(), sort_keys=True).encode()).hexdigest()[:12]


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise UserError("selective search needs OpenCV with the contrib modules: "
                        "pip install opencv-contrib-python-headless") from err
    if not hasattr(cv2, "ximgproc"):
        raise UserError("selective search needs OpenCV's contrib modules (cv2.ximgproc); install "
                        "opencv-contrib-python-headless instead of opencv-python")
    return cv2


def _rcnn_search(rgb: np.ndarray, params: SelectiveSearchParams, cv2: Any) -> np.ndarray:
    """R-CNN's fast-mode selective search (module docstring): 0-based continuous corners in the input's pixels."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = 1.0
    if params.width and w != params.width:  # selective_search_boxes.m: imresize(im, [NaN im_width])
        scale = w / params.width
        rgb = np.asarray(Image.fromarray(rgb).resize((params.width, max(1, round(h / scale))),
                                                     Image.Resampling.BICUBIC))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    seg = cv2.ximgproc.segmentation
    ss = seg.createSelectiveSearchSegmentation()
    ss.setBaseImage(bgr)
    ss.clearImages()
    ss.clearGraphSegmentations()
    ss.clearStrategies()
    ss.addImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV))
    ss.addImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab))
    for k in params.ks:  # minSize = k, as selective_search_boxes.m sets it
        ss.addGraphSegmentation(seg.createGraphSegmentation(params.sigma, float(k), int(k)))
    ss.addStrategy(seg.createSelectiveSearchSegmentationStrategyMultiple(
        seg.createSelectiveSearchSegmentationStrategyColor(), seg.createSelectiveSearchSegmentationStrategyTexture(),
        seg.createSelectiveSearchSegmentationStrategySize(), seg.createSelectiveSearchSegmentationStrategyFill()))
    ss.addStrategy(seg.createSelectiveSearchSegmentationStrategyMultiple(
        seg.createSelectiveSearchSegmentationStrategyTexture(), seg.createSelectiveSearchSegmentationStrategySize(),
        seg.createSelectiveSearchSegmentationStrategyFill()))
    rects = np.asarray(ss.process(), dtype=np.float64).reshape(-1, 4)
    # 1-based, pixel-inclusive (x1 y1 x2 y2) at the resized scale, as the MATLAB code holds them
    b = np.concatenate([rects[:, :2] + 1, rects[:, :2] + rects[:, 2:]], axis=1)
    keep = ((b[:, 2] - b[:, 0] + 1) >= params.min_box) & ((b[:, 3] - b[:, 1] + 1) >= params.min_box)
    b = b[keep]
    if len(b):
        _, first = np.unique(b, axis=0, return_index=True)
        b = b[np.sort(first)]
    if scale != 1.0:
        b = (b - 1) * scale + 1
    out = b - np.array([1.0, 1.0, 0.0, 0.0])
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out.astype(np.float32)


def selective_search(rgb: np.ndarray, params: SelectiveSearchParams = SelectiveSearchParams()) -> np.ndarray:
    """Selective search boxes of one H x W x 3 uint8 RGB image: float32 N x 4, 0-based continuous corners, in
    OpenCV's rank order (see the module docstring). OpenCV returns ``(x, y, w, h)`` covering pixels ``x ..
    x + w - 1``, i.e. the corners ``(x, y, x + w, y + h)``."""
    cv2 = _import_cv2()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"selective_search expects an H x W x 3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    if params.mode == "rcnn":
        return _rcnn_search(rgb, params, cv2)
    h, w = rgb.shape[:2]
    scale = 1.0
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    if params.max_side and max(h, w) > params.max_side:
        scale = params.max_side / max(h, w)
        bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(bgr)
    if params.mode == "fast":
        ss.switchToSelectiveSearchFast(params.base_k, params.inc_k, params.sigma)
    elif params.mode == "quality":
        ss.switchToSelectiveSearchQuality(params.base_k, params.inc_k, params.sigma)
    else:
        ss.switchToSingleStrategy()
    rects = np.asarray(ss.process(), dtype=np.float64).reshape(-1, 4)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    if scale != 1.0:
        boxes = boxes / scale
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes.astype(np.float32)


def filter_proposals(boxes: np.ndarray, width: int, height: int, min_size: float = 2.0,
                     max_proposals: int = DEFAULT_MAX_PROPOSALS) -> np.ndarray:
    """Fast R-CNN's proposal clean-up: clip to the image, drop exact duplicates (keeping the first occurrence,
    so the rank order survives) and boxes with a side shorter than ``min_size`` pixels, keep the first
    ``max_proposals`` (0: all)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    if len(b):
        _, first = np.unique(b, axis=0, return_index=True)
        b = b[np.sort(first)]
    keep = ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)
    b = b[keep]
    return b[:max_proposals] if max_proposals > 0 else b


# --------------------------------------------------------------------------------------------------------------
# The cache


def cache_path(cache_dir: str | os.PathLike, tag: str, params: SelectiveSearchParams) -> Path:
    """``<cache_dir>/selective_search_<tag>_<key>.npz`` (``tag`` names the image set, e.g. ``VOC2007_test``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in tag)
    return Path(cache_dir) / f"selective_search_{safe}_{params.key()}.npz"


def _pack(entries: Mapping[str, tuple[np.ndarray, str]]) -> dict[str, np.ndarray]:
    ids = sorted(entries)
    counts = [len(entries[i][0]) for i in ids]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    boxes = np.concatenate([entries[i][0] for i in ids]).astype(np.float32) if ids else np.zeros((0, 4), np.float32)
    return {"ids": np.asarray(ids, dtype=str), "offsets": offsets, "boxes": boxes.reshape(-1, 4),
            "image_sha256": np.asarray([entries[i][1] for i in ids], dtype=str)}


def _unpack(data: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    ids, offsets, boxes = data["ids"], np.asarray(data["offsets"]), np.asarray(data["boxes"])
    if offsets.shape != (len(ids) + 1,) or boxes.ndim != 2 or boxes.shape[1] != 4 or offsets[-1] != len(boxes) \
            or (np.diff(offsets) < 0).any():
        raise UserError(f"{where}: inconsistent ids / offsets / boxes arrays (offsets must have len(ids) + 1 "
                        f"non-decreasing entries ending at the number of boxes, boxes must be N x 4)")
    return {str(i): boxes[offsets[k]:offsets[k + 1]] for k, i in enumerate(ids)}


def _read_cache(path: Path, params: SelectiveSearchParams) -> dict[str, tuple[np.ndarray, str]]:
    """The cached ``id -> (boxes, image sha256)``; an unreadable or foreign file is ignored with a warning."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["params"]))
            if meta != params.meta():
                raise ValueError(f"parameters {meta} differ")
            boxes = _unpack(data, str(path))
            shas = [str(s) for s in data["image_sha256"]]
    except Exception as err:  # noqa: BLE001 - a cache: any problem means recompute
        print(f"warning: {path}: unusable proposal cache ({type(err).__name__}: {err}); recomputing",
              file=sys.stderr)
        return {}
    return {i: (b, s) for (i, b), s in zip(boxes.items(), shas)}


def _write_cache(path: Path, params: SelectiveSearchParams, entries: Mapping[str, tuple[np.ndarray, str]]) -> None:
    with atomic_write(path, "wb") as f:
        np.savez(f, params=np.asarray(json.dumps(params.meta(), sort_keys=True)),
                 **_pack(entries))


def _search_file(args: tuple[str, SelectiveSearchParams]) -> np.ndarray:
    """Worker: decode one image (robustly) and run selective search on it."""
    from xchannel.data.images import load_rgb

    path, params = args
    return _module_search()(np.asarray(load_rgb(path, upright=False)), params)  # the stored pixels, as VOC's


def _module_search() -> Callable[[np.ndarray, SelectiveSearchParams], np.ndarray]:
    # Looked up at call time, so that a wrapped xchannel.pascal.proposals.selective_search is used.
    return sys.modules[__name__].selective_search


@dataclass
class ProposalStats:
    """What :func:`compute_selective_search` did: images served from the cache, computed, and skipped (bad
    image files, with their reasons), and the seconds spent computing."""

    cached: int = 0
    computed: int = 0
    skipped: dict[str, str] | None = None
    seconds: float = 0.0
    cache_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"cached": self.cached, "computed": self.computed, "skipped": dict(self.skipped or {}),
                "seconds": round(self.seconds, 3), "cache_file": self.cache_file}


def compute_selective_search(images: Sequence[tuple[str, str | os.PathLike]], *, cache_dir: str | os.PathLike | None,
                             tag: str, params: SelectiveSearchParams = SelectiveSearchParams(), workers: int = 1,
                             save_every: int = 200, progress: bool = True) -> tuple[dict[str, np.ndarray],
                                                                                     ProposalStats]:
    """Selective search boxes of ``images`` (``(image id, file)`` pairs), served from / added to the cache.

    Returns ``(id -> raw boxes in rank order, stats)``. A bad image file (see :func:`xchannel.data.images.load_rgb`)
    is skipped and counted (its entry is an empty 0 x 4 array, never cached). ``workers > 1`` runs the searches in
    that many processes. ``cache_dir=None`` disables caching.
    """
    from xchannel.data.images import BadImageError

    params.validate()
    stats = ProposalStats(skipped={})
    path = cache_path(cache_dir, tag, params) if cache_dir is not None else None
    entries = _read_cache(path, params) if path is not None else {}
    stats.cache_file = None if path is None else str(path)
    out: dict[str, np.ndarray] = {}
    todo: list[tuple[str, str, str]] = []
    for image_id, file in images:
        file = str(file)
        try:
            digest = sha256_file(file)
        except OSError as err:
            stats.skipped[image_id] = f"{file}: {err.strerror or err}"
            out[image_id] = np.zeros((0, 4), np.float32)
            continue
        hit = entries.get(image_id)
        if hit is not None and hit[1] == digest:
            out[image_id] = hit[0]
            stats.cached += 1
        else:
            todo.append((image_id, file, digest))
    if not todo:
        return out, stats

    from tqdm import tqdm

    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"selective search {tag}", unit="img", disable=not progress or None,
               file=sys.stderr)
    dirty = 0

    def record(image_id: str, digest: str, result: np.ndarray | BadImageError) -> None:
        nonlocal dirty
        if isinstance(result, BadImageError):
            stats.skipped[image_id] = str(result)
            out[image_id] = np.zeros((0, 4), np.float32)
        else:
            out[image_id] = result
            entries[image_id] = (result, digest)
            stats.computed += 1
            dirty += 1
            if path is not None and dirty >= save_every:
                _write_cache(path, params, entries)
                dirty = 0
        bar.update(1)

    try:
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [(i, d, pool.submit(_search_file, (f, params))) for i, f, d in todo]
                for image_id, digest, fut in futures:
                    try:
                        record(image_id, digest, fut.result())
                    except BadImageError as err:
                        record(image_id, digest, err)
        else:
            for image_id, file, digest in todo:
                try:
                    result: np.ndarray | BadImageError = _search_file((file, params))
                except BadImageError as err:
                    result = err
                record(image_id, digest, result)
    finally:
        bar.close()
        if path is not None and dirty:
            _write_cache(path, params, entries)
        stats.seconds = time.perf_counter() - start
    return out, stats


# --------------------------------------------------------------------------------------------------------------
# User files


def convert_box_format(boxes: np.ndarray, box_format: str, where: str = "proposals") -> np.ndarray:
    """Boxes in ``box_format`` (see the module docstring) -> float32 0-based continuous ``(x1, y1, x2, y2)``."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4), np.float32)
    if b.ndim != 2 or b.shape[1] != 4:
        raise UserError(f"{where}: boxes must be N x 4, got shape {tuple(b.shape)}")
    if not np.isfinite(b).all():
        raise UserError(f"{where}: boxes contain NaN or infinite values")
    if box_format == "rcnn":
        b = b[:, [1, 0, 3, 2]]
    if box_format in ("rcnn", "voc"):
        b = b - np.array([1.0, 1.0, 0.0, 0.0])
    elif box_format == "xyxy_inclusive":
        b = b + np.array([0.0, 0.0, 1.0, 1.0])
    elif box_format != "xyxy":
        raise UserError(f"{where}: unknown box format {box_format!r}; known: {', '.join(BOX_FORMATS)}")
    bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise UserError(f"{where}: box {k} has x2 < x1 or y2 < y1 after reading it as {box_format!r}: "
                        f"{np.asarray(boxes)[k].tolist()}")
    return b.astype(np.float32)


def _read_mat(path: Path) -> tuple[dict[str, Any], str]:
    try:
        from scipy.io import loadmat
    except ImportError as err:  # pragma: no cover - scipy comes with scikit-learn
        raise UserError(f"{path}: reading .mat proposal files needs scipy") from err
    try:
        mat = loadmat(str(path))
    except Exception as err:  # noqa: BLE001 - report any decoding failure with the file name
        raise UserError(f"{path}: not a readable MATLAB file ({type(err).__name__}: {err})") from None
    if "images" not in mat or "boxes" not in mat:
        raise UserError(f"{path}: a .mat proposal file needs the cell arrays 'images' and 'boxes' (R-CNN's "
                        f"selective_search_data layout); found {sorted(k for k in mat if not k.startswith('__'))}")
    ids = [str(np.asarray(x).ravel()[0]) for x in np.asarray(mat["images"], dtype=object).ravel()]
    boxes = [np.asarray(b) for b in np.asarray(mat["boxes"], dtype=object).ravel()]
    if len(ids) != len(boxes):
        raise UserError(f"{path}: {len(ids)} images but {len(boxes)} box arrays")
    return dict(zip(ids, boxes)), "rcnn"


def load_proposal_file(path: str | os.PathLike, image_ids: Sequence[str] | None = None,
                       box_format: str | None = None) -> dict[str, np.ndarray]:
    """A user's proposals (see the module docstring for the formats) -> ``id -> float32 N x 4`` boxes in 0-based
    continuous corners. With ``image_ids``, every listed image must be present (an error names the missing ones);
    extra images in the file are ignored. ``box_format`` None: ``"rcnn"`` for ``.mat``, else ``"xyxy"``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: proposal file not found")
    suffix = path.suffix.lower()
    if suffix == ".mat":
        raw, default = _read_mat(path)
    elif suffix == ".npz":
        default = "xyxy"
        try:
            with np.load(path, allow_pickle=False) as data:
                if {"ids", "offsets", "boxes"} <= set(data.files):
                    raw = dict(_unpack(data, str(path)))
                else:
                    raw = {k: np.asarray(data[k]) for k in data.files}
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001
            raise UserError(f"{path}: not a readable .npz proposal file ({type(err).__name__}: {err})") from None
    elif suffix in (".pt", ".pth"):
        default = "xyxy"
        obj = safe_torch_load(path)
        if not isinstance(obj, Mapping):
            raise UserError(f"{path}: expected a dict image id -> N x 4 boxes, got {type(obj).__name__}")
        raw = {str(k): np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in obj.items()}
    else:
        raise UserError(f"{path}: unknown proposal file type {suffix!r}; use .npz, .pt/.pth or .mat")
    fmt = box_format or default
    if fmt not in BOX_FORMATS:
        raise UserError(f"{path}: unknown box format {fmt!r}; known: {', '.join(BOX_FORMATS)}")
    if image_ids is not None:
        missing = [i for i in image_ids if i not in raw]
        if missing:
            raise UserError(f"{path}: no proposals for {len(missing)} of {len(image_ids)} images, e.g. "
                            f"{', '.join(missing[:5])}")
        wanted = list(image_ids)
    else:
        wanted = list(raw)
    return {i: convert_box_format(raw[i], fmt, f"{path}, image {i}") for i in wanted}


def save_rcnn_mat(path: str | os.PathLike, ids: Sequence[str], proposals: Mapping[str, np.ndarray]) -> None:
    """Write one image set's boxes (0-based continuous corners) as R-CNN's release file, atomically: ``images``
    (N x 1 cell of id strings, in ``ids`` order) and ``boxes`` (1 x N cell of K x 4 doubles ``y1 x1 y2 x2``,
    1-based, pixel-inclusive). :func:`load_proposal_file` reads it back exactly (integer corners)."""
    from scipy.io import savemat

    images = np.empty((len(ids), 1), dtype=object)
    boxes = np.empty((1, len(ids)), dtype=object)
    for k, image_id in enumerate(ids):
        b = np.asarray(proposals.get(image_id, np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
        images[k, 0] = str(image_id)
        boxes[0, k] = np.stack([b[:, 1] + 1, b[:, 0] + 1, b[:, 3], b[:, 2]], axis=1) if len(b) else np.zeros((0, 4))
    with atomic_write(path, "wb") as f:
        savemat(f, {"images": images, "boxes": boxes})


def save_proposal_file(path: str | os.PathLike, proposals: Mapping[str, np.ndarray]) -> None:
    """Write ``id -> N x 4`` boxes (0-based continuous corners) in the ``.npz`` cache layout, atomically."""
    packed = _pack({i: (np.asarray(b, np.float32).reshape(-1, 4), "") for i, b in proposals.items()})
    packed.pop("image_sha256")
    with atomic_write(path, "wb") as f:
        np.savez(f, **packed)


__all__ = ["BOX_FORMATS", "CACHE_VERSION", "DEFAULT_MAX_PROPOSALS", "ProposalStats", "SEARCH_MODES",
           "SelectiveSearchParams", "cache_path", "compute_selective_search", "convert_box_format",
           "filter_proposals", "load_proposal_file", "save_proposal_file", "save_rcnn_mat", "selective_search"]
