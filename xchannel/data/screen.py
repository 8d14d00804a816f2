"""Screening a data set's files before its data order is drawn.

Why
---
A run's data order is a permutation of its sample list: training draws one per epoch from (seed, epoch)
(:class:`xchannel.train.engine.ResumableSampler`), and each training image's crop follows from its position in
that order; probes shuffle with a seeded generator. An unusable file left in the list shifts every permutation,
so the good images would meet other batches and other crops, and a folder holding a few bad files would train
other weights than the same folder cleaned. Screening removes the unusable files first: the list, and with it
the order, the crops and the results, is then exactly the clean folder's.

How
---
:func:`screen_samples` asks :func:`xchannel.data.images.check_image` about every file: the decoding path of
:func:`~xchannel.data.images.load_rgb` itself (file checks, the header's pixel limit before any decoding, the
decode, orientation and mode conversion), with JPEGs decoded at 1/8 scale, which still reads the whole
compressed stream, so a truncated file is refused exactly as a full decode would refuse it. Files are checked
in ``workers`` DataLoader processes, in chunks, with a progress bar. The result keeps the usable samples in
their original order and the refused files with their reasons; :meth:`ScreenResult.apply` puts the former into
a data set and counts and names the latter in the run's :class:`~xchannel.data.images.SkipCounter`.

Cost, measured on the development machine (one core, 500 x 375 JPEGs of 77 kB, ImageNet's typical size): 1.2 ms
per JPEG, against 1.9 ms for :func:`~xchannel.data.images.load_rgb`'s full decode and 3.7 ms for the training
pipeline's decode, gray test and crop. ImageNet's 1.28M training images thus take about 26 core-minutes (some 3
minutes over 8 worker processes), once per run: a resumed run reads the stored result.
Screening can be switched off (``data.screen=false`` for training, ``screen=false`` for probes); bad files are
then skipped when read, as before, at the price of a data order that depends on them.

A file that passes the screen and fails later (changed on disk meanwhile) is still skipped and counted when it is
read (:class:`~xchannel.data.images.Skipped`).

Stored screens
--------------
:func:`save_screens` writes the results of a run's splits to one gzip-compressed JSON file, atomically;
:func:`load_screens` reads them back, so that a resumed run uses the list its first part used even if the
folder has changed since. Layout::

    {"format": 1, "max_pixels": N,
     "splits": {"train": {"source": "...", "files": F, "seconds": S,
                          "samples": [[path, label], ...], "skipped": {path: reason, ...}}, ...}}
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from xchannel.data.images import DEFAULT_MAX_PIXELS, ImageSamples, SkipCounter, check_image
from xchannel.errors import UserError
from xchannel.utils.io import atomic_write

#: Version of the stored screen's layout.
SCREEN_FORMAT = 1
#: Files checked per task sent to a worker process.
CHUNK = 64
#: Below this many files the worker processes' start-up costs more than they save: check in this process.
MIN_PARALLEL = 512


@dataclass
class ScreenResult:
    """The outcome of screening one data set: its usable samples (in the original order) and refused files."""

    source: str  # what was screened (a folder or an image list), as the run names it
    samples: list[tuple[str, int]]  # the usable (path, label) pairs
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason, in the original order
    files: int = 0  # files examined
    seconds: float = 0.0

    def apply(self, dataset: ImageSamples, counter: SkipCounter) -> None:
        """Make ``dataset`` read the usable samples only; count and name the refused files in ``counter``."""
        dataset.samples = list(self.samples)
        for path, reason in self.skipped.items():
            counter.add(path, reason)

    def describe(self) -> dict[str, Any]:
        """The short record of a run's summary."""
        return {"source": self.source, "files": self.files, "usable": len(self.samples),
                "skipped": len(self.skipped), "seconds": round(self.seconds, 3)}

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "files": self.files, "seconds": self.seconds,
                "samples": [[path, label] for path, label in self.samples], "skipped": dict(self.skipped)}

    @classmethod
    def from_dict(cls, d: Any, origin: str) -> "ScreenResult":
        """Inverse of :meth:`to_dict`; a malformed record is a :class:`UserError` naming ``origin``."""
        try:
            samples = [(str(path), int(label)) for path, label in d["samples"]]
            skipped = {str(path): str(reason) for path, reason in d["skipped"].items()}
            return cls(source=str(d["source"]), samples=samples, skipped=skipped, files=int(d["files"]),
                       seconds=float(d["seconds"]))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UserError(f"{origin}: malformed screened data list ({type(err).__name__}: {err})") from None


class _Checks(Dataset):
    """Item ``i``: ``None`` when file ``i`` is usable, else the reason :func:`load_rgb` would refuse it."""

    def __init__(self, paths: list[str], max_pixels: int) -> None:
        self.paths, self.max_pixels = paths, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> str | None:
        return check_image(self.paths[index], self.max_pixels)


def screen_samples(samples: Iterable[tuple[str, int]], max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 0,
                   progress: bool = True, source: str = "", desc: str = "screening images") -> ScreenResult:
    """Check every ``(path, label)`` with :func:`~xchannel.data.images.check_image`; keep the usable ones.

    ``workers`` processes share the work (in chunks of :data:`CHUNK` files, results in the input order); below
    :data:`MIN_PARALLEL` files everything runs in this process.
    """
    samples = list(samples)
    t0 = time.perf_counter()
    checks = _Checks([str(path) for path, _ in samples], max_pixels)
    loader = DataLoader(checks, batch_size=CHUNK, shuffle=False, collate_fn=list,
                        num_workers=workers if len(samples) >= MIN_PARALLEL else 0,
                        generator=torch.Generator())  # its own generator: the global RNG is left untouched
    reasons: list[str | None] = []
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for chunk in loader:
            reasons.extend(chunk)
            bar.update(len(chunk))
    usable = [s for s, reason in zip(samples, reasons) if reason is None]
    skipped = {str(path): reason for (path, _), reason in zip(samples, reasons) if reason is not None}
    return ScreenResult(source=source, samples=usable, skipped=skipped, files=len(samples),
                        seconds=time.perf_counter() - t0)


def save_screens(path: str | os.PathLike, screens: Mapping[str, ScreenResult],
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Write ``{split: result}`` to ``path`` (gzip-compressed JSON, atomically; see the module docstring)."""
    payload = {"format": SCREEN_FORMAT, "max_pixels": max_pixels,
               "splits": {name: result.to_dict() for name, result in screens.items()}}
    data = gzip.compress(json.dumps(payload, separators=(",", ":")).encode(), mtime=0)
    with atomic_write(path) as f:
        f.write(data)


def load_screens(path: str | os.PathLike) -> dict[str, ScreenResult]:
    """Read what :func:`save_screens` wrote; a missing, unreadable or malformed file is a :class:`UserError`."""
    path = Path(path)
    try:
        payload = json.loads(gzip.decompress(path.read_bytes()))
    except FileNotFoundError:
        raise UserError(f"{path}: screened data list not found") from None
    except (OSError, EOFError, ValueError) as err:  # gzip.BadGzipFile is an OSError, JSONDecodeError a ValueError
        raise UserError(f"{path}: unreadable screened data list ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != SCREEN_FORMAT or \
            not isinstance(payload.get("splits"), dict):
        raise UserError(f"{path}: not a screened data list of format {SCREEN_FORMAT}")
    return {name: ScreenResult.from_dict(d, str(path)) for name, d in payload["splits"].items()}


__all__ = ["CHUNK", "MIN_PARALLEL", "SCREEN_FORMAT", "ScreenResult", "load_screens", "save_screens",
           "screen_samples"]
