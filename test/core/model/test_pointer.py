"""The spatial pointer (pointer.py) and the heads' anchors: hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from llmi3d_core.model.config import HeadConfig
from llmi3d_core.model.heads import Heads
from llmi3d_core.model.pointer import SpatialPointer, cell_centres, pointer_loss, sample_at


def test_cell_centres_are_row_major_and_repeat_per_grid():
    expected = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    assert torch.equal(cell_centres(2, 4), expected)
    assert torch.equal(cell_centres(2, 8), torch.cat([expected, expected]))
    with pytest.raises(ValueError, match="whole 2 x 2 grids"):
        cell_centres(2, 6)


def test_pointer_loss_hand_values():
    # uniform over a 2 x 2 grid: -log(1/4)
    uniform = torch.zeros(1, 4)
    centre = torch.tensor([[0.9, 0.1]])  # column 1, row 0 -> cell 1
    assert pointer_loss(uniform, centre, 2).item() == pytest.approx(math.log(4))
    # all mass on cell 1: ~0; all mass on cell 2: large
    assert pointer_loss(torch.tensor([[0.0, 50.0, 0.0, 0.0]]), centre, 2).item() < 1e-6
    assert pointer_loss(torch.tensor([[0.0, 0.0, 50.0, 0.0]]), centre, 2).item() > 40
    # two grids (concat fusion): the target cell appears twice, mass 2/8
    assert pointer_loss(torch.zeros(1, 8), centre, 2).item() == pytest.approx(math.log(4))
    # a centre outside the image goes to the border cell (row 1, column 1 -> cell 3)
    outside = torch.tensor([[1.4, 1.2]])
    assert pointer_loss(torch.tensor([[0.0, 0.0, 0.0, 50.0]]), outside, 2).item() < 1e-6


def test_sample_at_reads_a_linear_ramp():
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(2, 1, 3, 4).contiguous()  # value = column
    uv = torch.tensor([[0.125, 0.5], [0.875, 0.1], [0.5, 0.5]])  # pixel centres 0, 3, and 1.5
    values = sample_at(ramp, uv)
    assert values.shape == (2, 3)
    assert torch.allclose(values[0], torch.tensor([0.0, 3.0, 1.5]))


def test_pointer_outputs_and_gradients():
    torch.manual_seed(0)
    pointer = SpatialPointer(hidden=16, dim=8, grid=3)
    f3d = torch.randn(2, 16, requires_grad=True)
    tokens = torch.randn(2, 9, 16, requires_grad=True)
    depth_map = torch.full((2, 1, 6, 6), 7.0)
    out = pointer(f3d, tokens, depth_map)
    assert out.logits.shape == (2, 9) and out.uv.shape == (2, 2)
    assert out.features.shape == (2, 16) and out.depth is not None
    assert ((out.uv > 0) & (out.uv < 1)).all()
    assert torch.allclose(out.depth, torch.full((2, 1), 7.0))  # a constant map reads back
    (out.uv.sum() + out.features.sum()).backward()
    assert f3d.grad is not None and tokens.grad is not None
    assert pointer(f3d, tokens).depth is None


def test_pointer_peaks_on_the_token_that_matches_the_query():
    pointer = SpatialPointer(hidden=4, dim=4, grid=2)
    with torch.no_grad():
        for proj in (pointer.q_proj, pointer.k_proj):
            proj.weight.copy_(torch.eye(4) * 10)
            proj.bias.zero_()
        pointer.position.weight.zero_()
        pointer.position.bias.zero_()
    tokens = torch.eye(4).unsqueeze(0)  # token i = e_i
    out = pointer(torch.eye(4)[2:3], tokens)  # the query looks like token 2: (0.25, 0.75)
    assert out.uv[0].tolist() == pytest.approx([0.25, 0.75], abs=1e-3)


def _zero_last_layers(heads: Heads) -> None:
    with torch.no_grad():
        for mlp in heads.mlps.values():
            mlp[-1].weight.zero_()
            mlp[-1].bias.zero_()


def test_heads_anchors():
    heads = Heads(8, HeadConfig(hidden=8, depth_scale=10.0))
    _zero_last_layers(heads)
    features = torch.randn(2, 8)
    plain = heads(features)
    assert torch.allclose(plain["center_uv"], torch.full((2, 2), 0.5))
    anchor_uv = torch.tensor([[0.2, 0.7], [0.9, 0.1]])
    anchor_depth = torch.tensor([[12.5], [3.0]])
    anchored = heads(features, anchor_uv=anchor_uv, anchor_depth=anchor_depth)
    assert torch.allclose(anchored["center_uv"], anchor_uv)
    assert torch.allclose(anchored["depth"], anchor_depth, rtol=1e-4)
    box = anchored["box2d"]  # size sigmoid(0) = 0.5 around the anchor
    assert torch.allclose((box[:, :2] + box[:, 2:]) / 2, anchor_uv)
    assert torch.allclose(box[:, 2:] - box[:, :2], torch.full((2, 2), 0.5))
