"""Encoders as detectron2 weight files (``xchannel export detectron2 ENCODER -o out.pkl``).

detectron2 is not a dependency (it cannot be installed on the project's machines); this writes the file format
its ``DetectionCheckpointer`` reads, for users who run detectron2 themselves with ``MODEL.WEIGHTS=out.pkl``.

File format
-----------
A pickle of a plain dict::

    {"model": {name: numpy.ndarray (float32)}, "__author__": "xchannel ...", "matching_heuristics": True,
     "xchannel": {...}}

``DetectionCheckpointer._load_file`` returns a ``.pkl`` holding ``"model"`` and ``"__author__"`` unchanged (the
detectron2 model-zoo format). Because of ``"matching_heuristics": True``, ``_load_model`` converts the arrays to
tensors and matches names with ``c2_model_loading.align_and_update_state_dicts``: a checkpoint key ``k`` fills
every model parameter named ``k`` or ending in ``"." + k`` (the longest matching key wins; shapes must agree), so
the weights load into a model whose modules sit under extra prefixes. ``"__author__"`` is not ``"Caffe2"``, so
no Caffe2 renaming is applied. The ``"xchannel"`` entry (plain dicts, lists and strings) records the encoder, its
input convention and the key map; detectron2 hands unknown entries back to the caller and ignores them.

Key naming (AlexNet family: xchannel AlexNets, ``gaussian``, ``kmeans``, ``state_dict``, torchvision's AlexNet)
------------------------------------------------------------------------------------------------------------------
* conv layer i (i = 1 ... 5) -> ``<prefix>conv<i>.weight`` / ``.bias`` (``prefix`` default ``"backbone."``: a
  detectron2 ``Backbone`` registered as ``model.backbone`` with attributes ``conv1`` ... ``conv5``);
* ``fc="box_head"`` (default): fc6 -> ``roi_heads.box_head.fc1.*`` and fc7 -> ``roi_heads.box_head.fc2.*``,
  the two fully connected layers of detectron2's ``FastRCNNConvFCHead`` (``ROI_BOX_HEAD.NUM_FC 2``,
  ``FC_DIM`` = fc7's width). With ``ROI_BOX_HEAD.POOLER_RESOLUTION 6`` its fc1 takes the C x 6 x 6 RoI features
  flattened in C, H, W order, exactly as our fc6 takes pool5; ``fc="backbone"`` writes ``<prefix>fc6.*`` /
  ``<prefix>fc7.*`` instead, ``fc="none"`` leaves them out.

Our AlexNet's BatchNorm is folded into the layers first (exact in eval mode). conv2, conv4 and conv5 are grouped
(2 groups, CaffeNet) for xchannel AlexNets: their weights have half the input channels, and the model receiving
them needs ``groups=2`` there (recorded under ``xchannel.layers``). Other encoders (timm networks, the VGG
colorizer) are written as their backbone's ``state_dict`` under ``prefix``, keys unchanged.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn

from xchannel.errors import UserError
from xchannel.features.encoders import Encoder
from xchannel.utils.io import atomic_write

HELP = "a detectron2 weight file (.pkl for DetectionCheckpointer / MODEL.WEIGHTS)"
DESCRIPTION = __doc__
FC_PLACEMENTS = ("box_head", "backbone", "none")
#: The RoI pooling resolution the exported fc6 expects (pool5 of a 227 px CaffeNet input).
POOLER_RESOLUTION = 6


def _input_convention(encoder: Encoder) -> dict[str, Any]:
    from xchannel.features.encoders import NormalizedRGBEncoder

    if isinstance(encoder, NormalizedRGBEncoder):
        norm = encoder.info.get("normalisation", {})
        gray = " of the gray image (R = G = B = the sRGB value of its lightness)" if encoder.input_mode == "gray" \
            else ""
        return {"mode": encoder.input_mode, "channels": ["R", "G", "B"], "order": "RGB (detectron2's default is BGR)",
                "transform": f"(rgb{gray} in [0, 1] - mean) / std, mean {norm.get('mean')}, std {norm.get('std')}"}
    channels = ["L"] if encoder.input_mode == "gray" else ["L", "a", "b"]
    return {"mode": encoder.input_mode, "channels": channels,
            "transform": "sRGB in [0, 1] -> CIE Lab (D65); L -> (L - 50) / 100; a, b -> a / 110, b / 110",
            "note": "the model's input conversion must do this (detectron2's PIXEL_MEAN / PIXEL_STD normalise BGR "
                    "and cannot express it)"}


def _conv_layers(trunk: Any) -> list[nn.Conv2d]:
    if trunk.kind == "alexnet":
        return [getattr(trunk.conv, f"conv{i}").conv for i in range(1, 6)]
    return [m for m in trunk.conv.modules() if isinstance(m, nn.Conv2d)]


def detectron2_weights(encoder: Encoder, *, prefix: str = "backbone.",
                       fc: Literal["box_head", "backbone", "none"] = "box_head"
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The ``"model"`` dict of the file (name -> float32 array) and the ``"xchannel"`` record (key map, layer
    geometry, input convention), following the naming of the module docstring. ``encoder`` is converted in place
    for our AlexNet (BatchNorm folded)."""
    from xchannel.pascal.encoder_cut import build_trunk

    if fc not in FC_PLACEMENTS:
        raise UserError(f"fc placement must be one of {', '.join(FC_PLACEMENTS)}, got {fc!r}")
    if prefix and not prefix.endswith("."):
        prefix += "."
    trunk = build_trunk(encoder, dropout=0.0)
    model: dict[str, np.ndarray] = {}
    keys: dict[str, str] = {}
    layers: dict[str, dict[str, Any]] = {}

    def put(name: str, module: nn.Module, ours: str, geometry: dict[str, Any]) -> None:
        for kind in ("weight", "bias"):
            t = getattr(module, kind, None)
            if t is None:
                continue
            model[f"{name}.{kind}"] = t.detach().to("cpu", torch.float32).contiguous().numpy().copy()
            keys[f"{ours}.{kind}"] = f"{name}.{kind}"
        layers[name] = geometry

    if trunk.kind in ("alexnet", "torchvision_alexnet"):
        convs = _conv_layers(trunk)
        if len(convs) != 5:
            raise UserError(f"encoder {encoder.spec!r}: expected 5 convolutions, found {len(convs)}")
        for i, conv in enumerate(convs, 1):
            put(f"{prefix}conv{i}", conv, f"conv{i}",
                {"type": "Conv2d", "in_channels": conv.in_channels, "out_channels": conv.out_channels,
                 "kernel_size": list(conv.kernel_size), "stride": list(conv.stride),
                 "padding": list(conv.padding) if isinstance(conv.padding, tuple) else conv.padding,
                 "groups": conv.groups, "relu_after": True})
        if fc != "none":
            fcs = [m for m in trunk.fc.modules() if isinstance(m, nn.Linear)]
            names = (["roi_heads.box_head.fc1", "roi_heads.box_head.fc2"] if fc == "box_head"
                     else [f"{prefix}fc6", f"{prefix}fc7"])
            for ours, name, lin in zip(("fc6", "fc7"), names, fcs):
                put(name, lin, ours, {"type": "Linear", "in_features": lin.in_features,
                                      "out_features": lin.out_features, "relu_after": True})
            layers[names[0]]["input"] = (f"RoI features {trunk.conv_dim} x {POOLER_RESOLUTION} x "
                                         f"{POOLER_RESOLUTION}, flattened in C, H, W order")
    else:
        for k, v in encoder.backbone.state_dict().items():
            if torch.is_floating_point(v):
                model[f"{prefix}{k}"] = v.detach().to("cpu", torch.float32).contiguous().numpy().copy()
                keys[k] = f"{prefix}{k}"
    record = {
        "format": "detectron2 DetectionCheckpointer pickle (model-zoo layout, matching heuristics)",
        "encoder": encoder.describe(),
        "input": _input_convention(encoder),
        "keys": keys,
        "layers": layers,
        "pooler_resolution": POOLER_RESOLUTION if fc == "box_head" else None,
        "batchnorm_folded": True,
    }
    return model, record


def export_detectron2(encoder: Encoder, path: str | os.PathLike, *, prefix: str = "backbone.",
                      fc: Literal["box_head", "backbone", "none"] = "box_head") -> dict[str, Any]:
    """Write ``encoder`` as a detectron2 weight file at ``path`` (atomically); returns a summary."""
    import xchannel

    model, record = detectron2_weights(encoder, prefix=prefix, fc=fc)
    payload = {"model": model, "__author__": f"xchannel {xchannel.__version__}", "matching_heuristics": True,
               "xchannel": record}
    buf = io.BytesIO()
    _PortablePickler(buf, protocol=4).dump(payload)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return {"path": str(path), "tensors": len(model), "parameters": int(sum(a.size for a in model.values())),
            "keys": sorted(model)}


class _PortablePickler(pickle.Pickler):
    """Pickles numpy arrays as ``numpy.ndarray(shape, dtype, bytearray)``, which every numpy version (1.x and
    2.x) unpickles: numpy's own reduction names ``numpy._core.multiarray._reconstruct`` under numpy 2, a module
    that numpy releases before 1.26.1, still common next to detectron2, do not have. The arrays come back
    C-contiguous and writable (the buffer is a ``bytearray``)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray:
            data = np.ascontiguousarray(obj)
            return np.ndarray, (tuple(data.shape), data.dtype.str, bytearray(data.tobytes()))
        return NotImplemented


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (what a detectron2 weight file holds); anything else,
    which could run code, is refused."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("builtins", "bytearray"), ("__builtin__", "bytearray"),
                ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def read_detectron2(path: str | os.PathLike) -> dict[str, Any]:
    """Read a detectron2 weight file written by :func:`export_detectron2` (or any model-zoo ``.pkl`` of arrays),
    refusing pickles that would construct other objects. Checks the layout detectron2 expects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise UserError(f"{path}: not a plain detectron2 weight pickle ({err})") from None
    except (EOFError, OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or "__author__" not in data:
        raise UserError(f"{path}: not in detectron2's model-zoo layout (a dict with 'model' and '__author__')")
    bad = [k for k, v in data["model"].items() if not isinstance(v, np.ndarray)]
    if bad:
        raise UserError(f"{path}: 'model' entries that are not numpy arrays: {bad[:5]}")
    return data


# --------------------------------------------------------------------------------------------------------------
# Command line (``xchannel export detectron2``)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from xchannel.features.encoders import SPEC_HELP

    parser.add_argument("encoder", metavar="ENCODER", help=f"encoder spec: {SPEC_HELP}")
    parser.add_argument("-o", "--out", required=True, metavar="FILE", help="output .pkl file")
    parser.add_argument("--input-mode", choices=("gray", "color", "rgb"),
                        help="gray (L), color (Lab; a gray network gets zero ab weights in conv1) or rgb; "
                             "default: the network's own")
    parser.add_argument("--prefix", default="backbone.",
                        help="prefix of the conv layer names (default 'backbone.'; '' matches any module path "
                             "ending in convN under detectron2's matching heuristics)")
    parser.add_argument("--fc", choices=FC_PLACEMENTS, default="box_head",
                        help="where fc6/fc7 go: the box head's fc1/fc2 (default), <prefix>fc6/fc7, or nowhere")
    parser.add_argument("--seed", type=int, default=0, help="seed of random initialisations (gaussian)")


def run(args: argparse.Namespace) -> int:
    from xchannel.features.encoders import load_encoder, parse_spec

    if parse_spec(args.encoder)[0] == "kmeans":
        raise UserError("a kmeans encoder is initialised on images; run a PASCAL task with it, or export a "
                        "checkpoint instead")
    encoder = load_encoder(args.encoder, input_mode=args.input_mode, geometry="transfer", seed=args.seed)
    summary = export_detectron2(encoder, args.out, prefix=args.prefix, fc=args.fc)
    print(f"wrote {summary['path']}: {summary['tensors']} arrays, {summary['parameters']:,} parameters "
          f"({', '.join(summary['keys'][:4])}{', ...' if len(summary['keys']) > 4 else ''})")
    return 0


__all__ = ["FC_PLACEMENTS", "POOLER_RESOLUTION", "detectron2_weights", "export_detectron2", "read_detectron2"]
