"""Target 5: colorizing a photo end to end, ours against the released pipeline's way.

Workload: 256 x 256 JPEG crops of real photographs; the full-width VGG colorizer (the released network's layers,
seeded weights at a trained network's magnitudes: see :func:`network`) in eval mode; the network
at 256 px, T = 0.38. One photo = read and decode the file, Lab, network, decode ab (annealed mean), upsample,
recombine with the photo's L, back to RGB, encode a PNG (in memory).

* released, the baseline: the authors' demo pipeline (``colorizers/util.py``): ``np.asarray(Image.open(path))``,
  PIL bicubic resize to 256, ``skimage.color.rgb2lab`` of the photo and of the resize, the network on the resized
  L (autograd on, as in their demo), bilinear upsampling, concatenation, ``skimage.color.lab2rgb``; the same
  8-bit rounding and PNG encoder as ours;
* ours: :func:`xchannel.data.load_rgb`, :func:`xchannel.colorize.colorize_image` on the network of
  :func:`xchannel.colorize.inference_network` (the CLI's default: on CPU the 3 x 3 stride-1 convolutions as Winograd
  F(4 x 4, 3 x 3), built once outside the timed loop like the released network), the same PNG encoder; and the same
  with ``--exact-conv`` (direct convolutions) as a figure.

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

from benchmarks.perf.common import (NOT_NATIVE, Check, Settings, bf16_native, interleave, median, photo_crops, record,
                                    set_threads, stats)

NAME = "colorize"
TITLE = "Colorize a 256 x 256 photo end to end vs the released pipeline (skimage Lab, PIL resize)"


def network(width: float, size: int = 64, logit_std: float = 2.0) -> torch.nn.Module:
    """The VGG colorizer in eval mode with seeded weights at the magnitudes of a trained network, so that the
    equivalence figures (float32 rounding, Winograd transforms) see realistic activations and logits.

    PyTorch's default initialisation shrinks the activations layer after layer (logits of ~0.04 here, which would
    hide any arithmetic error), so: He-normal convolutions (std sqrt(2 / fan-in)), small random biases, BatchNorm
    statistics measured on two photo crops of ``size`` px (activations of order 10 throughout), and the classifier
    scaled so that the logits have a standard deviation of ``logit_std``: softmax(logits / 0.38) is then peaked
    (mean entropy ~1.5 nats against ln 313 = 5.7 for the uniform distribution).
    """
    from xchannel import color as C
    from xchannel.models import VGGColorizer

    model = VGGColorizer(width=width, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=g)
            elif isinstance(m, torch.nn.ConvTranspose2d):  # each output pixel sees a quarter of the 4 x 4 taps
                m.weight.normal_(0.0, (8.0 / m.weight[:, 0].numel()) ** 0.5, generator=g)
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.bias.uniform_(-0.1, 0.1, generator=g)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # the running statistics become the plain average over the calibration pass
        L = C.rgb_to_lightness(photo_crops(2, size, seed=1).float() / 255.0)
        model.train()
        model(L)
        model.eval()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1  # PyTorch's default again
        scale = logit_std / float(model(L).std())
        model.classifier.weight.mul_(scale)
        model.classifier.bias.mul_(scale)
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
    """Our pipeline on ``model``, the network :func:`xchannel.colorize.inference_network` built (once)."""
    from xchannel.colorize import colorize_image
    from xchannel.data.images import load_rgb

    return _png(colorize_image(model, load_rgb(path), size))


def run(settings: Settings, context: dict[str, Any] | None = None) -> dict[str, Any]:
    from xchannel.colorize import colorize_rgb, inference_network, lightness
    from xchannel.data.images import load_rgb
    from xchannel.models.winograd import WinogradConv2d, layer_errors, winograd_inference

    set_threads(settings)
    started = time.perf_counter()
    size, width = settings.pick(256, 256, 64), settings.pick(1.0, 1.0, 0.25)
    n_photos, repeats = settings.pick(4, 2, 1), settings.pick(3, 2, 1)
    model = network(width, size)  # the released pipeline's network, built once
    t0 = time.perf_counter()
    fast = inference_network(model)  # ours: the default CPU path (Winograd F(4x4, 3x3)), built once
    build_s = time.perf_counter() - t0
    exact = inference_network(model, exact_conv=True)  # ours with --exact-conv
    f2x2 = winograd_inference(model, m=2)  # the alternative tile size, for the network figures
    folder = settings.work / "colorize"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, crop in enumerate(photo_crops(n_photos, size, seed=2)):
        paths.append(folder / f"photo_{i}.jpg")
        Image.fromarray(crop.permute(1, 2, 0).numpy()).save(paths[-1], quality=90)

    cases = {}
    for i, p in enumerate(paths):
        cases[f"released/{i}"] = lambda p=p: released(model, p, size)
        cases[f"ours/{i}"] = lambda p=p: ours(fast, p, size)
        cases[f"ours_exact/{i}"] = lambda p=p: ours(exact, p, size)
        if bf16_native():  # emulated bf16 would be ~20x slower and say nothing about the pipeline
            cases[f"ours_bf16/{i}"] = lambda p=p: _bf16(ours, exact, p, size)
    kinds = ("released", "ours", "ours_exact") + (("ours_bf16",) if bf16_native() else ())
    t = interleave(cases, repeats, warmup=1)
    per = {kind: [x for name, v in t.items() if name.startswith(kind + "/") for x in v] for kind in kinds}
    sec = {kind: median(per[kind]) for kind in kinds}

    with torch.no_grad():
        L = lightness(load_rgb(paths[0]), size)[1]
        net = interleave({"released": lambda: model.predict_ab(L), "ours": lambda: fast.predict_ab(L),
                          "ours_f2x2": lambda: f2x2.predict_ab(L)}, repeats, warmup=1)
    diffs, diffs_exact, diffs_bf16, diffs_ab, diffs_ab_f2x2, level = [], [], [], [], [], []
    errors: dict[str, float] = {}
    for p in paths:
        ref = released_rgb(model, p, size)
        img = load_rgb(p)
        got = colorize_rgb(fast, img, size)[0].permute(1, 2, 0).numpy()
        got_exact = colorize_rgb(exact, img, size)[0].permute(1, 2, 0).numpy()
        diffs.append(float(np.abs(got - ref).max()))
        diffs_exact.append(float(np.abs(got_exact - ref).max()))
        if bf16_native():
            got16 = _bf16(colorize_rgb, exact, img, size)[0].permute(1, 2, 0).float().numpy()
            diffs_bf16.append(float(np.abs(got16 - ref).max()))
        level.append(int(np.abs(np.rint(got * 255).astype(int) - np.rint(ref * 255).astype(int)).max()))
        L_net = lightness(img, size)[1]
        with torch.no_grad():
            ab_ref = model.predict_ab(L_net)
            diffs_ab.append(float((fast.predict_ab(L_net) - ab_ref).abs().max()))
            diffs_ab_f2x2.append(float((f2x2.predict_ab(L_net) - ab_ref).abs().max()))
        for name, e in layer_errors(model, fast, L_net).items():
            errors[name] = max(errors.get(name, 0.0), e)
    rel_s, ours_s = sec["released"], sec["ours"]
    figures = {
        "seconds_per_photo": {k: stats(v) for k, v in per.items()},
        "network_seconds": {k: stats(v) for k, v in net.items()},
        "network_speedup": median(net["released"]) / median(net["ours"]),
        "network_speedup_f2x2": median(net["released"]) / median(net["ours_f2x2"]),
        "network_share_of_released": median(net["released"]) / rel_s,
        "speedup": rel_s / ours_s, "speedup_exact_conv": rel_s / sec["ours_exact"],
        "speedup_bf16": rel_s / sec["ours_bf16"] if "ours_bf16" in sec else NOT_NATIVE,
        "max_abs_diff_rgb": max(diffs), "max_abs_diff_rgb_exact_conv": max(diffs_exact),
        "max_abs_diff_rgb_bf16": max(diffs_bf16) if diffs_bf16 else NOT_NATIVE, "max_8bit_level_diff": max(level),
        "max_abs_diff_ab_network": max(diffs_ab), "max_abs_diff_ab_network_f2x2": max(diffs_ab_f2x2),
        "winograd_layer_max_abs_error": errors,
        "winograd_layers": sum(isinstance(m, WinogradConv2d) for m in fast.modules()),
        "winograd_build_seconds": build_s,
    }
    checks = [
        Check("speed-up per photo (float32)", rel_s / ours_s, ">=", 2.0, baseline="released demo pipeline",
              note=f"{ours_s:.3f} s vs {rel_s:.3f} s; network {median(net['ours']):.3f} s vs "
                   f"{median(net['released']):.3f} s; with --exact-conv {sec['ours_exact']:.3f} s"),
        Check("max abs RGB difference", max(diffs), "<=", 1e-3, unit="abs", baseline="released demo pipeline"),
    ]
    workload = {"photos": n_photos, "size": size, "network": f"vgg_colorizer width {width} (seeded)",
                "temperature": 0.38, "repeats": repeats, "encode": "PNG in memory (PIL)"}
    notes = ["'ours' is the default CPU path: xchannel.colorize.inference_network (Winograd F(4x4, 3x3) for the "
             "3x3 stride-1 convolutions), built once before timing, as the released network is; 'ours_exact' is "
             "the same pipeline with --exact-conv (direct convolutions).",
             "'ours_bf16' is the exact-conv pipeline with the network under bfloat16 autocast (figures only: its "
             "output differs from the float32 one by max_abs_diff_rgb_bf16).",
             "winograd_layer_max_abs_error: each Winograd layer against the direct convolution on the same input; "
             "max_abs_diff_ab_network: the network's ab output (ab units) against the released network's, both "
             "over the photos' L. '_f2x2': the same with Winograd F(2x2, 3x3) (network only)."]
    return record(settings, NAME, TITLE, workload, figures, checks, notes, started)


def _bf16(fn, *args):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fn(*args)
