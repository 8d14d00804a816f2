"""``xchannel evaluate temperature-grid``: Fig. 4 of the paper, the effect of the temperature T of the annealed mean.

Eq. 5 decodes a predicted distribution z over the 313 ab bins as the mean of ``f_T(z) = exp(log z / T) / sum``
(:func:`xchannel.color.annealed_mean`). T = 1 gives the mean of the distribution: spatially consistent but
desaturated, sepia; T -> 0 gives its mode: vibrant but spatially inconsistent ("the red splotches on the bus");
the paper uses T = 0.38. Fig. 4 shows, for each image, the decodings at

    T = 1 (mean), 0.77, 0.58, 0.38, 0.29, 0.14, -> 0 (mode)

from left to right (:data:`FIG4_TEMPERATURES`; T = 0 stands for the limit, computed as the mode). Every column is
the same network output, decoded at its T and upsampled to the image by the network's own ``predict_ab`` (bilinear
for the VGG colorizer, between head centres for AlexNet), then joined with the image's L.

Inputs are image files or folders; each image is resized (shorter side) and center-cropped to ``--size`` px. The
figure is written atomically, with a JSON sidecar holding the configuration and the images used.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from xchannel import color as C
from xchannel.errors import UserError
from xchannel.utils.io import atomic_write_json, save_figure

HELP = "Fig. 4: a grid of annealed-mean decodings at T = 1 (mean), 0.77, 0.58, 0.38, 0.29, 0.14, -> 0 (mode)."
DESCRIPTION = __doc__

#: Fig. 4's temperatures, left to right: the mean (T = 1) first, the mode (T -> 0, written 0) last.
FIG4_TEMPERATURES: tuple[float, ...] = (1.0, 0.77, 0.58, 0.38, 0.29, 0.14, 0.0)


def column_title(T: float) -> str:
    if T == 1.0:
        return "Mean\nT = 1"
    if T == 0.0:
        return "Mode\nT → 0"
    return f"T = {T:g}"


@torch.no_grad()
def decode_temperatures(model: nn.Module, L: torch.Tensor,
                        temperatures: Sequence[float] = FIG4_TEMPERATURES) -> torch.Tensor:
    """ab at every temperature: L (N x 1 x H x W, [0, 100]) -> N x K x 2 x H x W, in the order of ``temperatures``.

    The model must predict a distribution over the bins (``predict_ab(L, T)``; T = 0 decodes the mode).
    """
    if not hasattr(model, "predict_ab"):
        raise UserError(f"{type(model).__name__} has no predict_ab: Fig. 4 needs a colorizer that predicts a "
                        f"distribution over the ab bins")
    bad = [T for T in temperatures if T < 0 or T > 1]
    if bad:
        raise UserError(f"temperatures must lie in [0, 1] (0: the mode), got {bad}")
    model.eval()
    return torch.stack([model.predict_ab(L, float(T)).float() for T in temperatures], dim=1)


def find_images(items: Sequence[str | os.PathLike], limit: int = 0) -> list[Path]:
    """Image files from a list of files and folders (a folder's images in sorted order, recursively)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                raise UserError(f"{p}: no image files in this folder")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"{p}: no such image file or folder")
    return out[:limit] if limit else out


def load_images(paths: Sequence[Path], size: int) -> torch.Tensor:
    """sRGB images (N x 3 x size x size in [0, 1]): shorter side resized to ``size``, center crop."""
    from xchannel.data.images import ResizeCenterCrop, load_rgb

    transform = ResizeCenterCrop(size, resize=size, dtype=torch.float32)
    return torch.stack([transform(load_rgb(p)) for p in paths])  # load_rgb names the file of a bad image


def temperature_grid(model: nn.Module, rgb: torch.Tensor, temperatures: Sequence[float] = FIG4_TEMPERATURES,
                     batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L N x 1 x H x W, ab N x K x 2 x H x W, ground-truth ab N x 2 x H x W) for sRGB images ``rgb``."""
    device = next(model.parameters()).device
    lab = C.rgb_to_lab(rgb.float())
    grids = [decode_temperatures(model, lab[s: s + batch_size, :1].to(device), temperatures).cpu()
             for s in range(0, lab.shape[0], batch_size)]
    return lab[:, :1], torch.cat(grids), lab[:, 1:]


def grid_to_rgb(L: torch.Tensor, ab: torch.Tensor) -> np.ndarray:
    """uint8 images N x K x H x W x 3 of the decodings (each with the image's own L)."""
    n, k = ab.shape[:2]
    lab = torch.cat([L[:, None].expand(-1, k, -1, -1, -1), ab], dim=2).flatten(0, 1)
    rgb = C.lab_to_rgb(lab.double()).float()
    arr = (rgb.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    return arr.reshape(n, k, *arr.shape[1:])


def render_figure4(L: torch.Tensor, ab: torch.Tensor, temperatures: Sequence[float], out: str | os.PathLike,
                   truth: torch.Tensor | None = None, title: str | None = None, row_labels: Sequence[str] = ()):
    """Draw the grid (rows: images; columns: temperatures, then the ground truth when given) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = grid_to_rgb(L, ab)
    titles = [column_title(T) for T in temperatures]
    if truth is not None:
        cells = np.concatenate([cells, grid_to_rgb(L, truth[:, None])], axis=1)
        titles.append("Ground truth")
    n, k = cells.shape[:2]
    fig, axes = plt.subplots(n, k, figsize=(1.6 * k, 1.6 * n + 0.6), dpi=120, squeeze=False)
    for i in range(n):
        for j in range(k):
            ax = axes[i][j]
            ax.imshow(cells[i, j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=8)
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=6)
    fig.suptitle(title or "Annealed-mean decoding at decreasing temperature T (Fig. 4; the paper uses T = 0.38)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)


def make_figure4(checkpoint: str | os.PathLike, images: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 size: int = 256, max_images: int = 6, temperatures: Sequence[float] = FIG4_TEMPERATURES,
                 show_truth: bool = False, device: str = "cpu", title: str | None = None) -> dict[str, Any]:
    """Python API of the command: Fig. 4 for ``checkpoint`` on ``images``; writes ``out`` and ``out.json``."""
    from xchannel.checkpoints import load_network

    model, info = load_network(checkpoint)
    if info.get("loss_kind") == "l2":
        raise UserError(f"{checkpoint}: an L2 (regression) colorizer predicts one ab per pixel, not a distribution; "
                        f"Fig. 4 needs a classification colorizer")
    if size < 16:
        raise UserError(f"--size must be at least 16 pixels, got {size}")
    paths = find_images(images, max_images)
    rgb = load_images(paths, size)
    L, ab, truth = temperature_grid(model.to(device), rgb, temperatures)
    render_figure4(L, ab, temperatures, out, truth if show_truth else None, title, [p.name for p in paths])
    meta = {"kind": "figure4", "checkpoint": str(checkpoint), "source": info.get("source"),
            "images": [str(p) for p in paths], "size": size, "temperatures": list(temperatures),
            "columns": [column_title(T).replace("\n", " ") for T in temperatures] + (["Ground truth"] if show_truth
                                                                                     else []),
            "figure": str(out)}
    atomic_write_json(Path(out).with_suffix(".json"), meta)
    return meta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="classification colorizer (xchannel or released weights)")
    parser.add_argument("--images", required=True, nargs="+", metavar="DIR|FILE", help="image files or folders")
    parser.add_argument("-o", "--out", required=True, help="output figure (.png, .pdf, .svg)")
    parser.add_argument("--size", type=int, default=256, help="image side fed to the network (default 256)")
    parser.add_argument("--max-images", type=int, default=6, help="rows of the grid (default 6; 0: all)")
    parser.add_argument("--show-truth", action="store_true", help="add the ground-truth colours as a last column")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--title")


def run(args: argparse.Namespace) -> int:
    make_figure4(args.checkpoint, args.images, args.out, size=args.size, max_images=args.max_images,
                 show_truth=args.show_truth, device=args.device, title=args.title)
    print(f"wrote {args.out}")
    return 0
