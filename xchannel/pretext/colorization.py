"""Colorization as a pretext task (the cross-channel encoder, Secs. 2 and 3.2).

Per batch, on the training device: RGB -> Lab; the network sees L; the targets are the ground-truth ab picked at
the head's stride (the released training nets subsample ab by the network's output stride rather than resizing),
soft-encoded, with the rebalancing weight of each pixel's nearest bin (Eq. 2-4). Images that carry no colour (the
gray mask) add nothing to the loss. Validation reports Table 1's AuC (raw and rebalanced) for the annealed-mean
prediction and for the gray baseline (a = b = 0), and writes a Fig. 4-style sample grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from xchannel import color as C
from xchannel.errors import UserError
from xchannel.metrics.colorization import AbAucMeter
from xchannel.pretext.base import PretextTask, unwrap
from xchannel.pretext.dense import at_head, head_pixels, pick
from xchannel.pretext.losses import l2_regression, rebalanced_cross_entropy

AB_SCALE = 110.0  # regression outputs are ab / 110, as the released model's output scaling


def load_prior(spec: str) -> torch.Tensor:
    """"reference" (the authors' ImageNet prior) or the path of a .npy written by ``xchannel prior``."""
    if spec == "reference":
        return C.reference_prior()
    path = Path(spec)
    try:
        p = torch.from_numpy(np.load(path, allow_pickle=False)).double()
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read the prior ({err})") from err
    if p.shape != (C.Q,) or not torch.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise UserError(f"{path}: a prior must be {C.Q} non-negative numbers with a positive sum")
    return p / p.sum()


class Batch:
    """One batch on the task's device: the network input ``L`` (N x 1 x H x W in [0, 100]), ``ab``
    (N x 2 x H x W) and the gray mask ``has_color`` ((N,) bool).

    Lab is a per-pixel map, so a batch made by :meth:`ColorizationTask.prepare` from the RGB images converts only
    what is read, when it is first read: ``L`` at full resolution (lightness only, no a and b); the ab of the pixels
    the loss takes its targets from (:meth:`ab_at`: 1/16 of the pixels at the VGG head's stride 4, 1/256 at
    AlexNet's 16); the full-resolution ``ab`` only if something reads it (validation). The values are those of
    converting the whole image (to float rounding).

    ``has_color`` is the released rule on the whole image (some |a| or |b| above the threshold), combined with
    the loader's flag. An image with colour at one of the loss's pixels has colour; only images whose picked
    pixels are all gray are converted in full to decide.

    ``Batch(L, ab, has_color)`` wraps tensors that are already computed.
    """

    def __init__(self, L: torch.Tensor | None = None, ab: torch.Tensor | None = None,
                 has_color: torch.Tensor | None = None, *, rgb: torch.Tensor | None = None,
                 gray_threshold: float = 5.0, allowed: torch.Tensor | None = None) -> None:
        if rgb is None and (L is None or ab is None):
            raise ValueError("Batch needs L and ab, or the RGB images (N x 3 x H x W, uint8 or [0, 1] float)")
        self._L = L
        self._ab = ab
        self._rgb = rgb
        self._has_color = has_color
        self._threshold = gray_threshold
        self._allowed = allowed  # the loader's per-image flag (False: a grayscale file), or None
        self._picked: dict[tuple[int, int, int, int], torch.Tensor] = {}

    @staticmethod
    def _unit(rgb: torch.Tensor) -> torch.Tensor:
        """What the colour functions take: uint8 codes as they are (converted through a table, see
        :func:`xchannel.color.rgb_to_lab`), floats in [0, 1] as float32."""
        return rgb if rgb.dtype == torch.uint8 else rgb.float()

    @property
    def L(self) -> torch.Tensor:
        if self._L is None:
            self._L = C.rgb_to_lightness(self._unit(self._rgb))
        return self._L

    @L.setter
    def L(self, value: torch.Tensor) -> None:
        self._L = value

    @property
    def ab(self) -> torch.Tensor:
        if self._ab is None:
            self._ab = C.rgb_to_lab(self._unit(self._rgb))[:, 1:]
        return self._ab

    def ab_at(self, stride: int, offset: int, out_hw: tuple[int, int]) -> torch.Tensor:
        """ab at pixels (offset + stride i, offset + stride j), N x 2 x out_hw (converted from those pixels only)."""
        key = (int(stride), int(offset), int(out_hw[0]), int(out_hw[1]))
        if key not in self._picked:
            if self._ab is not None:
                self._picked[key] = pick(self._ab, *key[:2], out_hw)
            else:
                with C.one_cpu_thread(self._rgb.device):  # small kernels (see one_cpu_thread)
                    self._picked[key] = C.rgb_to_lab(self._unit(pick(self._rgb, *key[:2], out_hw)))[:, 1:]
        return self._picked[key]

    @property
    def has_color(self) -> torch.Tensor:
        if self._has_color is None:
            self._has_color = self._gray_mask()
        return self._has_color

    def _gray_mask(self) -> torch.Tensor:
        if self._ab is not None or not self._picked:
            mask = C.has_color(self.ab, self._threshold)
        else:
            with C.one_cpu_thread(self._rgb.device):
                mask = C.has_color(next(iter(self._picked.values())), self._threshold)
            undecided = ~mask
            if bool(undecided.any()):
                full = C.rgb_to_lab(self._unit(self._rgb[undecided]))[:, 1:]
                mask[undecided] = C.has_color(full, self._threshold)
        if self._allowed is not None:
            mask &= self._allowed.to(mask.device).bool()
        return mask


@dataclass
class LossConfig:
    """The objective (Table 1's variants): classification with rebalancing (full), lam = 1 (no rebalancing), or
    L2 regression."""

    kind: Literal["classification", "l2"] = "classification"
    soft_encoding: Literal["paper", "released"] = "paper"  # 5 neighbours (paper) or 10 (released code)
    lam: float = 0.5  # Eq. 4; 1.0 = no rebalancing ("Ours (class)")
    sigma: float = 5.0  # smoothing of the prior in Eq. 4
    prior: str = "reference"  # "reference" (authors' ImageNet prior) or a .npy written by `xchannel prior`
    gray_threshold: float = 5.0  # images whose |a|, |b| never exceed this carry no colour and no loss


@dataclass
class ColorizationConfig:
    """The ``pretext:`` section of a colorization run (``pretext: {loss: {lam: 1.0}}``; overrides
    ``pretext.loss.kind=l2``). Configs written before tasks had a ``pretext:`` section kept these at the top level
    (``loss:``, ``temperature:``); :meth:`xchannel.train.config.TrainConfig.upgrade_legacy` moves them here."""

    loss: LossConfig = field(default_factory=LossConfig)
    temperature: float = 0.38  # annealed mean used for validation outputs (Eq. 5)


class ColorizationTask(PretextTask):
    """The paper's pretext task (see :mod:`xchannel.pretext.base`), with its options in ``pretext:``
    (:class:`ColorizationConfig`). The backbone is the whole network but its classifier (AlexNet: fc8; the VGG
    colorizer is exported whole)."""

    name = "colorization"
    description = "L -> ab: 313-way classification with class rebalancing (or L2 regression), L input"
    paper = "Zhang, Isola, Efros, Colorful Image Colorization, ECCV 2016"
    Config = ColorizationConfig
    configs = {"demo": "demo-alexnet", "imagenet": "alexnet-imagenet"}  # named before the other tasks existed

    def __init__(self, cfg: Any, device: torch.device) -> None:
        super().__init__(cfg, device)
        enc = C.SOFT_ENCODING_PRESETS[self.opt.loss.soft_encoding]
        self.neighbours, self.sigma = enc.neighbours, enc.sigma
        self.class_weights = C.rebalance_weights(load_prior(self.opt.loss.prior), self.opt.loss.lam, self.opt.loss.sigma).to(device)

    # -- model ---------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from xchannel.models import build_model

        model = build_model(self.cfg.model.name, width=self.cfg.model.width)
        if self.opt.loss.kind == "l2":
            set_regression_head(model)
        return model

    # -- data ----------------------------------------------------------------------------------------------------
    def prepare(self, batch: Mapping[str, Any], gen: torch.Generator | None = None) -> Batch:
        """``batch["image"]``, uint8 (or [0, 1] float) RGB N x 3 x H x W, and the loader's ``has_color`` -> L, ab
        and the gray mask, on the task's device, each computed when first read (see :class:`Batch`): the batch
        refers to the images (on the CPU, without a copy), so they must not be modified in place while the batch
        is in use. Nothing is random (``gen`` is unused)."""
        x = batch["image"].to(self.device, non_blocking=True)
        has_color = batch.get("has_color")
        allowed = has_color.to(self.device) if has_color is not None else None
        return Batch(rgb=x, gray_threshold=self.opt.loss.gray_threshold, allowed=allowed)

    def init_inputs(self, images: torch.Tensor) -> torch.Tensor:
        return self.prepare({"image": images}).L

    head_pixels = staticmethod(head_pixels)  # (stride, offset) of the model's head (xchannel.pretext.dense)
    ab_at_head = staticmethod(at_head)  # ground-truth ab picked at the head's cells

    # -- loss ----------------------------------------------------------------------------------------------------
    def targets(self, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 2-3 targets for ab at the head's pixels (N x 2 x h x w): the soft encoding in sparse form (bin
        indices and weights, N x k x h x w, nearest bin first) and each pixel's rebalancing weight (N x 1 x h x w),
        the weight of its nearest bin, i.e. of the target's argmax."""
        with C.one_cpu_thread(ab.device):  # small kernels (see one_cpu_thread)
            idx, wts = C.soft_encode_sparse(ab, self.neighbours, self.sigma)
            nearest = idx[:, :1]
            v = self.class_weights.to(ab.dtype).index_select(0, nearest.reshape(-1)).view(nearest.shape)
        return idx, wts, v

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        out = model(self.memory_format(batch.L))
        ab = batch.ab_at(*self.head_pixels(unwrap(model)), tuple(out.shape[-2:]))
        if self.opt.loss.kind == "l2":
            return {"l2": l2_regression(out.float() * AB_SCALE, ab, batch.has_color)}
        idx, wts, v = self.targets(ab)
        return {"ce": rebalanced_cross_entropy(out, idx, wts, v, batch.has_color)}

    # -- prediction ----------------------------------------------------------------------------------------------
    def predict(self, model: nn.Module, L: torch.Tensor, T: float | None = None) -> dict[str, torch.Tensor]:
        """Decoded ab at the input resolution: annealed mean at T (and mean, mode for classification models)."""
        T = self.opt.temperature if T is None else T
        out = model(L).float()
        size = tuple(L.shape[-2:])
        if self.opt.loss.kind == "l2":
            return {"regression": C.upsample_ab(out * AB_SCALE, size)}
        proj = getattr(model, "ab_projection", None)
        return {
            "mean": C.upsample_ab(C.decode_mean(out, proj), size),
            f"annealed T={T:g}": C.upsample_ab(C.annealed_mean(out, T, proj), size),
            "mode": C.upsample_ab(C.decode_mode(out, proj), size),
        }

    @torch.no_grad()
    def validate(self, model: nn.Module, batches, out_dir: Path, step: int, max_images: int) -> dict:
        """AuC (raw, rebalanced) of the main prediction and of the gray baseline; a sample grid PNG."""
        model.eval()
        ours, gray = AbAucMeter(keep_images=True), AbAucMeter(keep_images=True)
        grid_rows: list[np.ndarray] = []
        seen = 0
        main_key = "regression" if self.opt.loss.kind == "l2" else f"annealed T={self.opt.temperature:g}"
        for batch in batches:
            b = self.prepare(batch)
            preds = self.predict(model, b.L)
            ours.update(preds[main_key], b.ab)
            gray.update(torch.zeros_like(b.ab), b.ab)
            if len(grid_rows) < 6:
                grid_rows += sample_grid_rows(b.L, b.ab, preds, 6 - len(grid_rows))
            seen += b.L.shape[0]
            if seen >= max_images:
                break
        model.train()
        if seen == 0:
            return {}
        grid = np.concatenate(grid_rows, axis=0)
        out_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(out_dir / f"samples_{step:08d}.png")
        # 95 % intervals over the validation images (fractions, as the AuCs)
        ci95 = {f"{who}{key}": [v / 100.0 for v in meter.interval(rebalanced).to_dict()["ci95"]]
                for who, meter in (("", ours), ("gray_", gray))
                for key, rebalanced in (("auc", False), ("auc_rebal", True))}
        return {"auc": ours.auc(), "auc_rebal": ours.auc(rebalanced=True), "gray_auc": gray.auc(),
                "gray_auc_rebal": gray.auc(rebalanced=True), "ci95": ci95, "val_images": seen,
                "columns": ["input (L)", *preds.keys(), "ground truth"]}


def set_regression_head(model: nn.Module) -> None:
    """Replace the 313-way classifier (the last conv with Q outputs) by a 1x1 regression of ab / 110.

    Table 1's L2 variants share the network up to the last layer; "L2, ft" starts from a classification
    checkpoint whose other weights load unchanged.
    """
    name, old = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.out_channels == C.Q][-1]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Conv2d(old.in_channels, 2, kernel_size=1, bias=True))


def sample_grid_rows(L: torch.Tensor, ab: torch.Tensor, preds: dict[str, torch.Tensor], n: int) -> list[np.ndarray]:
    """Rows of a Fig. 4-style grid: gray input | each decoding | ground truth, as uint8 RGB arrays."""
    rows = []
    for i in range(min(n, L.shape[0])):
        cells = [torch.cat([L[i : i + 1], torch.zeros_like(ab[i : i + 1])], 1)]
        cells += [torch.cat([L[i : i + 1], p[i : i + 1]], 1) for p in preds.values()]
        cells.append(torch.cat([L[i : i + 1], ab[i : i + 1]], 1))
        rgb = C.lab_to_rgb(torch.cat(cells).double())  # K x 3 x H x W
        row = torch.cat(list(rgb), dim=2)  # 3 x H x (K W)
        rows.append((row.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return rows
