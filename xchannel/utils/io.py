"""Atomic writes, safe loading, and file names made from text (:func:`slug`).

Every checkpoint and result goes through :func:`atomic_write` so that a crash, a SIGKILL or a full disk in the
middle of a write leaves the previous file intact: the data goes to a temporary file in the same folder, is
flushed and fsync'ed, then renamed over the target (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from xchannel.errors import UserError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file next to ``path``; on success rename it over ``path``, on failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions open() would
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in _FULL_DISK:
            raise OSError(err.errno, f"{_FULL_DISK[err.errno]} while writing {path}; the previous version "
                                     f"of the file (if any) is unchanged") from err
        raise


#: errno of a full disk -> what the message says (a quota is a full disk for the user who hits it).
_FULL_DISK = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint or weight file with ``weights_only=True``.

    Only tensors, containers and plain values load: a pickle that would construct arbitrary objects (and so
    could run code) is refused with a message naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"{path}: refused to load: the file holds pickled objects other than tensors and plain values, "
            f"which could run code when loaded ({str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"{path}: not a readable PyTorch file ({err})") from err


def slug(text: Any) -> str:
    """``text`` as a file name: every run of characters other than letters, digits, ``.``, ``_`` and ``-`` becomes
    one ``-`` (``"encoder"`` when nothing is left)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "encoder"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (metrics logs); a line is written with one ``write`` call.

    On a full disk the lines already written stay (a reader skips a cut last line) and the error names the file.
    """
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")
    except OSError as err:
        if err.errno in _FULL_DISK:
            raise OSError(err.errno, f"{_FULL_DISK[err.errno]} while appending to {path}; the lines written "
                                     f"before are kept") from err
        raise


def save_figure(fig: Any, out: str | os.PathLike) -> Path:
    """Render a matplotlib figure in the format of ``out``'s suffix, close it, and write the file atomically."""
    import matplotlib.pyplot as plt

    out = Path(out)
    fmt = out.suffix.lstrip(".").lower() or "png"
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt)
    except ValueError as err:
        raise UserError(f"{out}: cannot write this image format ({err})") from None
    finally:
        plt.close(fig)
    with atomic_write(out, "wb") as f:
        f.write(buf.getvalue())
    return out
