"""The geometry of the patch tasks (:mod:`~xchannel.pretext.jigsaw`, :mod:`~xchannel.pretext.context`).

A square crop of side S holds a ``grid`` x ``grid`` arrangement of square cells of ``cell = S // grid`` pixels
(centred in the crop); each cell holds one square patch of ``tile`` pixels, placed at the cell's centre and shifted
by a jitter drawn uniformly from -``jitter`` ... ``jitter`` pixels along each axis. Neighbouring patches are thus
``cell - tile`` pixels apart, give or take twice the jitter (the *gap*), so no patch shares an edge with another:

* jigsaw (Noroozi & Favaro): a 255 px crop, 85 px cells, 64 px tiles placed anywhere in their cell;
* context (Doersch, Gupta, Efros): 96 px patches 48 px apart, jitter up to 7 px: 144 px cells, a 432 px crop.

Cells are numbered row-major (cell ``r * grid + c`` is row r, column c). :data:`NEIGHBOURS` lists the 8 positions
of one cell relative to another that context prediction classifies, and :func:`neighbour_pairs` the ordered pairs
of neighbouring cells. :func:`normalise_patches` removes each patch's mean and scales its contrast to a fixed
value, so that neither brightness nor contrast tells patches apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xchannel.errors import UserError
from xchannel.models.alexnet import AB_SCALE, L_CENTER, L_SCALE

#: (row, column) offset of the second cell from the first, for context labels 0 ... 7: row-major around the first
#: cell (Doersch et al.'s labels 1 ... 8: top-left, top, top-right, left, right, bottom-left, bottom, bottom-right).
#: The label of the swapped pair is 7 - label.
NEIGHBOURS: tuple[tuple[int, int], ...] = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))

#: The contrast :func:`normalise_patches` gives every patch, as the network sees it (the root mean square over its
#: channels after their means are removed, in the network's input units (L - 50) / 100, a / 110, b / 110): that of
#: whole 227 px photographs, measured on the scikit-image photographs of the benchmarks (24 crops, median 0.10 over
#: L, a, b and 0.17 over L alone), so that the trunk sees at benchmark time the contrast it was trained on.
#: Doersch et al. scale their normalised patches by 50 (on 0 ... 255) for the same reason.
PATCH_RMS = {1: 0.17, 3: 0.10}
#: Contrast (same units) below which :func:`normalise_patches` does not amplify a patch (0.1 L units)
FLAT = 1e-3


@dataclass(frozen=True)
class TileGrid:
    """A grid of cells over a square crop, one jittered patch per cell (see the module docstring)."""

    grid: int  # cells per side
    cell: int  # cell side, pixels
    tile: int  # patch side, pixels
    jitter: int  # largest shift of a patch from its cell's centre, pixels, per axis
    origin: int  # the grid's top-left corner in the crop (the grid is centred)

    @classmethod
    def fit(cls, side: int, tile: int, jitter: int | None = None, grid: int = 3) -> "TileGrid":
        """The grid of ``grid`` x ``grid`` cells that fills a crop of ``side`` pixels; ``jitter=None`` lets a patch
        go anywhere in its cell."""
        cell = side // grid
        if not 1 <= tile <= cell:
            raise UserError(f"a {side} px crop holds {grid} x {grid} cells of {cell} px: the patch size must be "
                            f"1 ... {cell} px, got {tile} (raise data.crop or lower the patch size)")
        room = (cell - tile) // 2
        jitter = room if jitter is None else int(jitter)
        if not 0 <= jitter <= room:
            raise UserError(f"{tile} px patches in {cell} px cells can move by at most {room} px, got jitter {jitter}")
        return cls(grid, cell, tile, jitter, (side - grid * cell) // 2)

    @property
    def cells(self) -> int:
        return self.grid * self.grid

    def corners(self, device: torch.device | None = None) -> torch.Tensor:
        """(top, left) of every cell's patch before jitter, cells x 2 (int64), cells row-major."""
        rc = torch.stack(torch.meshgrid(torch.arange(self.grid), torch.arange(self.grid), indexing="ij"), -1)
        return (self.origin + self.cell * rc.reshape(-1, 2) + (self.cell - self.tile) // 2).to(device)

    def boxes(self, n: int, gen: torch.Generator | None, device: torch.device | None = None) -> torch.Tensor:
        """(top, left) of every patch of ``n`` crops, n x cells x 2 (int64): the corners plus the jitter drawn from
        ``gen`` (uniform over -jitter ... jitter, independently per patch and axis)."""
        shift = torch.randint(-self.jitter, self.jitter + 1, (n, self.cells, 2), generator=gen, device=device)
        return self.corners(device).unsqueeze(0) + shift


def cut(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` x ``size`` patches of ``images`` (N x C x H x W) whose top-left corners are ``boxes``
    (N x T x 2, (top, left)): N x T x C x size x size."""
    n, t = boxes.shape[:2]
    c, h, w = images.shape[1:]
    offsets = torch.arange(size, device=images.device)
    rows = (boxes[..., 0, None] + offsets).view(n, t, size, 1)
    cols = (boxes[..., 1, None] + offsets).view(n, t, 1, size)
    # one gather of every patch pixel from the flattened image planes: 4-5x faster on CPU than indexing with
    # broadcast (image, row, column) index tensors, which also needed a permute back to channels-first
    flat = (rows * w + cols).view(n, 1, t * size * size).expand(n, c, -1)
    return images.reshape(n, c, h * w).gather(2, flat).view(n, c, t, size, size).transpose(1, 2)


def neighbour_pairs(grid: int, centre_only: bool = False) -> list[tuple[int, int, int]]:
    """Every ordered pair of 8-connected cells ``(first, second, label)`` of a ``grid`` x ``grid`` arrangement,
    ``label`` the position of ``second`` relative to ``first`` (:data:`NEIGHBOURS`); both orders of each pair
    (40 for 3 x 3). ``centre_only``: the centre cell first, each of its 8 neighbours second."""
    pairs = []
    for first in range(grid * grid):
        r, c = divmod(first, grid)
        if centre_only and (r, c) != (grid // 2, grid // 2):
            continue
        for label, (dr, dc) in enumerate(NEIGHBOURS):
            if 0 <= r + dr < grid and 0 <= c + dc < grid:
                pairs.append((first, (r + dr) * grid + c + dc, label))
    return pairs


def normalise_patches(lab: torch.Tensor) -> torch.Tensor:
    """Each patch of ``lab`` (N x C x S x S, L or Lab in natural units) with its channel means removed and its
    contrast scaled to :data:`PATCH_RMS`, as the network sees it; returned in natural units (channel means at
    L = 50, a = b = 0). Contrast below :data:`FLAT` counts as :data:`FLAT`, so a flat patch stays flat.

    In the network's units z_c = (x_c - centre_c) / scale_c the contrast is rms = sqrt(mean_c var_c / scale_c^2),
    so the result is centre_c + (PATCH_RMS / rms) (x_c - mean_c): one pass over the pixels after the statistics."""
    c = lab.shape[1]
    scale = torch.tensor([L_SCALE, AB_SCALE, AB_SCALE][:c], dtype=lab.dtype, device=lab.device)
    centre = torch.tensor([L_CENTER, 0.0, 0.0][:c], dtype=lab.dtype, device=lab.device).view(1, c, 1, 1)
    var, mean = torch.var_mean(lab, dim=(2, 3), keepdim=True, correction=0)
    rms = (var / scale.view(1, c, 1, 1).pow(2)).mean(1, keepdim=True).sqrt()
    gain = PATCH_RMS[c] / rms.clamp_min(FLAT)
    return (lab - mean).mul_(gain).add_(centre)
