"""Context prediction: the relative position of two patches (Doersch, Gupta, Efros, "Unsupervised visual
representation learning by context prediction", ICCV 2015).

A crop holds a 3 x 3 grid of patches with gaps and jitter (:class:`~xchannel.pretext.tiles.TileGrid`; the paper's
96 px patches 48 px apart, jitter up to 7 px, in a 432 px crop). An example is an ordered pair of neighbouring
patches, and the network classifies where the second lies relative to the first among the 8 positions
(:data:`~xchannel.pretext.tiles.NEIGHBOURS`): CE(G([f(p1), f(p2)]), label), f the shared trunk, G the head (per
patch fc 4096, the pair concatenated -> fc 4096 -> fc 4096 -> 8: the released network's fc6 ... fc9;
:mod:`~xchannel.pretext.patch_level`). ``pairs: adjacent`` takes every ordered pair of 8-connected patches of the
grid, both orders (40 per crop), as the released sampler does on its grids; ``pairs: centre`` the centre patch
with each of its 8 neighbours.

**Shortcuts** (the paper's "avoiding trivial solutions"): the gap and the jitter keep lines and textures from
continuing across patches; a third of the patches are shown at a lower resolution (down to 10 x 10 pixels and back
up); every patch is normalised on its own (:func:`~xchannel.pretext.tiles.normalise_patches`); and, against
chromatic aberration, ``chroma: drop`` shows one colour channel per patch (colour dropping, as the released sampler
does it), ``chroma: project`` projects the green-magenta axis out (:mod:`~xchannel.pretext.augment`);
``input: gray`` trains an L network instead, which sees no colour at all.

Only conv1 ... conv5 transfer (the head is task-only): this is Table 2's "*" row, whose fc6 and fc7 were
initialised with Krähenbühl et al.'s k-means. Validation reports the position accuracy on the held-out images
beside the chance level 1/8.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from xchannel import color as C
from xchannel.errors import UserError
from xchannel.pretext.augment import downsample, drop_colour, project_green_magenta
from xchannel.pretext.patch_level import PatchExamples, PatchTask
from xchannel.pretext.tiles import NEIGHBOURS, TileGrid, cut, neighbour_pairs, normalise_patches

GRID = 3


@dataclass
class ContextConfig:
    input: Literal["gray", "color"] = "color"  # L or Lab patches
    patch: int = 96  # patch side, pixels (cells are data.crop / 3; the gap is cell - patch)
    jitter: int | None = 7  # largest shift of a patch from its cell's centre, pixels; null: anywhere in the cell
    pairs: Literal["adjacent", "centre"] = "adjacent"  # every neighbouring pair both ways, or centre -> neighbour
    chroma: Literal["drop", "project", "none"] = "drop"  # guard against chromatic aberration (color input)
    downsample: float = 0.33  # share of patches shown at a lower resolution
    dropout: float = 0.0  # before the head's fc layers (the released network has none; it uses BatchNorm)


class ContextTask(PatchTask):
    name = "context"
    description = "which of 8 positions a patch holds relative to its neighbour (gap, jitter, colour dropping)"
    paper = "Doersch, Gupta, Efros, Unsupervised Visual Representation Learning by Context Prediction, ICCV 2015"
    Config = ContextConfig
    per_patch, hidden, group = 4096, (4096, 4096), 2

    def __init__(self, cfg: Any, device: torch.device) -> None:
        super().__init__(cfg, device)
        if not 0.0 <= self.opt.downsample <= 1.0:
            raise UserError(f"pretext.downsample must be a probability in [0, 1], got {self.opt.downsample}")
        pairs = neighbour_pairs(GRID, centre_only=self.opt.pairs == "centre")
        self._pairs = torch.tensor(pairs, dtype=torch.long, device=device)  # (first cell, second cell, label)

    def num_classes(self) -> int:
        return len(NEIGHBOURS)

    def examples(self, batch: Mapping[str, Any], gen: torch.Generator | None) -> PatchExamples:
        """Patches in cell order (image i's cell c is patch 9 i + c); each pair of neighbouring cells (a, b) of
        image i is the example (9 i + a, 9 i + b) with the label of b's position relative to a."""
        images = self.square_images(batch)
        n = images.shape[0]
        grid = TileGrid.fit(images.shape[-1], self.opt.patch, self.opt.jitter, GRID)
        rgb = cut(images, grid.boxes(n, gen, images.device), grid.tile).flatten(0, 1).float() / 255.0
        rgb = downsample(rgb, self.opt.downsample, gen)
        if self.opt.input == "gray":
            lab = C.rgb_to_lightness(rgb)
        else:
            if self.opt.chroma == "drop":
                rgb = drop_colour(rgb, gen)
            elif self.opt.chroma == "project":
                rgb = project_green_magenta(rgb)
            lab = C.rgb_to_lab(rgb)
        first = torch.arange(n, device=images.device).view(n, 1) * grid.cells
        groups = torch.stack([first + self._pairs[:, 0], first + self._pairs[:, 1]], -1).flatten(0, 1)
        y = self._pairs[:, 2].repeat(n)
        return PatchExamples(normalise_patches(lab), groups, y)
