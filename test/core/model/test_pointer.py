"""The candidate pointer (pointer.py), image positions (positions.py) and the MLP heads' anchors."""

from __future__ import annotations

import math

import pytest
import torch

from llmi3d_core.model.config import HeadConfig
from llmi3d_core.model.heads import KEYPOINT_SCALE, Heads
from llmi3d_core.model.pointer import (
    GEOMETRY_WIDTH,
    RESIDUAL_WIDTH,
    CandidatePointer,
    PointerInputs,
    candidate_geometry,
    pointer_loss,
    prompt_features,
    relations,
)
from llmi3d_core.model.positions import FOURIER_WIDTH, cell_centres, fourier_encoding, map_centres

NAN4, NAN2 = torch.full((1, 4), float("nan")), torch.full((1, 2), float("nan"))


def test_cell_centres_are_row_major_and_repeat_per_grid():
    expected = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    assert torch.equal(cell_centres(2, 4), expected)
    assert torch.equal(cell_centres(2, 8), torch.cat([expected, expected]))
    assert torch.equal(map_centres(1, 2), torch.tensor([[0.25, 0.5], [0.75, 0.5]]))
    with pytest.raises(ValueError, match="whole 2 x 2 grids"):
        cell_centres(2, 6)


def test_fourier_encoding_hand_values():
    code = fourier_encoding(torch.tensor([[0.5, 0.0]]))
    assert code.shape == (1, FOURIER_WIDTH)
    # u = 0.5: sin(pi/2 * f) for f = 1, 2, 4, 8, then cos; v = 0: sin 0, cos 1
    expected_u = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 1.0, 1.0]
    expected_v = [0.0] * 4 + [1.0] * 4
    assert code[0].tolist() == pytest.approx(expected_u + expected_v, abs=1e-6)


def test_pointer_loss_hand_values():
    target = torch.tensor([[False, True, False, False]])
    assert pointer_loss(torch.zeros(1, 4), target).item() == pytest.approx(math.log(4))
    # all mass on the target: ~0; all mass elsewhere: large
    assert pointer_loss(torch.tensor([[0.0, 50.0, 0.0, 0.0]]), target).item() < 1e-6
    assert pointer_loss(torch.tensor([[0.0, 0.0, 50.0, 0.0]]), target).item() > 40
    # two slots of the target (its centre cell and a neighbour): -log(2/4)
    both = torch.tensor([[True, True, False, False]])
    assert pointer_loss(torch.zeros(1, 4), both).item() == pytest.approx(math.log(2))
    # a query without its target among the candidates is skipped; none at all gives 0
    rows = torch.tensor([[False, True, False, False], [False, False, False, False]])
    assert pointer_loss(torch.zeros(2, 4), rows).item() == pytest.approx(math.log(4))
    logits = torch.zeros(1, 4, requires_grad=True)
    empty = pointer_loss(logits, torch.zeros(1, 4, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad
    # invalid candidates (-inf) take no probability mass
    masked = torch.tensor([[0.0, 0.0, float("-inf"), float("-inf")]])
    assert pointer_loss(masked, target).item() == pytest.approx(math.log(2))


def test_candidate_geometry_and_relations_hand_values():
    uv = torch.tensor([[[0.2, 0.5], [0.6, 0.5]]])
    z = torch.tensor([[2.0, 8.0]])
    dims = torch.tensor([[[1.0, 2.0, 0.5], [2.0, 2.0, 2.0]]])
    box = torch.tensor([[[0.1, 0.4, 0.3, 0.6], [0.2, 0.3, 1.0, 0.7]]])
    geometry = candidate_geometry(uv, z, dims, box)
    assert geometry.shape == (1, 2, GEOMETRY_WIDTH)
    assert geometry[0, 0].tolist() == pytest.approx(
        [0.2, 0.5, math.log(2), 0.0, 0.1, 0.4, 0.3, 0.6]
    )
    assert geometry[0, 1, 3].item() == pytest.approx(math.log(8))
    rel = relations(geometry)
    assert rel.shape == (1, 2, 2, GEOMETRY_WIDTH + 1)
    assert rel[0, 0, 1, :3].tolist() == pytest.approx([-0.4, 0.0, math.log(2 / 8)])
    assert torch.equal(rel[0, 0, 1, :-1], -rel[0, 1, 0, :-1])
    # horizontal overlap over the narrower box: [0.2, 0.3] of [0.1, 0.3] -> 0.5
    assert rel[0, 0, 1, -1].item() == pytest.approx(0.5)
    assert rel[0, 0, 0, -1].item() == pytest.approx(1.0)


def test_prompt_features_hand_values():
    boxes = torch.tensor([[[0.2, 0.2, 0.4, 0.6], [0.6, 0.6, 0.8, 0.8]]])
    none = prompt_features(boxes, NAN4, NAN2)
    assert none.shape == (1, 2, 10) and bool((none == 0).all())  # no prompt, no flags
    boxed = prompt_features(boxes, torch.tensor([[0.2, 0.2, 0.4, 0.6]]), NAN2)
    # the prompt equals candidate 0: IoU 1, centre offset 0, log area ratio 0; flags (1, 0)
    assert boxed[0, 0].tolist() == pytest.approx([1.0, 0, 0, 0, 0, 0, 0, 0, 1, 0], abs=1e-6)
    # candidate 1: no overlap, the prompt's centre 2 and 1.5 box sizes away
    assert boxed[0, 1, :3].tolist() == pytest.approx([0.0, 2.0, 1.5])
    pointed = prompt_features(boxes, NAN4, torch.tensor([[0.7, 0.75]]))
    assert pointed[0, :, 4].tolist() == [0.0, 1.0]  # inside candidate 1 only
    assert pointed[0, 1, 5:7].tolist() == pytest.approx([0.0, 0.25], abs=1e-6)  # in box sizes
    assert pointed[0, 0, 8:].tolist() == [0.0, 1.0]


def _inputs(B: int = 2, K: int = 5, T: int = 3, hidden: int = 16, width: int = 12):
    torch.manual_seed(0)
    valid = torch.ones(B, K, dtype=torch.bool)
    valid[1, -2:] = False
    return PointerInputs(
        f3d=torch.randn(B, hidden, requires_grad=True),
        words=torch.randn(B, T, hidden, requires_grad=True),
        word_mask=torch.tensor([[True, True, True], [True, False, False]]),
        features=torch.randn(B, K, width),
        geometry=torch.rand(B, K, GEOMETRY_WIDTH),
        objectness=torch.randn(B, K),
        valid=valid,
        box_prompt=NAN4.expand(B, 4),
        point_prompt=NAN2.expand(B, 2),
    )


def test_candidate_pointer_outputs_masks_and_gradients():
    inputs = _inputs()
    torch.manual_seed(1)
    pointer = CandidatePointer(hidden=16, candidate_width=12, dim=8, layers=2)
    logits, residual = pointer(inputs)
    assert logits.shape == (2, 5) and residual.shape == (2, 5, RESIDUAL_WIDTH)
    assert bool(torch.isinf(logits[1, -2:]).all()) and bool(torch.isfinite(logits[0]).all())
    assert bool((residual == 0).all())  # the residual starts at zero: the dense heads' box
    loss = pointer_loss(logits, torch.eye(5, dtype=torch.bool)[[0, 2]])
    loss.backward()
    assert inputs.f3d.grad is not None and bool(inputs.f3d.grad.abs().sum() > 0)
    assert inputs.words.grad is not None and bool(inputs.words.grad[0].abs().sum() > 0)
    # padding words are not attended to
    assert bool((inputs.words.grad[1, 1:] == 0).all())


def test_candidate_pointer_scores_do_not_depend_on_padding_or_order():
    inputs = _inputs()
    torch.manual_seed(1)
    pointer = CandidatePointer(hidden=16, candidate_width=12, dim=8, layers=1).eval()
    with torch.no_grad():
        logits, _ = pointer(inputs)
        changed = PointerInputs(**{**vars(inputs), "words": inputs.words.clone()})
        changed.words[1, 1:] += 100.0  # padding of query 1
        assert torch.allclose(pointer(changed)[0], logits, atol=1e-5)
        perm = torch.tensor([4, 2, 0, 1, 3])
        shuffled = PointerInputs(
            **{
                **vars(inputs),
                "features": inputs.features[:, perm],
                "geometry": inputs.geometry[:, perm],
                "objectness": inputs.objectness[:, perm],
                "valid": inputs.valid[:, perm],
            }
        )
        assert torch.allclose(pointer(shuffled)[0][0], logits[0, perm], atol=1e-5)


def test_point_prompt_raises_the_candidate_under_it():
    """The geometric prompt term alone (zero query) prefers the box the point falls in."""
    torch.manual_seed(0)
    pointer = CandidatePointer(hidden=4, candidate_width=2, dim=4, layers=0).eval()
    with torch.no_grad():
        pointer.query.weight.zero_()
        pointer.query.bias.zero_()
        pointer.objectness_weight.zero_()
        first, last = pointer.prompt[0], pointer.prompt[2]
        first.weight.zero_()
        first.bias.zero_()
        first.weight[0, 4] = 1.0  # the "point inside the box" feature
        last.weight.zero_()
        last.weight[0, 0] = 5.0
        last.bias.zero_()
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    inputs = PointerInputs(
        f3d=torch.zeros(1, 4), words=torch.zeros(1, 1, 4),
        word_mask=torch.ones(1, 1, dtype=torch.bool), features=torch.zeros(1, 2, 2),
        geometry=torch.cat([torch.zeros(1, 2, 4), boxes], dim=-1), objectness=torch.zeros(1, 2),
        valid=torch.ones(1, 2, dtype=torch.bool), box_prompt=NAN4,
        point_prompt=torch.tensor([[0.8, 0.9]]),
    )  # fmt: skip
    with torch.no_grad():
        logits, _ = pointer(inputs)
    inside = 5.0 * torch.nn.functional.gelu(torch.tensor(1.0)).item()
    assert logits[0].tolist() == pytest.approx([0.0, inside], abs=1e-5)


def _zero_last_layers(heads: Heads) -> None:
    with torch.no_grad():
        for mlp in heads.mlps.values():
            mlp[-1].weight.zero_()
            mlp[-1].bias.zero_()


def test_mlp_heads_anchors():
    """With zero last layers the MLP heads give a canvas-centred, prior-sized, upright box."""
    heads = Heads(8, HeadConfig(hidden=8, depth_scale=10.0, pointer=False))
    _zero_last_layers(heads)
    log_prior = torch.tensor([math.log(4.0), math.log(2.0), math.log(1.5)])
    out = heads(torch.randn(2, 8), log_prior)
    assert torch.allclose(out["center_uv"], torch.full((2, 2), 0.5))
    assert torch.allclose(out["depth"], torch.full((2, 1), 10.0))
    assert torch.allclose(out["dims"], torch.tensor([[4.0, 2.0, 1.5]] * 2))
    assert torch.allclose(out["rot6d"], torch.tensor([[1.0, 0, 0, 0, 1, 0]] * 2))
    box = out["box2d"]  # size sigmoid(0) = 0.5 around sigmoid(0) = 0.5
    assert torch.allclose(box, torch.tensor([[0.25, 0.25, 0.75, 0.75]] * 2))
    # keypoints: the box's middle row, one KEYPOINT_SCALE apart
    half = KEYPOINT_SCALE / 2
    assert torch.allclose(out["keypoints"], torch.tensor([[0.5 - half, 0.5 + half]] * 2))
    assert torch.equal(out["score_logit"], torch.zeros(2, 1))
