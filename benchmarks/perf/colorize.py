"""Target 5: colorizing a photo end to end, ours against the released pipeline's way.

Workload: 256 x 256 JPEG crops of real photographs; the full-width VGG colorizer (the released network's layers,
seeded weights, BatchNorm statistics drawn away from the identity so that colours vary) in eval mode; the network
at 256 px, T = 0.38. One photo = read and decode the file, Lab, network, decode ab (annealed mean), upsample,
recombine with the photo's L, back to RGB, encode a PNG (in memory).

* released, the baseline: the authors' demo pipeline (``colorizers/util.py``): ``np.asarray(Image.open(path))``,
  PIL bicubic resize to 256, ``skimage.color.rgb2lab`` of the photo and of the resize, the network on the resized
  L (autograd on, as in their demo), bilinear upsampling, concatenation, ``skimage.color.lab2rgb``; the same
  8-bit rounding and PNG encoder as ours;
* ours: :func:`xchannel.data.load_rgb`, :func:`xchannel.colorize.colorize_image`, the same PNG encoder.

The outputs are compared as float RGB in [0, 1] before 8-bit rounding, and as the 8-bit images.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.perf.common import Check, Settings, interleave, median, photo_crops, record, set_threads, stats

NAME = "colorize"
TITLE = "Colorize a 256 x 256 photo end to end vs the released pipeline (skimage Lab, PIL resize)"


def network(width: float) -> torch.nn.Module:
    from xchannel.models import VGGColorizer

    model = VGGColorizer(width=width, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # BatchNorm statistics away from the identity, so that the predicted colours vary
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.empty_like(m.running_mean).uniform_(-0.1, 0.1, generator=g))
                m.running_var.copy_(torch.empty_like(m.running_var).uniform_(0.5, 2.0, generator=g))
    return model


def released_rgb(model: torch.nn.Module, path: Path, size: int) -> np.ndarray:
    """The released demo's colorization of ``path`` as H x W x 3 float RGB in [0, 1]."""
    from skimage import color as skcolor

    img = np.asarray(Image.open(path))
    if img.ndim == 2:
        img = np.tile(img[:, :, None], 3)
    img_rs = np.asarray(Image.fromarray(img).resize((size, size), resample=3))
    tens_orig_l = torch.Tensor(skcolor.rgb2lab(img)[:, :, 0])[None, None]
    tens_rs_l = torch.Tensor(skcolor.rgb2lab(img_rs)[:, :, 0])[None, None]
    out_ab = model.predict_ab(tens_rs_l)
    if out_ab.shape[2:] != tens_orig_l.shape[2:]:
        out_ab = F.interpolate(out_ab, size=tens_orig_l.shape[2:], mode="bilinear")
    out_lab = torch.cat((tens_orig_l, out_ab), dim=1)
    return skcolor.lab2rgb(out_lab.data.cpu().numpy()[0, ...].transpose((1, 2, 0)))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def released(model: torch.nn.Module, path: Path, size: int) -> bytes:
    rgb = released_rgb(model, path, size)
    return _png(Image.fromarray((rgb * 255.0).round().astype(np.uint8)))


def ours(model: torch.nn.Module, path: Path, size: int) -> bytes:
    from xchannel.colorize import colorize_image
    from xchannel.data.images import load_rgb

    return _png(colorize_image(model, load_rgb(path), size))


def run(settings: Settings, context: dict[str, Any] | None = None) -> dict[str, Any]:
    from xchannel.colorize import colorize_rgb
    from xchannel.data.images import load_rgb

    set_threads(settings)
    started = time.perf_counter()
    size, width = settings.pick(256, 256, 64), settings.pick(1.0, 1.0, 0.125)
    n_photos, repeats = settings.pick(4, 2, 1), settings.pick(3, 2, 1)
    model = network(width)
    folder = settings.work / "colorize"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, crop in enumerate(photo_crops(n_photos, size, seed=2)):
        paths.append(folder / f"photo_{i}.jpg")
        Image.fromarray(crop.permute(1, 2, 0).numpy()).save(paths[-1], quality=90)

    cases = {}
    for i, p in enumerate(paths):
        cases[f"released/{i}"] = lambda p=p: released(model, p, size)
        cases[f"ours/{i}"] = lambda p=p: ours(model, p, size)
        cases[f"ours_bf16/{i}"] = lambda p=p: _bf16(ours, model, p, size)
    t = interleave(cases, repeats, warmup=1)
    per = {kind: [x for name, v in t.items() if name.startswith(kind + "/") for x in v]
           for kind in ("released", "ours", "ours_bf16")}
    rel_s, ours_s, bf16_s = median(per["released"]), median(per["ours"]), median(per["ours_bf16"])

    with torch.no_grad():
        L = torch.rand(1, 1, size, size) * 100
        net = interleave({"net": lambda: model.predict_ab(L)}, repeats, warmup=1)["net"]
    diffs, diffs_bf16, level = [], [], []
    for p in paths:
        ref = released_rgb(model, p, size)
        got = colorize_rgb(model, load_rgb(p), size)[0].permute(1, 2, 0).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got16 = colorize_rgb(model, load_rgb(p), size)[0].permute(1, 2, 0).float().numpy()
        diffs.append(float(np.abs(got - ref).max()))
        diffs_bf16.append(float(np.abs(got16 - ref).max()))
        level.append(int(np.abs(np.rint(got * 255).astype(int) - np.rint(ref * 255).astype(int)).max()))
    figures = {
        "seconds_per_photo": {k: stats(v) for k, v in per.items()},
        "network_seconds": stats(net), "network_share_of_released": median(net) / rel_s,
        "speedup": rel_s / ours_s, "speedup_bf16": rel_s / bf16_s,
        "max_abs_diff_rgb": max(diffs), "max_abs_diff_rgb_bf16": max(diffs_bf16), "max_8bit_level_diff": max(level),
    }
    checks = [
        Check("speed-up per photo (float32)", rel_s / ours_s, ">=", 2.0, baseline="released demo pipeline",
              note=f"{ours_s:.3f} s vs {rel_s:.3f} s; the network alone takes {median(net):.3f} s"),
        Check("max abs RGB difference", max(diffs), "<=", 1e-3, unit="abs", baseline="released demo pipeline"),
    ]
    workload = {"photos": n_photos, "size": size, "network": f"vgg_colorizer width {width} (seeded)",
                "temperature": 0.38, "repeats": repeats, "encode": "PNG in memory (PIL)"}
    notes = ["'ours_bf16' is the same pipeline with the network under bfloat16 autocast (figures only: its output "
             "differs from the float32 one by max_abs_diff_rgb_bf16)."]
    return record(settings, NAME, TITLE, workload, figures, checks, notes, started)


def _bf16(fn, *args):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fn(*args)
