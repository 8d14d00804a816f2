"""Reading the result files that the reports are made from: one JSON record of a named ``kind``, with the path it
was read from recorded as ``_path``. A missing or malformed file, or one of another kind, is a
:class:`~xchannel.errors.UserError` that names the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from xchannel.errors import UserError


def read_result(path: str | os.PathLike, kind: str, what: str | None = None, writer: str | None = None
                ) -> dict[str, Any]:
    """The record in ``path``, which must be a JSON object with ``"kind": kind``. ``what`` names such a result in
    messages (default: the kind) and ``writer`` the command that writes it."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{p}: no such result file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{p}: not a readable JSON result ({err})") from None
    if not isinstance(data, dict) or data.get("kind") != kind:
        found = data.get("kind") if isinstance(data, dict) else type(data).__name__
        hint = f", written by {writer}" if writer else ""
        raise UserError(f"{p}: not a {what or kind} result (kind {found!r}; expected {kind!r}{hint})")
    data["_path"] = str(p)
    return data


__all__ = ["read_result"]
