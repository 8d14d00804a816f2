"""The Semantic Boundaries Dataset (Hariharan et al., ICCV 2011) in its release layout, and the segmentation splits
built from it: the data of the authors' Table 2 segmentation runs.

Layout (``benchmark_RELEASE/dataset``): ``img/<id>.jpg``, ``cls/<id>.mat`` (MATLAB files holding the struct
``GTcls`` whose ``Segmentation`` field is the H x W map of class indices 0..20, no void), ``train.txt`` and
``val.txt``. SBD's images are VOC2011 images; its ``train`` list is the authors' ``voc2011bh_segtrain``, and the
VOC2011 segmentation ``val`` images outside it are their validation set ``seg11valid`` (:func:`seg11valid_ids`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from xchannel.data.images import BadImageError, Skipped, load_rgb
from xchannel.data.voc import IGNORE_INDEX, VOC_CLASSES, image_mask_tensors, load_mask, read_image_set, resolve_root
from xchannel.errors import UserError


def load_sbd_mask(path: Path) -> np.ndarray:
    """SBD's ``cls/<id>.mat``: ``GTcls.Segmentation`` (H x W class indices 0..20)."""
    from scipy.io import loadmat

    if not path.is_file():
        raise UserError(f"{path}: SBD mask not found")
    try:
        mat = loadmat(str(path))
        seg = np.asarray(mat["GTcls"][0]["Segmentation"][0], dtype=np.int64)
    except (KeyError, IndexError, ValueError, OSError, NotImplementedError) as err:
        raise UserError(f"{path}: not an SBD class mask (GTcls.Segmentation): {type(err).__name__}: {err}") from None
    bad = (seg > len(VOC_CLASSES)) & (seg != IGNORE_INDEX) | (seg < 0)
    if bad.any():
        raise UserError(f"{path}: mask values {sorted(set(np.unique(seg[bad]).tolist()))[:10]} are not class indices")
    return seg.astype(np.uint8)


def read_sbd_list(sbd_root: Path, split: str) -> list[str]:
    """The ids of SBD's ``<split>.txt`` (``train`` or ``val``), checked to exist."""
    path = Path(sbd_root) / f"{split}.txt"
    if not path.is_file():
        raise UserError(f"{path}: SBD image list not found (SBD's dataset folder holds img/, cls/, train.txt, "
                        f"val.txt)")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]

class SegmentationItems(Dataset):
    """Items ``{"image", "mask", "index", "id", "path"}`` of ``ids``; a subclass says where each id's image is
    (:meth:`image_path`) and reads its mask (:meth:`mask`)."""

    def __init__(self, ids: list[str], transforms: Any = None) -> None:
        self.ids = ids
        self.transforms = transforms

    def image_path(self, i: str) -> Path:
        raise NotImplementedError

    def mask(self, i: str) -> np.ndarray:
        raise NotImplementedError

    def files(self) -> list[tuple[str, Path]]:
        """(id, image path) of every item: the images of the rescaling."""
        return [(i, self.image_path(i)) for i in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict | Skipped:
        i = self.ids[index]
        path = self.image_path(i)
        try:
            img = load_rgb(path, upright=False)  # the stored pixels, as the masks were made on them
        except BadImageError as err:
            return Skipped(index, err.path, err.reason)
        mask = self.mask(i)
        if mask.shape != (img.height, img.width):
            raise UserError(f"mask of {i} is {mask.shape[1]}x{mask.shape[0]} but {path} is {img.width}x{img.height}")
        if self.transforms is not None:
            image, mask_t = self.transforms(img, Image.fromarray(mask, "L"))
        else:
            image, mask_t = image_mask_tensors(img, mask)
        return {"image": image, "mask": mask_t, "index": index, "id": i, "path": str(path)}


class SBDSegmentation(SegmentationItems):
    """SBD in its release layout: ``<sbd_root>/<split>.txt`` ids, ``img/<id>.jpg`` images and ``cls/<id>.mat``
    masks (``GTcls.Segmentation``). ``split="train"`` is the authors' training set (``voc2011bh_segtrain``)."""

    def __init__(self, sbd_root: str | Path, split: str = "train", transforms: Any = None) -> None:
        self.sbd = Path(sbd_root)
        super().__init__(read_sbd_list(self.sbd, split), transforms)
        missing = [i for i in self.ids if not (self.sbd / "img" / f"{i}.jpg").is_file()
                   or not (self.sbd / "cls" / f"{i}.mat").is_file()]
        if missing:
            raise UserError(f"{self.sbd}: {len(missing)} image(s) of {split}.txt lack img/<id>.jpg or cls/<id>.mat, "
                            f"e.g. {', '.join(missing[:5])}")
        self.counts = {"sbd_" + split: len(self.ids), "total": len(self.ids)}

    def image_path(self, i: str) -> Path:
        return self.sbd / "img" / f"{i}.jpg"

    def mask(self, i: str) -> np.ndarray:
        return load_sbd_mask(self.sbd / "cls" / f"{i}.mat")


class SBDAugmented(SegmentationItems):
    """The SBD-augmented training set: (SBD train ∪ SBD val ∪ VOC``year`` seg train) minus VOC``year`` seg val.

    ``sbd_root`` is SBD's ``dataset`` folder (``img/``, ``cls/``, ``train.txt``, ``val.txt``). Masks come from
    VOC's ``SegmentationClass`` PNG where one exists (with its void borders) and from SBD's ``cls/<id>.mat``
    otherwise; images from VOC's ``JPEGImages``, else SBD's ``img/``.
    """

    def __init__(self, voc_root: str | Path, sbd_root: str | Path, year: str = "2012", voc_train: str = "train",
                 voc_val: str = "val", transforms: Any = None) -> None:
        self.voc = resolve_root(voc_root, year)
        self.sbd = Path(sbd_root)
        if not (self.sbd / "cls").is_dir():
            raise UserError(f"{self.sbd}: not SBD's dataset folder (no cls/ folder of .mat masks)")
        sbd_ids = read_sbd_list(self.sbd, "train") + read_sbd_list(self.sbd, "val")
        voc_ids = read_image_set(voc_root, year, voc_train, "Segmentation")
        held_out = set(read_image_set(voc_root, year, voc_val, "Segmentation"))
        super().__init__(sorted((set(sbd_ids) | set(voc_ids)) - held_out), transforms)
        self.counts = {"sbd": len(set(sbd_ids)), "voc_train": len(voc_ids), "removed_val": len(held_out &
                       (set(sbd_ids) | set(voc_ids))), "total": len(self.ids)}

    def image_path(self, i: str) -> Path:
        voc = self.voc / "JPEGImages" / f"{i}.jpg"
        return voc if voc.is_file() else self.sbd / "img" / f"{i}.jpg"

    def mask(self, i: str) -> np.ndarray:
        png = self.voc / "SegmentationClass" / f"{i}.png"
        return load_mask(png) if png.is_file() else load_sbd_mask(self.sbd / "cls" / f"{i}.mat")


def seg11valid_ids(voc_root: str | Path, sbd_root: Path, year: str = "2011") -> tuple[list[str], str]:
    """The authors' validation images (``segvalid11``): VOC``year`` segmentation ``val`` minus SBD ``train``.

    Read from ``ImageSets/Segmentation/seg11valid.txt`` when the file exists (FCN's list; it must not hold an SBD
    training image, or training images would be scored), else derived from ``val.txt`` and SBD's ``train.txt``.
    Returns the ids and where they came from."""
    sbd_train = set(read_sbd_list(sbd_root, "train"))
    listed = resolve_root(voc_root, year) / "ImageSets" / "Segmentation" / "seg11valid.txt"
    if listed.is_file():
        ids = read_image_set(voc_root, year, "seg11valid", "Segmentation")
        overlap = sorted(set(ids) & sbd_train)
        if overlap:
            raise UserError(f"{listed}: {len(overlap)} of its images are in SBD's training list "
                            f"{sbd_root / 'train.txt'} (e.g. {', '.join(overlap[:3])}); seg11valid must exclude them")
        return ids, str(listed)
    ids = [i for i in read_image_set(voc_root, year, "val", "Segmentation") if i not in sbd_train]
    return ids, f"VOC{year} Segmentation/val.txt minus {sbd_root / 'train.txt'}"


__all__ = ["SBDAugmented", "SBDSegmentation", "SegmentationItems", "load_sbd_mask", "read_sbd_list",
           "seg11valid_ids"]
