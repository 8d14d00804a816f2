"""The patch tasks' math (jigsaw, context prediction) and their shared geometry, each check one that a wrong
implementation fails:

* permutations: the set is distinct permutations whose minimal and mean Hamming distances are what the generator
  reports (counted here pair by pair); the greedy choice is Noroozi & Favaro's Algorithm 1 (a literal transcription
  of it, and the hand-worked 3-item case: the three rotations, pairwise distance 3); it is a function of the seed
  and travels with the checkpoint, so a resumed run keeps it;
* geometry: on an image whose pixels hold their own coordinates, every tile is the pixel block at its box, every box
  lies in its own cell within the jitter around the cell's centre, and the jitter reaches both ends;
* jigsaw: slot s of puzzle i holds cell P[y_i][s] of image i; the inverse permutation restores the grid order;
* context: for every pair, the label's (row, column) offset is the sign of the second box's offset from the first,
  all 8 positions occur, swapped pairs have the opposite label, patches never touch;
* normalisation: zero mean per channel and the fixed contrast; brightness and contrast changes leave a patch as it
  was; colour guards (dropping, projection, gray images) do what their papers say;
* export: conv1 ... conv5 of the trunk reach the benchmarks' encoder unchanged, fc6 and fc7 are re-drawn.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from xchannel import color as C
from xchannel.pretext import get_task
from xchannel.pretext.augment import downsample, drop_colour, gray_images, project_green_magenta
from xchannel.pretext.base import step_generator
from xchannel.pretext.jigsaw import maximal_hamming_permutations
from xchannel.pretext.tiles import (NEIGHBOURS, PATCH_RMS, TileGrid, cut, neighbour_pairs, normalise_patches)
from xchannel.train.config import TrainConfig
from xchannel.utils.config import build_config

CPU = torch.device("cpu")


def _task(name: str, *sets: str):
    cfg = build_config(TrainConfig, None, [f"task={name}", "model.name=alexnet", "model.width=0.125", *sets])
    return get_task(name)(cfg, CPU)


def _photos(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """uint8 RGB images with smooth colour gradients and noise (every patch has contrast)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    base = torch.stack([yy, xx, 1 - yy * xx]) * 180 + 30
    noise = torch.rand(n, 3, side, side, generator=g) * 40
    return (base + noise).clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------------------------
# Permutation sets


def _hamming(a, b) -> int:
    return sum(x != y for x, y in zip(a, b))


def test_permutation_set_is_distinct_and_reports_its_own_hamming_distances():
    for count, seed in ((30, 0), (100, 7)):
        got = maximal_hamming_permutations(count, 9, seed)
        rows = [tuple(r) for r in got.table.tolist()]
        assert len(rows) == count == len(set(rows))
        assert all(sorted(r) == list(range(9)) for r in rows)
        d = [_hamming(a, b) for a, b in itertools.combinations(rows, 2)]
        assert got.min_distance == min(d) and got.mean_distance == pytest.approx(sum(d) / len(d))
    # the paper's set size from the default seed: what it reports, and the same set every time
    a = maximal_hamming_permutations(1000)
    assert a.table.shape == (1000, 9) and (a.min_distance, round(a.mean_distance, 3)) == (2, 8.008)
    assert np.array_equal(a.table[:30], maximal_hamming_permutations(30).table)  # greedy: a prefix of the larger set
    assert not np.array_equal(a.table[:5], maximal_hamming_permutations(5, seed=1).table)


def _algorithm_1(count: int, n: int, first: int) -> list[tuple[int, ...]]:
    """Noroozi & Favaro's Algorithm 1 as printed: move P_hat[j] to P, delete it, sum the Hamming distances of the
    rest to P, take the argmax (first on ties)."""
    remaining = list(itertools.permutations(range(n)))
    chosen, j = [], first
    while len(chosen) < count:
        chosen.append(remaining.pop(j))
        if len(chosen) < count:
            sums = [sum(_hamming(p, q) for q in chosen) for p in remaining]
            j = sums.index(max(sums))
    return chosen


def test_greedy_selection_is_algorithm_1_on_small_cases():
    got = maximal_hamming_permutations(3, 3, first=0)  # worked by hand: 012, then 120 (distance 3), then 201
    assert got.table.tolist() == [[0, 1, 2], [1, 2, 0], [2, 0, 1]] and got.min_distance == 3
    assert maximal_hamming_permutations(6, 3, first=0).min_distance == 2  # all six: some differ in two places
    every4 = list(itertools.permutations(range(4)))
    for count, first in ((5, 0), (8, 11), (12, 23)):
        assert [tuple(r) for r in maximal_hamming_permutations(count, 4, first=first).table.tolist()] == \
            _algorithm_1(count, 4, first), (count, first)
    assert [tuple(r) for r in maximal_hamming_permutations(20, 5, first=37).table.tolist()] == _algorithm_1(20, 5, 37)
    assert len(every4) == 24


def test_permutation_set_travels_with_the_task_state():
    task = _task("jigsaw", "pretext.permutations=20", "pretext.seed=3")
    state = task.state_dict()
    assert torch.equal(state["permutations"], torch.from_numpy(maximal_hamming_permutations(20, 9, 3).table))
    other = _task("jigsaw", "pretext.permutations=20", "pretext.seed=4")
    assert not torch.equal(other.state_dict()["permutations"], state["permutations"])
    other.load_state_dict(state)  # a resumed run trains on the set it started with
    assert torch.equal(other.state_dict()["permutations"], state["permutations"])
    assert other.permutations.min_distance == task.permutations.min_distance
    with pytest.raises(Exception, match="permutation set is 20 x 9"):
        _task("jigsaw", "pretext.permutations=30").load_state_dict(state)


# --------------------------------------------------------------------------------------------------------------
# Geometry


def _coordinates(n: int, side: int) -> torch.Tensor:
    """N x 3 x side x side int64 images: channel 0 the row, 1 the column, 2 the image number."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([torch.stack([rows, cols, torch.full_like(rows, i)]) for i in range(n)])


@pytest.mark.parametrize("side,tile,jitter", [(255, 64, None), (432, 96, 7), (100, 20, 3)])
def test_tiles_are_the_pixel_blocks_of_their_own_cells(side, tile, jitter):
    grid = TileGrid.fit(side, tile, jitter)
    assert grid.cell == side // 3 and grid.jitter == (jitter if jitter is not None else (grid.cell - tile) // 2)
    if (side, tile) == (255, 64):  # Noroozi & Favaro: 85 px cells, a 64 px tile anywhere in its cell
        assert (grid.cell, grid.jitter, grid.origin) == (85, 10, 0)
    n = 64
    boxes = grid.boxes(n, torch.Generator().manual_seed(1))
    images = _coordinates(n, side)
    tiles = cut(images, boxes, tile)
    assert tiles.shape == (n, 9, 3, tile, tile)
    for i in (0, 17, 63):
        for c in range(9):
            top, left = boxes[i, c].tolist()
            assert torch.equal(tiles[i, c, 0], torch.arange(top, top + tile).view(-1, 1).expand(tile, tile))
            assert torch.equal(tiles[i, c, 1], torch.arange(left, left + tile).view(1, -1).expand(tile, tile))
            assert bool((tiles[i, c, 2] == i).all())
    # every box in its own cell (row-major), within the jitter around the cell's centre, both ends reached
    r, c = torch.arange(9) // 3, torch.arange(9) % 3
    cell_top = torch.stack([r, c], -1) * grid.cell + grid.origin
    offset = boxes - cell_top  # position inside the cell
    centre = (grid.cell - tile) // 2
    assert bool((offset >= 0).all()) and bool((offset + tile <= grid.cell).all())
    assert int((offset - centre).abs().max()) == grid.jitter
    assert int((offset - centre).min()) == -grid.jitter and int((offset - centre).max()) == grid.jitter


def test_jigsaw_slots_hold_the_tiles_of_the_permuted_cells():
    task = _task("jigsaw", "pretext.tile=24", "pretext.permutations=12", "pretext.gray=0")
    images = _photos(5, 96)
    b = task.prepare({"image": images}, step_generator(2, 9, 0, CPU))
    table = torch.from_numpy(task.permutations.table)
    # the generator's first draw is the boxes: draw them again, cut and normalise the tiles in cell order
    grid = TileGrid.fit(96, 24, None)
    boxes = grid.boxes(5, step_generator(2, 9, 0, CPU))
    expect = normalise_patches(C.rgb_to_lab(cut(images, boxes, 24).flatten(0, 1)))
    assert torch.equal(b.patches, expect) and b.patches.shape == (45, 3, 24, 24)
    assert b.groups.shape == (5, 9) and b.y.shape == (5,)
    for i in range(5):
        assert b.groups[i].tolist() == [9 * i + int(cell) for cell in table[b.y[i]]]
        shown = b.patches[b.groups[i]]  # the puzzle, slot by slot
        restored = shown[torch.argsort(table[b.y[i]])]  # the inverse permutation
        assert torch.equal(restored, b.patches[9 * i: 9 * i + 9])
    again = task.prepare({"image": images}, step_generator(2, 9, 0, CPU))  # seeded per step
    assert torch.equal(again.y, b.y) and torch.equal(again.patches, b.patches)
    other = task.prepare({"image": images}, step_generator(2, 10, 0, CPU))
    assert not torch.equal(other.patches, b.patches)


@pytest.mark.parametrize("pairs", ["adjacent", "centre"])
def test_context_label_is_the_position_of_the_second_patch_for_all_8_positions(pairs):
    task = _task("context", "pretext.patch=20", "pretext.jitter=3", f"pretext.pairs={pairs}")
    images = _photos(3, 96)
    b = task.prepare({"image": images}, step_generator(0, 4, 0, CPU))
    grid = TileGrid.fit(96, 20, 3)
    boxes = grid.boxes(3, step_generator(0, 4, 0, CPU)).flatten(0, 1)  # the generator's first draw
    per_image = 40 if pairs == "adjacent" else 8
    assert b.groups.shape == (3 * per_image, 2) and b.patches.shape == (27, 3, 20, 20)
    assert sorted(set(b.y.tolist())) == list(range(8))
    seen = {}
    for (first, second), label in zip(b.groups.tolist(), b.y.tolist()):
        assert first // 9 == second // 9  # both patches of one image
        shift = boxes[second] - boxes[first]  # a cell or none along each axis, give or take twice the jitter
        assert tuple(torch.round(shift / grid.cell).long().tolist()) == NEIGHBOURS[label]
        assert int(shift.abs().max()) >= grid.cell - 2 * grid.jitter > 20  # apart by more than a patch: a gap
        seen[(first, second)] = label
        if pairs == "centre":
            assert first % 9 == 4
    if pairs == "adjacent":
        assert all(seen[(b_, a)] == 7 - lab for (a, b_), lab in seen.items())  # swapped pair: opposite position
    assert len(neighbour_pairs(3)) == 40 and len(neighbour_pairs(3, centre_only=True)) == 8


# --------------------------------------------------------------------------------------------------------------
# Normalisation and colour guards


def test_patches_are_normalised_to_zero_mean_and_the_fixed_contrast_whatever_their_exposure():
    lab = C.rgb_to_lab(_photos(4, 32))
    got = normalise_patches(lab)
    net = torch.cat([(got[:, :1] - 50) / 100, got[:, 1:] / 110], 1)  # what the network sees
    torch.testing.assert_close(net.mean(dim=(2, 3)), torch.zeros(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(net.pow(2).mean(dim=(1, 2, 3)).sqrt(), torch.full((4,), PATCH_RMS[3]))
    # brighter and more contrasted versions of the same patches (L scaled about 50, ab scaled) normalise alike
    other = torch.cat([(lab[:, :1] - 50) * 1.7 + 58, lab[:, 1:] * 1.7], 1)
    torch.testing.assert_close(normalise_patches(other), got, atol=1e-4, rtol=0)
    flat = normalise_patches(torch.full((1, 1, 8, 8), 70.0))  # a flat patch stays flat, at the neutral value
    assert bool((flat == flat[0, 0, 0, 0]).all()) and abs(float(flat[0, 0, 0, 0]) - 50.0) < 0.01


def test_colour_guards_do_what_their_papers_say():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(6, 3, 16, 16, generator=g) * 0.8 + 0.1
    dropped = drop_colour(rgb, torch.Generator().manual_seed(1))
    for i in range(6):  # one channel kept exactly, the other two its mean within +-0.5 grey levels
        kept = [c for c in range(3) if torch.equal(dropped[i, c], rgb[i, c])]
        assert len(kept) == 1
        for c in set(range(3)) - set(kept):
            assert float((dropped[i, c] - rgb[i, kept[0]].mean()).abs().max()) <= 0.5 / 255 + 1e-7
    # projection: gray pixels unchanged, no component left along green-magenta, a second projection changes nothing
    proj = project_green_magenta(rgb * 0.5 + 0.25)  # colours whose projection stays inside [0, 1]
    a = torch.tensor([-1.0, 2.0, -1.0]).view(1, 3, 1, 1)
    assert float((proj * a).sum(1).abs().max()) < 1e-6
    torch.testing.assert_close(project_green_magenta(proj), proj)
    gray = torch.full((1, 3, 4, 4), 0.4)
    assert torch.equal(project_green_magenta(gray), gray)
    # gray images: a = b = 0 for all patches of an image or none, about the share asked for
    lab = C.rgb_to_lab(rgb.repeat(100, 1, 1, 1))  # 600 patches, 50 images of 12
    out = gray_images(lab, 0.66, torch.Generator().manual_seed(2), group=12)
    zero = (out[:, 1:].abs().amax(dim=(1, 2, 3)) == 0).view(50, 12)
    assert bool((zero.all(1) | ~zero.any(1)).all()) and 0.5 < zero.all(1).float().mean() < 0.8
    assert torch.equal(out[:, :1], lab[:, :1])
    # downsampling: about a third of the patches, the rest untouched
    small = downsample(rgb.repeat(20, 1, 1, 1), 0.33, torch.Generator().manual_seed(3))
    changed = (small != rgb.repeat(20, 1, 1, 1)).flatten(1).any(1).float().mean()
    assert 0.2 < changed < 0.45


# --------------------------------------------------------------------------------------------------------------
# Export


@pytest.mark.parametrize("name", ["jigsaw", "context"])
def test_patch_task_exports_its_trunk_to_the_benchmark_encoder(tmp_path: Path, name: str):
    from xchannel.features.encoders import load_encoder
    from xchannel.utils.io import atomic_torch_save

    sets = ["pretext.tile=24", "pretext.permutations=10"] if name == "jigsaw" else ["pretext.patch=24"]
    task = _task(name, *sets)
    model = task.build_model()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # trained-looking BatchNorm statistics
        for m in model.trunk.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    entries = task.export(model)
    assert entries["pretrained_stages"] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert set(entries["heads"]) == {"head"} and entries["backbone"]["input_space"] == "Lab"
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({**entries, "step": 1}, path)
    enc = load_encoder(str(path), geometry="pretext", init_data=[torch.rand(4, 3, 96, 96, generator=g)])
    assert enc.info["reinitialised"] == ["fc6", "fc7"] and enc.input_mode == "color"
    x = torch.rand(2, 3, 96, 96, generator=g)
    model.eval()
    with torch.no_grad():
        want = model.trunk.features(C.rgb_to_lab(x), ["conv1", "conv5"])
        got = enc.features(x, ["conv1", "conv5"])
    for layer in want:  # the encoder folds BatchNorm: equal to float rounding
        torch.testing.assert_close(got[layer], want[layer], rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # and the benchmarks' 227 px CaffeNet runs to fc7
        assert math.isfinite(float(load_encoder(str(path)).features(torch.rand(1, 3, 227, 227), ["fc7"])["fc7"].sum()))
