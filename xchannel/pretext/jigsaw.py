"""Jigsaw puzzles (Noroozi & Favaro, "Unsupervised learning of visual representations by solving jigsaw
puzzles", ECCV 2016).

A crop is cut into a 3 x 3 grid of cells with one jittered tile per cell (:class:`~xchannel.pretext.tiles.TileGrid`:
255 px crops, 85 px cells, 64 px tiles anywhere in their cell, as the paper's). A permutation is drawn from a fixed
set P; slot s of the puzzle shows the tile of cell P[y][s], and the network classifies which of the |P|
permutations it sees: CE(G(concat_s f(tile_{P[y][s]})), y), f the shared trunk, G the head (per tile fc 1024,
concatenated 9 x 1024 -> fc 4096 -> |P|, dropout 0.5: the paper's; :mod:`~xchannel.pretext.patch_level`).

**The permutation set** is the paper's Algorithm 1 (:func:`maximal_hamming_permutations`): a first permutation
drawn at random (from ``pretext.seed``), then greedily the permutation of the 9! whose summed Hamming distance to
those already chosen is largest (ties: the first in lexicographic order), until |P| are chosen (1000 by default,
``pretext.permutations``). The set is part of the task's state: written into every checkpoint (``task_state``)
and read back on resume, so a run trains on one set whatever the generator does later; validation reports its
minimal and mean pairwise Hamming distance.

**Shortcuts.** Every tile is normalised on its own (:func:`~xchannel.pretext.tiles.normalise_patches`: mean removed
per channel, contrast set to that of whole photographs), so that brightness and contrast do not tell tiles apart;
tiles are cut with gaps and jitter, so edges do not continue from one to the next; and with probability
``gray`` (0.66, VISSL's jigsaw recipe) an image is shown without colour (a = b = 0), against chromatic aberration.

Only conv1 ... conv5 transfer (the head is task-only). Validation reports the permutation accuracy on the held-out
images beside the chance level 1 / |P|.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from xchannel.errors import UserError
from xchannel.pretext.augment import gray_images
from xchannel.pretext.image_level import lab_input
from xchannel.pretext.patch_level import PatchExamples, PatchTask
from xchannel.pretext.tiles import TileGrid, cut, normalise_patches

GRID = 3


@dataclass
class JigsawConfig:
    input: Literal["gray", "color"] = "color"  # L or Lab tiles
    permutations: int = 1000  # |P| (the paper's 1000)
    seed: int = 0  # draws the first permutation of the greedy selection
    tile: int = 64  # tile side, pixels (cells are data.crop / 3)
    jitter: int | None = None  # largest shift of a tile from its cell's centre, pixels; null: anywhere in the cell
    gray: float = 0.66  # probability that an image is shown without colour (color input only)
    dropout: float = 0.5  # before the head's fc layers


@dataclass(frozen=True)
class PermutationSet:
    """A set of permutations (rows of ``table``: a count x n int64 array) and its minimal and mean pairwise
    Hamming distance (the number of positions in which two permutations differ)."""

    table: np.ndarray
    min_distance: int
    mean_distance: float

    @classmethod
    def of(cls, table: np.ndarray) -> "PermutationSet":
        table = np.asarray(table, dtype=np.int64)
        if len(table) < 2:
            return cls(table, table.shape[1] if table.ndim == 2 else 0, 0.0)
        d = (table[:, None, :] != table[None, :, :]).sum(-1)
        off = d[~np.eye(len(table), dtype=bool)]
        return cls(table, int(off.min()), float(off.mean()))


def maximal_hamming_permutations(count: int, n: int = 9, seed: int = 0, first: int | None = None) -> PermutationSet:
    """Noroozi & Favaro's Algorithm 1: ``count`` permutations of ``n`` items with maximal Hamming distance, chosen
    greedily. The first is permutation ``first`` of the n! in lexicographic order (drawn uniformly from a generator
    seeded with ``seed`` when None); each next one is the remaining permutation whose Hamming distance summed over
    those already chosen is largest (the first such in lexicographic order)."""
    every = np.array(list(itertools.permutations(range(n))), dtype=np.int8)
    if not 1 <= count <= len(every):
        raise UserError(f"a permutation set of {n} items holds 1 ... {len(every)} permutations, got {count}")
    j = int(np.random.default_rng(seed).integers(len(every))) if first is None else int(first)
    # The summed distance of permutation k to the chosen set C is n |C| - agree[k], agree[k] counting the
    # (chosen permutation, position) pairs in which k agrees with C; so the largest sum is the smallest agreement.
    # Choosing j adds 1 to the permutations holding j's item at each position (n lists of (n-1)! permutations).
    holding = [[np.flatnonzero(every[:, pos] == item) for item in range(n)] for pos in range(n)]
    agree = np.zeros(len(every), dtype=np.int64)
    taken = 1 << 40  # added to a chosen permutation's agreement: never the smallest again
    chosen = [j]
    while True:
        for pos, item in enumerate(every[j]):
            agree[holding[pos][item]] += 1
        agree[j] += taken
        if len(chosen) == count:
            break
        j = int(np.argmin(agree))
        chosen.append(j)
    return PermutationSet.of(every[chosen])


class JigsawTask(PatchTask):
    name = "jigsaw"
    description = "which of |P| maximal-Hamming permutations shuffled a 3x3 grid of jittered tiles; conv1-5 transfer"
    paper = "Noroozi & Favaro, Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles, ECCV 2016"
    Config = JigsawConfig
    per_patch, hidden, group = 1024, (4096,), GRID * GRID

    def __init__(self, cfg: Any, device: torch.device) -> None:
        super().__init__(cfg, device)
        if not 0.0 <= self.opt.gray <= 1.0:
            raise UserError(f"pretext.gray must be a probability in [0, 1], got {self.opt.gray}")
        self.permutations = maximal_hamming_permutations(self.opt.permutations, GRID * GRID, self.opt.seed)
        self._table = torch.from_numpy(self.permutations.table).to(device)

    def num_classes(self) -> int:
        return self.opt.permutations

    def examples(self, batch: Mapping[str, Any], gen: torch.Generator | None) -> PatchExamples:
        """Tiles in cell order (image i's cell c is patch 9 i + c); puzzle i's slot s holds patch 9 i + P[y_i][s]."""
        images = self.square_images(batch)
        n = images.shape[0]
        grid = TileGrid.fit(images.shape[-1], self.opt.tile, self.opt.jitter, GRID)
        tiles = cut(images, grid.boxes(n, gen, images.device), grid.tile).flatten(0, 1)
        lab = lab_input(tiles, self.opt.input, self.device)
        if self.opt.input == "color":
            lab = gray_images(lab, self.opt.gray, gen, group=grid.cells)
        y = torch.randint(self.num_classes(), (n,), generator=gen, device=images.device)
        groups = torch.arange(n, device=images.device).view(n, 1) * grid.cells + self._table[y]
        return PatchExamples(normalise_patches(lab), groups, y)

    def validate(self, model, batches, out_dir, step, max_images) -> dict:
        result = super().validate(model, batches, out_dir, step, max_images)
        return {**result, "min_hamming": self.permutations.min_distance,
                "mean_hamming": self.permutations.mean_distance} if result else result

    # -- state: the permutation set ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"permutations": torch.from_numpy(self.permutations.table.copy())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        table = state.get("permutations") if state else None
        if table is None:
            raise UserError(f"task jigsaw: the checkpoint holds no permutation set (task_state: {sorted(state)})")
        table = table.cpu().numpy()
        if table.shape != (self.opt.permutations, GRID * GRID):
            raise UserError(f"task jigsaw: the checkpoint's permutation set is {table.shape[0]} x {table.shape[1]}, "
                            f"pretext.permutations asks for {self.opt.permutations}")
        self.permutations = PermutationSet.of(table)
        self._table = torch.from_numpy(self.permutations.table).to(self.device)
