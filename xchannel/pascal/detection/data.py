"""Detection data: VOC images scaled and mirrored with their ground truth and proposals, the training sampler, and
where the proposals come from (selective search, a user's per-split files, or none for the RPN)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from xchannel.data.images import Skipped
from xchannel.data.voc import VOCDetection, boxes_to_xyxy
from xchannel.errors import UserError
from xchannel.pascal import proposals as props
from xchannel.pascal.detection.boxes import scale_for
from xchannel.pascal.detection.config import Config
from xchannel.utils.config import to_dict

def _resize(image: torch.Tensor, scale: float) -> torch.Tensor:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    h, w = image.shape[-2:]
    size = [max(1, round(h * scale)), max(1, round(w * scale))]
    if size == [h, w]:
        return image
    return TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)


class DetectionImages(Dataset):
    """VOC images with their (scaled, optionally mirrored) ground truth and proposals.

    Items are requested as ``(index, target_size, max_size, mirror)`` tuples (see :class:`TrainBatches`) or a
    plain index (the test scale). An item: ``{"image" (uint8 3 x h x w, resized), "boxes" (continuous corners in
    the resized image; non-difficult objects only when ``train``), "labels" (1-based), "proposals" (resized
    coordinates), "scale", "size" (original w, h), "id", "index"}`` or a :class:`Skipped` record.
    """

    def __init__(self, voc: VOCDetection, proposals: dict[str, np.ndarray] | None, *, train: bool,
                 scale: int, max_size: int, min_size: float, max_proposals: int):
        self.voc = voc
        self.proposals = proposals
        self.train = train
        self.scale, self.max_size = scale, max_size
        self.min_size, self.max_proposals = min_size, max_proposals

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, key: int | tuple[int, int, int, bool]) -> dict | Skipped:
        from torchvision.transforms.functional import pil_to_tensor

        index, target, max_size, mirror = (key, self.scale, self.max_size, False) if isinstance(key, int) else key
        img = self.voc.load_image(index)  # stored pixels, checked against the annotation's <size>
        if isinstance(img, Skipped):
            return img

        image = pil_to_tensor(img)
        h, w = image.shape[-2:]
        tgt = self.voc.target(index)
        boxes = boxes_to_xyxy(tgt["boxes"]).float()
        labels = tgt["labels"] + 1
        difficult = tgt["difficult"]
        if self.train:
            boxes, labels, difficult = boxes[~difficult], labels[~difficult], difficult[~difficult]
        image_id = self.voc.ids[index]
        if self.proposals is not None:
            raw = self.proposals.get(image_id, np.zeros((0, 4), np.float32))
            p = torch.from_numpy(props.filter_proposals(raw, w, h, self.min_size, self.max_proposals))
        else:
            p = torch.zeros((0, 4))
        s = scale_for(w, h, target, max_size)
        image = _resize(image, s)
        boxes, p = boxes * s, p * s
        if mirror:
            W = image.shape[-1]
            image = image.flip(-1)
            boxes = torch.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0], boxes[:, 3]], dim=1)
            p = torch.stack([W - p[:, 2], p[:, 1], W - p[:, 0], p[:, 3]], dim=1) if len(p) else p
        return {"image": image.contiguous(), "boxes": boxes.reshape(-1, 4), "labels": labels,
                "difficult": difficult, "proposals": p.reshape(-1, 4).float(), "scale": s, "size": (w, h),
                "id": image_id, "index": index}


class TrainBatches(Sampler):
    """Minibatches of ``images_per_batch`` item keys for iterations ``start .. iterations - 1``, reproducible
    from ``seed`` alone (so a resumed run sees the same images): the images are visited in a fresh random
    order each epoch; each gets a scale drawn from ``scales`` and, with ``mirror``, a flip with probability
    1/2."""

    def __init__(self, indices: Sequence[int], *, iterations: int, start: int, images_per_batch: int,
                 scales: Sequence[int], max_size: int, mirror: bool, seed: int):
        if not indices:
            raise UserError("no training image has a non-difficult object: nothing to train on")
        self.indices = list(indices)
        self.iterations, self.start, self.ipb = iterations, start, images_per_batch
        self.scales, self.max_size, self.mirror, self.seed = list(scales), max_size, mirror, seed
        self._perm: tuple[int, list[int]] | None = None

    def _position(self, p: int) -> tuple[int, int, int, bool]:
        n = len(self.indices)
        epoch, k = divmod(p, n)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(n, generator=g).tolist())
        g = torch.Generator().manual_seed(self.seed * 7_919 + 104_729 * p + 1)
        scale = self.scales[int(torch.randint(len(self.scales), (), generator=g))]
        flip = bool(self.mirror and torch.rand((), generator=g) < 0.5)
        return self.indices[self._perm[1][k]], scale, self.max_size, flip

    def __iter__(self) -> Iterator[list[tuple[int, int, int, bool]]]:
        for it in range(self.start, self.iterations):
            yield [self._position(it * self.ipb + j) for j in range(self.ipb)]

    def __len__(self) -> int:
        return max(0, self.iterations - self.start)


def default_cache_dir() -> Path:
    """``$XCHANNEL_CACHE_DIR/proposals``, or ``~/.cache/xchannel/proposals``."""
    base = os.environ.get("XCHANNEL_CACHE_DIR") or str(Path.home() / ".cache" / "xchannel")
    return Path(base) / "proposals"


def proposals_for(cfg: Config, voc: VOCDetection, which: str) -> tuple[dict[str, np.ndarray] | None,
                                                                          dict[str, Any]]:
    """The proposals of ``voc``'s images (None for the RPN) and a record of where they came from."""
    p = cfg.proposals
    if p.method == "rpn":
        return None, {"method": "rpn"}
    if p.method == "file":
        file = p.train_file if which == "train" else p.test_file
        boxes = props.load_proposal_file(file, voc.ids, p.box_format or None)
        return boxes, {"method": "file", "file": str(file), "box_format": p.box_format or "default"}
    cache_dir = Path(p.cache_dir) if p.cache_dir else default_cache_dir()
    where = hashlib.sha256(str(voc.voc_root.resolve()).encode()).hexdigest()[:8]  # one cache per data set
    tag = f"{voc.voc_root.name}_{voc.split}_{where}"
    boxes, stats = props.compute_selective_search(list(zip(voc.ids, map(str, voc.images))), cache_dir=cache_dir,
                                                  tag=tag, params=p.selective_search, workers=p.workers,
                                                  progress=cfg.progress)
    return boxes, {"method": "selective_search", "params": to_dict(p.selective_search), **stats.to_dict()}


def proposal_recall(voc: VOCDetection, proposals: dict[str, np.ndarray], min_size: float,
                    max_proposals: int, iou: float = 0.5) -> dict[str, float]:
    """Share of non-difficult ground-truth boxes that some proposal overlaps with IoU >= ``iou``, and the mean
    number of proposals per image (after :func:`~xchannel.pascal.proposals.filter_proposals`)."""
    from torchvision.ops import box_iou

    covered = total = n_props = 0
    for k, image_id in enumerate(voc.ids):
        w, h = voc.annotations[k]["size"][:2]
        p = torch.from_numpy(props.filter_proposals(proposals.get(image_id, np.zeros((0, 4))), w, h, min_size,
                                                    max_proposals))
        n_props += len(p)
        t = voc.target(k)
        gt = boxes_to_xyxy(t["boxes"][~t["difficult"]]).float()
        total += len(gt)
        if len(gt) and len(p):
            covered += int((box_iou(gt, p).max(dim=1).values >= iou).sum())
    return {"recall_at_iou_0.5": covered / total if total else float("nan"),
            "mean_proposals": n_props / max(len(voc), 1), "gt_boxes": total}


__all__ = ["DetectionImages", "TrainBatches", "default_cache_dir", "proposal_recall", "proposals_for"]
