"""Writing xchannel encoders in other frameworks' weight-file formats.

Each format is one module listed in :data:`FORMATS`; the module provides ``HELP`` (one line), optional
``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int`` for ``xchannel export FORMAT ...``, plus its
library functions. Adding a format is one module and one entry here.

* ``detectron2`` (:mod:`xchannel.export.detectron2`): the pickle that detectron2's ``DetectionCheckpointer``
  loads (``MODEL.WEIGHTS=out.pkl``), for users who run detectron2 themselves (it is not a dependency).
"""

from __future__ import annotations

#: Format name -> module implementing it.
FORMATS: dict[str, str] = {
    "detectron2": "xchannel.export.detectron2",
}

__all__ = ["FORMATS"]
