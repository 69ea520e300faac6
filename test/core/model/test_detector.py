"""The dense detection heads (detector.py): output widths, peaks, cell read-out, focal loss."""

from __future__ import annotations

import math

import pytest
import torch

from llmi3d_core.model import get_preset
from llmi3d_core.model.candidates import box_prompt_cell
from llmi3d_core.model.detector import (
    HEATMAP_PRIOR,
    CellGrid,
    DenseHeads,
    category_prior,
    cell_outputs,
    distinct_boxes,
    focal_loss,
    gather_cells,
    local_maxima,
    output_widths,
    peaks,
    values_at,
)

TINY = get_preset("tiny")
BASE_WIDTHS = {
    "heatmap": 1, "offset": 2, "box2d": 4, "keypoints": 2, "height_log_scale": 1, "dims": 3
}  # fmt: skip
VARIANTS = {
    "default": ({}, {**BASE_WIDTHS, "depth": 1, "depth_log_scale": 1, "rot6d": 6}),
    "categories and colours": (
        {"detector.categories": ["bin", "car", "lamp"], "detector.colors": ["red", "blue"]},
        {**BASE_WIDTHS, "depth": 1, "depth_log_scale": 1, "rot6d": 6, "category": 3, "color": 2},
    ),
    "no depth branch": ({"high_res.depth_branch": False}, {**BASE_WIDTHS, "rot6d": 6}),
    "euler": (
        {"heads.rotation": "euler"},
        {**BASE_WIDTHS, "depth": 1, "depth_log_scale": 1, "euler": 3},
    ),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_dense_heads_output_widths_and_maps(name):
    overrides, widths = VARIANTS[name]
    config = TINY.replace(**overrides)
    assert output_widths(config) == widths
    torch.manual_seed(0)
    heads = DenseHeads(16, config)
    maps = heads(torch.randn(2, 16, 5, 7))
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        k: (2, width, 5, 7) for k, width in widths.items()
    }
    # objectness starts at CenterNet's prior probability
    bias = heads.outputs["heatmap"].bias
    assert torch.sigmoid(bias).item() == pytest.approx(HEATMAP_PRIOR)


def test_what_and_where_read_separate_towers():
    """Heatmap, category and colour read the semantic tower; geometry the other one."""
    config = TINY.replace(**{"detector.categories": ["a", "b"]})
    torch.manual_seed(0)
    heads = DenseHeads(8, config)
    features = torch.randn(1, 8, 4, 4)
    before = heads(features)
    with torch.no_grad():
        for param in heads.geometric.parameters():
            param.add_(1.0)
    after = heads(features)
    for name in ("heatmap", "category"):
        assert torch.equal(before[name], after[name]), name
    for name in ("offset", "depth", "dims", "rot6d"):
        assert not torch.equal(before[name], after[name]), name


def _heat() -> torch.Tensor:
    """A (1, 1, 4, 5) logit map, strictly falling row-major, with three designed local maxima."""
    heat = -5.0 - 0.01 * torch.arange(20.0).view(1, 1, 4, 5)
    heat[0, 0, 0, 0], heat[0, 0, 0, 1] = 3.0, 2.0  # 2.0 sits next to 3.0: not a peak
    heat[0, 0, 2, 3], heat[0, 0, 3, 0] = 4.0, 1.0
    return heat


def test_peaks_hand_values():
    cells, logits = peaks(_heat(), 3)
    assert cells.tolist() == [[13, 0, 15]] and logits.tolist() == [[4.0, 3.0, 1.0]]
    # fewer local maxima than k: the next-strongest cells fill the remaining slots
    cells, logits = peaks(_heat(), 5)
    assert cells.tolist() == [[13, 0, 15, 1, 2]]
    assert logits[0].tolist() == pytest.approx([4.0, 3.0, 1.0, 2.0, -5.02])
    assert peaks(_heat(), 100)[0].shape == (1, 20)  # k is capped at the map size
    # a 1 x 1 window keeps every cell: plain top-k
    assert peaks(_heat(), 4, kernel=1)[0].tolist() == [[13, 0, 1, 15]]
    batched = torch.cat([_heat(), _heat().flip(-1)])
    cells, _ = peaks(batched, 3)
    assert cells.shape == (2, 3) and cells[1].tolist() == [11, 4, 19]


def test_local_maxima_are_what_peaks_ranks_first():
    maxima = local_maxima(_heat())
    assert maxima.shape == (1, 20) and maxima[0].nonzero().flatten().tolist() == [0, 13, 15]
    assert bool(local_maxima(_heat(), kernel=1).all())


def test_distinct_boxes_hand_values():
    boxes = torch.tensor([[
        [0.0, 0.0, 10.0, 10.0],  # kept
        [1.0, 0.0, 11.0, 10.0],  # IoU 0.82 with 0: dropped
        [4.0, 4.0, 6.0, 6.0],  # a small box inside 0 (IoU 0.04): kept
        [20.0, 0.0, 30.0, 10.0],  # apart: kept
        [4.0, 4.0, 6.5, 6.0],  # IoU 0.8 with 2: dropped
    ]])  # fmt: skip
    assert distinct_boxes(boxes, 3, 0.5).tolist() == [[0, 2, 3]]
    # fewer distinct boxes than k: the best dropped ones fill the slots, in rank order
    assert distinct_boxes(boxes, 5, 0.5).tolist() == [[0, 2, 3, 1, 4]]
    assert distinct_boxes(boxes, 2, 0.9).tolist() == [[0, 1]]  # nothing overlaps by > 0.9
    # a protected box is kept whatever it overlaps
    protected = torch.tensor([[False, True, False, False, False]])
    assert distinct_boxes(boxes, 4, 0.5, protected).tolist() == [[0, 1, 2, 3]]
    assert distinct_boxes(torch.cat([boxes, boxes.flip(1)]), 3, 0.5).tolist() == [
        [0, 2, 3], [0, 1, 3]  # flipped: boxes 4, 3, 1 kept; 2 (IoU 0.8 with 4), 0 (0.82 with 1)
    ]  # fmt: skip


def test_cell_grid_hand_values_and_round_trip():
    grid = CellGrid(stride=8.0, height=4, width=5, canvas_w=40.0, canvas_h=32.0)
    assert grid.centres_px(torch.tensor([7])).tolist() == [[20.0, 12.0]]  # row 1, column 2
    all_cells = torch.arange(20)
    assert torch.equal(grid.cell_of(grid.centres_px(all_cells)), all_cells)
    outside = torch.tensor([[-3.0, 100.0], [39.9, 0.0]])
    assert grid.cell_of(outside).tolist() == [15, 4]  # clamped to the border cells


def test_gather_cells_and_values_at_agree():
    maps = torch.randn(2, 3, 4, 5)
    cells = torch.tensor([[0, 7, 19], [3, 3, 12]])
    gathered = gather_cells(maps, cells)
    assert gathered.shape == (2, 3, 3)
    assert torch.equal(gathered[1, 2], maps[1, :, 2, 2])
    rows = torch.tensor([0, 0, 0, 1, 1, 1])
    assert torch.equal(values_at(maps, rows, cells.flatten()), gathered.reshape(6, 3))


def test_category_prior():
    log_priors = torch.tensor(
        [[math.log(1.5), 0.0, 0.0], [math.log(3.0), 0.0, 0.0], [0.1, 0.2, 0.3]]
    )
    assert torch.equal(category_prior(None, log_priors), log_priors[-1])
    assert torch.equal(category_prior(torch.zeros(2, 0), log_priors), log_priors[-1])
    sure = category_prior(torch.tensor([[30.0, -30.0]]), log_priors)
    assert torch.allclose(sure, log_priors[0:1], atol=1e-6)
    even = category_prior(torch.zeros(1, 2), log_priors)
    assert even[0, 0].item() == pytest.approx(0.5 * math.log(4.5))


def test_cell_outputs_hand_values():
    config = TINY.replace(**{"detector.categories": ["small", "big"]})
    grid = CellGrid(stride=8.0, height=4, width=5, canvas_w=40.0, canvas_h=32.0)
    widths = output_widths(config)
    raw = {name: torch.zeros(1, 2, width) for name, width in widths.items()}
    # slot 1: offset (0.5, -0.25) cells, a 2x wider box shifted right by half its width, a 2x
    # taller centre segment centred half its height lower, 2x longer, a sure "big" category
    raw["offset"][0, 1] = torch.tensor([0.5, -0.25])
    raw["box2d"][0, 1] = torch.tensor([0.5, 0.0, math.log(2.0), 0.0])
    raw["keypoints"][0, 1] = torch.tensor([0.5, math.log(2.0)])
    raw["dims"][0, 1] = torch.tensor([math.log(2.0), 0.0, 0.0])
    raw["category"][0, 1] = torch.tensor([-30.0, 30.0])
    log_priors = torch.tensor([[0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0], [0.0, 0.0, 0.0]])
    out = cell_outputs(raw, torch.tensor([[7, 7]]), grid, log_priors, config)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "center_uv": (1, 2, 2), "box2d": (1, 2, 4), "keypoints": (1, 2, 2),
        "height_log_scale": (1, 2, 1), "objectness_logit": (1, 2, 1), "depth": (1, 2, 1),
        "depth_log_scale": (1, 2, 1), "dims": (1, 2, 3), "rot6d": (1, 2, 6), "category": (1, 2, 2),
    }  # fmt: skip
    # slot 0 (all zeros): the cell centre (20, 12) px, a one-stride box and segment around it,
    # depth_scale, the category-averaged prior (exp(0.5 log 3) long), identity rotation
    assert out["center_uv"][0, 0].tolist() == pytest.approx([20 / 40, 12 / 32])
    assert out["box2d"][0, 0].tolist() == pytest.approx([16 / 40, 8 / 32, 24 / 40, 16 / 32])
    assert out["keypoints"][0, 0].tolist() == pytest.approx([8 / 32, 16 / 32])
    assert out["depth"][0, 0].item() == pytest.approx(config.heads.depth_scale)
    assert out["dims"][0, 0].tolist() == pytest.approx([math.sqrt(3.0), 1.0, 1.0])
    assert out["rot6d"][0, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    # slot 1: centre (24, 10); box 16 x 8 centred at (32, 10); segment 16 px, mid-row 18
    assert out["center_uv"][0, 1].tolist() == pytest.approx([24 / 40, 10 / 32])
    assert out["box2d"][0, 1].tolist() == pytest.approx([24 / 40, 6 / 32, 40 / 40, 14 / 32])
    assert out["keypoints"][0, 1].tolist() == pytest.approx([10 / 32, 26 / 32])
    assert out["dims"][0, 1].tolist() == pytest.approx([6.0, 1.0, 1.0], rel=1e-5)


def test_focal_loss_hand_values():
    target = torch.tensor([1.0, 0.5]).view(1, 1, 1, 2)
    logits = torch.zeros(1, 1, 1, 2)  # p = 0.5 everywhere
    none = torch.zeros(1, 1, 1, 2, dtype=torch.bool)
    # positive: -log(p) (1 - p)^2; negative: -log(1 - p) p^2 (1 - target)^4
    positive, negative = math.log(2) * 0.25, math.log(2) * 0.25 * 0.5**4
    one = torch.tensor(1.0)
    assert focal_loss(logits, target, none, one).item() == pytest.approx(positive + negative)
    assert focal_loss(logits, target, none, torch.tensor(2.0)).item() == pytest.approx(
        (positive + negative) / 2
    )
    ignore = torch.tensor([True, True]).view(1, 1, 1, 2)  # a positive cell is never ignored
    assert focal_loss(logits, target, ignore, one).item() == pytest.approx(positive)
    sure = torch.tensor([20.0, -20.0]).view(1, 1, 1, 2)
    assert focal_loss(sure, target, none, one).item() < 1e-6


def test_box_prompt_cell_is_the_strongest_in_the_middle_of_the_box():
    """A box prompt's candidate: its own object's peak, not a stronger neighbour's at the edge."""
    grid = CellGrid(stride=8.0, height=6, width=10, canvas_w=80.0, canvas_h=48.0)
    heatmap = torch.zeros(60)
    box = torch.tensor([8.0, 8.0, 56.0, 40.0])  # centre (32, 24); middle |dx| <= 12, |dy| <= 8
    heatmap[grid.cell_of(torch.tensor([36.0, 20.0]))] = 2.0  # in the middle
    heatmap[grid.cell_of(torch.tensor([12.0, 12.0]))] = 5.0  # in the box, at its edge
    heatmap[grid.cell_of(torch.tensor([70.0, 44.0]))] = 9.0  # outside the box
    cell = box_prompt_cell(heatmap, grid, box)
    assert cell == int(grid.cell_of(torch.tensor([36.0, 20.0])))
    # a box smaller than a cell holds no cell centre: the cell of its centre
    tiny = torch.tensor([17.0, 17.0, 18.0, 18.0])
    assert box_prompt_cell(heatmap, grid, tiny) == int(grid.cell_of(torch.tensor([17.5, 17.5])))
