"""On-disk cache of pooled features (fp16 numpy memmaps), so repeated probes of one encoder skip the network.

A linear probe spends nearly all its time in the frozen encoder. When the training images are seen as fixed
center crops (no random crops or mirrors: augmentation is off while caching), every epoch feeds the heads the same
pooled features, so they can be computed once and read back from disk.

Layout (``root`` is ``--cache DIR``)::

    root/<key>/meta.json              the key's fields (encoder fingerprint, data, crop) and, per split: images, views,
                                      and for each entry its per-image shape and scale exponent
    root/<key>/<split>.labels.npy     int64 labels, one per image, in the data set's order
    root/<key>/<split>.valid.npy      bool: False for images that could not be read (skipped and counted)
    root/<key>/<split>.<entry>.npy    float16, images x views x dim (memory-mapped when read); one entry per layer
                                      and pooling (the probe names them ``conv2~avg_k5_s5_ceil``)

Each entry is stored divided by a power of two near its RMS (``scale_exponents`` in the index), so that tiny
activations (a Gaussian-initialised AlexNet's conv5 is of order 1e-5, below float16's normal range) keep float16's
11-bit precision; reading multiplies it back, exactly.

The key is the sha256 of the key fields (:func:`cache_key`): the encoder's weight fingerprint
(:meth:`xchannel.features.encoders.Encoder.weights_fingerprint`, which covers checkpoints, seeds and k-means
initialisations alike), the data (path, file names, sizes and modification times, classes) and the crop; the pooling
is part of each entry's name and the views (center crop or ten crops) part of the split's. Anything that changes the
features changes the key or the name.

Entries are added independently: a later run that asks for more layers computes only the missing ones. Every file
is written under a temporary name and renamed into place, and ``meta.json`` (written last, atomically) only lists
complete entries, so an interrupted run never leaves one that reads as complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xchannel.errors import UserError
from xchannel.utils.io import atomic_write_json

FORMAT_VERSION = 2


def cache_key(fields: Mapping[str, Any]) -> str:
    """sha256 (hex, first 24 characters) of the canonical JSON of ``fields``."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"v{FORMAT_VERSION}|{text}".encode()).hexdigest()[:24]


def file_list_fingerprint(samples: Iterable[tuple[str, int]], root: str | os.PathLike) -> str:
    """sha256 over (relative path, label, size, mtime) of every sample: changes when any image file changes."""
    h = hashlib.sha256()
    root = Path(root)
    for path, label in samples:
        p = Path(path)
        try:
            st = p.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        rel = os.path.relpath(p, root) if p.is_absolute() else str(p)
        h.update(f"{rel}|{label}|{stamp}\n".encode())
    return h.hexdigest()


@dataclass
class CachedSplit:
    """A split read back from the cache: ``features[layer]`` is an images x views x dim float16 memmap."""

    labels: np.ndarray
    valid: np.ndarray
    views: int
    shapes: dict[str, tuple[int, ...]]
    features: dict[str, np.ndarray]
    scales: dict[str, float]

    @property
    def rows(self) -> np.ndarray:
        """Indices of the readable images."""
        return np.flatnonzero(self.valid)

    def batch(self, index: np.ndarray, layers: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """float32 features ((len(index) * views) x dim, views of an image adjacent) and labels for ``index``."""
        index = np.sort(np.asarray(index))  # sequential reads from the memmaps; the order within a batch is moot
        feats = {}
        for layer in layers:
            block = np.asarray(self.features[layer][index], dtype=np.float32) * np.float32(self.scales[layer])
            feats[layer] = torch.from_numpy(block.reshape(len(index) * self.views, -1))
        return feats, torch.from_numpy(self.labels[index].astype(np.int64))


class FeatureCache:
    """The cache folder of one key (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, fields: Mapping[str, Any]) -> None:
        self.root = Path(root)
        self.fields = json.loads(json.dumps(dict(fields), default=str))
        self.key = cache_key(self.fields)
        self.dir = self.root / self.key
        self.meta_path = self.dir / "meta.json"

    # -- reading -----------------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        if not self.meta_path.is_file():
            return {"format": FORMAT_VERSION, "key": self.key, "fields": self.fields, "splits": {}}
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"{self.meta_path}: unreadable feature-cache index ({err}); delete the folder "
                            f"{self.dir} to rebuild it") from None
        if meta.get("key") != self.key:
            raise UserError(f"{self.meta_path}: belongs to key {meta.get('key')!r}, not {self.key!r}; delete "
                            f"{self.dir} to rebuild it")
        return meta

    def missing_layers(self, split: str, layers: Sequence[str]) -> list[str]:
        have = self.meta()["splits"].get(split, {}).get("layers", {})
        return [layer for layer in layers if layer not in have or not self._path(split, layer).is_file()]

    def load(self, split: str, layers: Sequence[str]) -> CachedSplit:
        """The cached ``layers`` of ``split`` (all must be present: see :meth:`missing_layers`)."""
        info = self.meta()["splits"].get(split)
        missing = self.missing_layers(split, layers)
        if info is None or missing:
            raise KeyError(f"{self.dir}: split {split!r} lacks layers {missing}")
        labels = np.load(self._path(split, "labels"))
        valid = np.load(self._path(split, "valid"))
        feats = {}
        for layer in layers:
            arr = np.load(self._path(split, layer), mmap_mode="r")
            if arr.shape[:2] != (len(labels), info["views"]):
                raise UserError(f"{self._path(split, layer)}: shape {arr.shape} does not match the index "
                                f"({len(labels)} images x {info['views']} views); delete {self.dir} to rebuild")
            feats[layer] = arr
        shapes = {layer: tuple(info["layers"][layer]) for layer in layers}
        scales = {layer: float(2.0 ** info.get("scale_exponents", {}).get(layer, 0)) for layer in layers}
        return CachedSplit(labels=labels, valid=valid, views=int(info["views"]), shapes=shapes, features=feats,
                           scales=scales)

    def _path(self, split: str, name: str) -> Path:
        return self.dir / f"{split}.{name}.npy"

    # -- writing -----------------------------------------------------------------------------------------------
    def writer(self, split: str, images: int, views: int, shapes: Mapping[str, Sequence[int]]) -> "SplitWriter":
        """A writer for ``layers`` of ``split`` (``images`` rows of ``views`` x prod(shape) float16 each)."""
        return SplitWriter(self, split, images, views, {k: tuple(int(s) for s in v) for k, v in shapes.items()})


class SplitWriter:
    """Fills the memmaps of one split, then :meth:`commit` renames them into place and updates the index."""

    def __init__(self, cache: FeatureCache, split: str, images: int, views: int,
                 shapes: dict[str, tuple[int, ...]]) -> None:
        self.cache, self.split, self.images, self.views, self.shapes = cache, split, images, views, shapes
        cache.dir.mkdir(parents=True, exist_ok=True)
        self.labels = np.full(images, -1, dtype=np.int64)
        self.valid = np.zeros(images, dtype=bool)
        self._tmp: dict[str, Path] = {}
        self._maps: dict[str, np.ndarray] = {}
        self.exponents: dict[str, int] = {}
        for layer, shape in shapes.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{split}.{layer}.", suffix=".npy.tmp", dir=cache.dir)
            os.close(fd)
            self._tmp[layer] = Path(tmp)
            dim = int(np.prod(shape))
            self._maps[layer] = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                                          shape=(images, views, dim))

    def add(self, index: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
            features: Mapping[str, torch.Tensor]) -> None:
        """Store the pooled features of the images ``index`` (features: (len(index) * views) x ...)."""
        index = np.asarray(index, dtype=np.int64)
        self.labels[index] = np.asarray(labels)
        self.valid[index] = True
        for layer, value in features.items():
            block = value.detach().to("cpu", torch.float32).reshape(len(index), self.views, -1)
            if layer not in self.exponents:  # fixed by the first batch: 2^e near the RMS of the features
                rms = float(block.pow(2).mean().sqrt())
                self.exponents[layer] = int(np.round(np.log2(rms))) if rms > 0 and np.isfinite(rms) else 0
            scaled = block.numpy() * np.float32(2.0 ** -self.exponents[layer])
            self._maps[layer][index] = scaled.astype(np.float16)

    def commit(self) -> None:
        """Flush, rename every file into place, then record the layers in ``meta.json`` (atomically)."""
        cache = self.cache
        for layer, arr in self._maps.items():
            arr.flush()
            os.replace(self._tmp[layer], cache._path(self.split, layer))
        self._maps.clear()
        for name, arr in (("labels", self.labels), ("valid", self.valid)):
            tmp = cache.dir / f".{self.split}.{name}.npy.tmp"
            with open(tmp, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, cache._path(self.split, name))
        meta = cache.meta()
        info = meta["splits"].setdefault(self.split, {"images": self.images, "views": self.views, "layers": {}})
        if info["images"] != self.images or info["views"] != self.views:
            info = meta["splits"][self.split] = {"images": self.images, "views": self.views, "layers": {}}
        info["layers"].update({layer: list(shape) for layer, shape in self.shapes.items()})
        info.setdefault("scale_exponents", {}).update({layer: self.exponents.get(layer, 0) for layer in self.shapes})
        info["readable"] = int(self.valid.sum())
        atomic_write_json(cache.meta_path, meta)

    def abort(self) -> None:
        """Drop the temporary files (on an error before :meth:`commit`)."""
        self._maps.clear()
        for tmp in self._tmp.values():
            tmp.unlink(missing_ok=True)


__all__ = ["CachedSplit", "FeatureCache", "SplitWriter", "cache_key", "file_list_fingerprint"]
