"""The candidate pointer (pointer.py), image positions and rays (positions.py), the MLP heads."""

from __future__ import annotations

import math

import pytest
import torch

from llmi3d_core.model.batch_losses import text_losses
from llmi3d_core.model.config import HeadConfig
from llmi3d_core.model.heads import KEYPOINT_SCALE, Heads
from llmi3d_core.model.pointer import (
    EVIDENCE,
    GEOMETRY_WIDTH,
    RESIDUAL_WIDTH,
    CandidatePointer,
    PointerInputs,
    PointerOutput,
    candidate_geometry,
    fit_answer_calibration,
    fit_calibration,
    pointer_loss,
    prompt_features,
    prompted,
    relations,
)
from llmi3d_core.model.positions import (
    FOURIER_WIDTH,
    RAY_CHANNELS,
    cell_centres,
    fourier_encoding,
    map_centres,
    ray_map,
)
from llmi3d_core.model.spatial_relations import ANCHORS, RELATIONS

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


def test_ray_map_hand_values():
    """Each cell's normalised viewing ray K^-1 [u, v, 1] at its centre, and the squares."""
    # a 4 x 6 map of stride 8 (a 32 x 48 canvas); the principal point at cell (row 1, col 2)'s
    # centre (20, 12) px for the first camera, at the canvas corner for the second
    K = torch.tensor(
        [[[100.0, 0.0, 20.0], [0.0, 50.0, 12.0], [0.0, 0.0, 1.0]],
         [[200.0, 0.0, 0.0], [0.0, 200.0, 0.0], [0.0, 0.0, 1.0]]]
    )  # fmt: skip
    rays = ray_map(K, 4, 6, 8.0)
    assert rays.shape == (2, RAY_CHANNELS, 4, 6)
    assert rays[0, :, 1, 2].tolist() == pytest.approx([0.0] * 4, abs=1e-7)  # the optical axis
    # cell (0, 0) has its centre at (4, 4) px
    x, y = (4 - 20) / 100, (4 - 12) / 50
    assert rays[0, :, 0, 0].tolist() == pytest.approx([x, y, x * x, y * y])
    # the last cell (3, 5) at (44, 28) px; right and down are positive
    x, y = (44 - 20) / 100, (28 - 12) / 50
    assert rays[0, :, 3, 5].tolist() == pytest.approx([x, y, x * x, y * y])
    assert rays[1, :2, 3, 5].tolist() == pytest.approx([44 / 200, 28 / 200])
    # x_n depends on the column alone, y_n on the row alone
    assert torch.equal(rays[0, 0, 0], rays[0, 0, 3])
    assert torch.equal(rays[0, 1, :, 0], rays[0, 1, :, 5])


def _bce(logit: float, target: bool) -> float:
    """Binary cross-entropy of one logit, by hand: softplus(-x) for a target, softplus(x) else."""
    return math.log1p(math.exp(-logit if target else logit))


def test_pointer_loss_hand_values():
    """Per-candidate BCE plus "no object" (the last logit), summed per query, mean over queries."""
    target = torch.tensor([[False, True, False, False]])
    # every logit 0: five terms of log 2 (four candidates and "no object")
    assert pointer_loss(torch.zeros(1, 5), target).item() == pytest.approx(5 * math.log(2))
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.5, -3.0]])
    expected = sum(_bce(x, t) for x, t in zip(logits[0].tolist(), [0, 1, 0, 0, 0], strict=True))
    assert pointer_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # all mass on the target and none on "no object": ~0; on another candidate: large
    assert pointer_loss(torch.tensor([[-50.0, 50.0, -50.0, -50.0, -50.0]]), target).item() < 1e-6
    assert pointer_loss(torch.tensor([[-50.0, -50.0, 50.0, -50.0, -50.0]]), target).item() > 99


def test_pointer_loss_of_a_negative_query_targets_the_null_slot():
    none = torch.zeros(1, 4, dtype=torch.bool)
    # "no object" is the one target: its logit alone is pushed up
    assert pointer_loss(torch.tensor([[-50.0] * 4 + [50.0]]), none).item() < 1e-6
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, 2.0]])
    assert pointer_loss(logits, none).item() == pytest.approx(4 * math.log(2) + _bce(2.0, True))
    # the gradient lowers every candidate and raises "no object"
    logits = torch.zeros(1, 5, requires_grad=True)
    pointer_loss(logits, none).backward()
    assert logits.grad is not None
    assert logits.grad[0].tolist() == pytest.approx([0.5, 0.5, 0.5, 0.5, -0.5])


def test_pointer_loss_of_several_targets_and_of_a_batch():
    both = torch.tensor([[True, False, True, False]])  # "all the chairs": two of them
    logits = torch.tensor([[50.0, -50.0, 50.0, -50.0, -50.0]])
    assert pointer_loss(logits, both).item() < 1e-6  # every target high, "no object" low
    one_missed = torch.tensor([[50.0, -50.0, -2.0, -50.0, -50.0]])
    assert pointer_loss(one_missed, both).item() == pytest.approx(_bce(-2.0, True), rel=1e-4)
    # the mean over queries: a batch of the two costs half their sum
    rows = torch.cat([both, torch.zeros(1, 4, dtype=torch.bool)])
    pair = torch.cat([one_missed, torch.zeros(1, 5)])
    expected = (_bce(-2.0, True) + 5 * math.log(2)) / 2
    assert pointer_loss(pair, rows).item() == pytest.approx(expected, rel=1e-4)


def test_pointer_loss_ignores_invalid_slots():
    target = torch.tensor([[True, False, False, False]])
    valid = torch.tensor([[True, True, False, False]])
    # invalid candidates carry -inf (CandidatePointer's padding): no term, no NaN
    logits = torch.tensor([[0.0, 0.0, float("-inf"), float("-inf"), 0.0]], requires_grad=True)
    loss = pointer_loss(logits, target, valid)
    assert loss.item() == pytest.approx(3 * math.log(2))
    loss.backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    assert logits.grad[0, 2:4].tolist() == [0.0, 0.0]
    # whatever an invalid slot holds, it changes nothing
    other = torch.tensor([[0.0, 0.0, 7.0, -7.0, 0.0]])
    assert pointer_loss(other, target, valid).item() == pytest.approx(3 * math.log(2))
    # a negative query whose only candidates are invalid still learns "no object"
    none, invalid = torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.bool)
    assert pointer_loss(torch.zeros(1, 5), none, invalid).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize(("temperature", "bias"), [(10**0.3, 0.5), (10**-0.3, -1.0)])
def test_fit_calibration_recovers_a_known_temperature_and_bias(temperature, bias):
    """Logits of a calibrated model, scaled: logit = (z - b) T, so sigmoid(logit / T + b) is
    the true probability sigmoid(z); the fit finds (T, b) back (both lie on its grid)."""
    generator = torch.Generator().manual_seed(0)
    z = 2.0 * torch.randn(20000, generator=generator)
    targets = torch.rand(20000, generator=generator) < torch.sigmoid(z)
    logits = (z - bias) * temperature
    fitted = fit_calibration(logits, targets)
    assert fitted == pytest.approx((temperature, bias), rel=0.05, abs=0.05)
    # in the pointer's layout (B, K + 1), with -inf for invalid candidates (left out)
    padded = torch.cat([logits.view(-1, 4), torch.full((5000, 1), float("-inf"))], dim=1)
    flags = torch.cat([targets.view(-1, 4), torch.zeros(5000, 1, dtype=torch.bool)], dim=1)
    assert fit_calibration(padded, flags) == pytest.approx(fitted)
    # already calibrated logits: the identity
    assert fit_calibration(z, targets) == pytest.approx((1.0, 0.0), abs=0.1)


def test_fit_calibration_without_data_is_the_identity():
    assert fit_calibration(torch.empty(0), torch.empty(0)) == (1.0, 0.0)
    only_invalid = torch.full((2, 3), float("-inf"))
    assert fit_calibration(only_invalid, torch.zeros(2, 3)) == (1.0, 0.0)


def answer_examples(count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Evidence of worded queries' best candidates where the logit (column 0) says little and
    column 2 tells right answers from negative queries; positives answered wrong have evidence
    of their own (column 3 high), which must not sway the first step of the fit."""
    generator = torch.Generator().manual_seed(seed)
    width = len(EVIDENCE)
    evidence = torch.randn(count, width, generator=generator)
    kind = torch.randint(0, 3, (count,), generator=generator)  # 0 negative, 1 right, 2 wrong
    evidence[:, 2] += 2.0 * (kind == 1) - 2.0 * (kind == 0)
    evidence[:, 3] += 4.0 * (kind == 2)
    calibrate = torch.rand(count, generator=generator) < 0.6
    return {"evidence": evidence, "right": kind == 1, "negative": kind == 0,
            "calibrate": calibrate}  # fmt: skip


def answer_scores(weights: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(evidence @ weights[:-1] + weights[-1])


def test_fit_answer_calibration_tells_right_answers_from_negatives():
    """The fitted score ranks right answers above negative queries by the evidence that tells
    them apart (not by the logit here), and is a probability of being right on the queries it
    was calibrated on."""
    data = answer_examples(4000)
    weights = fit_answer_calibration(**data)
    assert weights.shape == (len(EVIDENCE) + 1,)
    with torch.no_grad():  # as the pointer stage's validation calls it
        assert torch.equal(fit_answer_calibration(**data), weights)
    scores = answer_scores(weights, data["evidence"])
    right, negative = data["right"], data["negative"]
    ranked_above = (scores[right][:, None] > scores[negative][None, :]).float().mean()
    assert ranked_above > 0.97  # two unit normals 4 apart: 0.998
    assert abs(weights[2]) > 5 * abs(weights[0])
    calibrate = data["calibrate"]
    assert float(scores[calibrate].mean()) == pytest.approx(
        float(right[calibrate].float().mean()), abs=0.03
    )
    # in bins of score, the share right is near the score
    for low in (0.1, 0.3, 0.5, 0.7):
        in_bin = calibrate & (scores >= low) & (scores < low + 0.2)
        if int(in_bin.sum()) > 100:
            assert float(right[in_bin].float().mean()) == pytest.approx(low + 0.1, abs=0.1)


def test_fit_answer_calibration_leaves_wrong_answers_out_of_its_direction():
    """Which evidence separates is learned from right answers and negatives alone: moving the
    wrong answers' evidence anywhere changes only the Platt step (a scale and a bias)."""
    data = answer_examples(3000)
    weights = fit_answer_calibration(**data)
    wrong = ~data["right"] & ~data["negative"]
    moved = dict(data, evidence=data["evidence"].clone())
    moved["evidence"][wrong] = 3.0 * torch.randn(int(wrong.sum()), len(EVIDENCE))
    other = fit_answer_calibration(**moved)
    cosine = torch.nn.functional.cosine_similarity(weights[:-1], other[:-1], dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-4)


def test_fit_answer_calibration_does_not_depend_on_units():
    """A column in other units (x 100) gives the same scores: the fit standardises."""
    data = answer_examples(2000)
    scaled = dict(data, evidence=data["evidence"] * torch.tensor([1.0, 100.0, 1.0, 0.01, 1.0]))
    first = answer_scores(fit_answer_calibration(**data), data["evidence"])
    second = answer_scores(fit_answer_calibration(**scaled), scaled["evidence"])
    assert torch.allclose(first, second, atol=1e-3)


def test_fit_answer_calibration_needs_both_kinds():
    """Too few right answers or too few negatives: zeros, which means none (the logit's
    calibration serves)."""
    data = answer_examples(200)
    for kind in ("right", "negative"):
        few = dict(data)
        few[kind] = data[kind] & (torch.cumsum(data[kind].int(), 0) <= 19)
        assert not fit_answer_calibration(**few).any()
    assert fit_answer_calibration(**data).any()


def test_prompted_reads_the_nan_rows():
    box = torch.tensor([[0.1, 0.1, 0.5, 0.5], [float("nan")] * 4, [float("nan")] * 4])
    point = torch.tensor([[float("nan")] * 2, [0.3, 0.4], [float("nan")] * 2])
    assert prompted(box, point).tolist() == [True, True, False]


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
    out = pointer(inputs)
    assert isinstance(out, PointerOutput)
    logits, residual = out.logits, out.residual
    # five candidates, then "no object" (always valid)
    assert logits.shape == (2, 6) and residual.shape == (2, 5, RESIDUAL_WIDTH)
    assert bool(torch.isinf(logits[1, 3:5]).all()) and bool(torch.isfinite(logits[0]).all())
    assert bool(torch.isfinite(logits[:, -1]).all())
    assert bool((residual == 0).all())  # the residual starts at zero: the dense heads' box
    assert out.category_logits is None and out.color_logits is None  # no category / colour
    loss = pointer_loss(logits, torch.eye(5, dtype=torch.bool)[[0, 2]], inputs.valid)
    loss.backward()
    assert inputs.f3d.grad is not None and bool(inputs.f3d.grad.abs().sum() > 0)
    assert inputs.words.grad is not None and bool(inputs.words.grad[0].abs().sum() > 0)
    # padding words are not attended to
    assert bool((inputs.words.grad[1, 1:] == 0).all())
    assert pointer.null.grad is not None and pointer.null_bias.grad is not None


def test_candidate_pointer_scores_do_not_depend_on_padding_or_order():
    inputs = _inputs()
    torch.manual_seed(1)
    pointer = CandidatePointer(hidden=16, candidate_width=12, dim=8, layers=1).eval()
    with torch.no_grad():
        logits = pointer(inputs).logits
        changed = PointerInputs(**{**vars(inputs), "words": inputs.words.clone()})
        changed.words[1, 1:] += 100.0  # padding of query 1
        assert torch.allclose(pointer(changed).logits, logits, atol=1e-5)
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
        moved = pointer(shuffled).logits
        assert torch.allclose(moved[0, :5], logits[0, perm], atol=1e-5)
        assert torch.allclose(moved[:, -1], logits[:, -1], atol=1e-5)  # "no object" stays last


def _prompt_only(
    boxes: list[list[float]], box_prompt: torch.Tensor, point_prompt: torch.Tensor
) -> torch.Tensor:
    """Logits (K + 1,) of a fresh pointer whose query and objectness terms are zeroed."""
    torch.manual_seed(0)
    pointer = CandidatePointer(hidden=4, candidate_width=2, dim=4, layers=0).eval()
    with torch.no_grad():
        pointer.query.weight.zero_()
        pointer.query.bias.zero_()
        pointer.objectness_weight.zero_()
    K = len(boxes)
    inputs = PointerInputs(
        f3d=torch.zeros(1, 4), words=torch.zeros(1, 1, 4),
        word_mask=torch.ones(1, 1, dtype=torch.bool), features=torch.zeros(1, K, 2),
        geometry=torch.cat([torch.zeros(1, K, 4), torch.tensor([boxes])], dim=-1),
        objectness=torch.zeros(1, K), valid=torch.ones(1, K, dtype=torch.bool),
        box_prompt=box_prompt, point_prompt=point_prompt,
    )  # fmt: skip
    with torch.no_grad():
        return pointer(inputs).logits[0]


def test_point_prompt_raises_the_candidate_under_it():
    """A fresh pointer's prompt term (its prior, zero query) prefers the box the point falls in.

    Hand values from PROMPT_PRIOR: inside +2, each |offset from the box centre| in box sizes
    -1.5. Point (0.8, 0.9); boxes of size 0.5 centred at (0.25, 0.25) and (0.75, 0.75).
    """
    boxes = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]
    logits = _prompt_only(boxes, NAN4, torch.tensor([[0.8, 0.9]]))
    outside = -1.5 * ((0.8 - 0.25) / 0.5 + (0.9 - 0.25) / 0.5)
    inside = 2.0 - 1.5 * ((0.8 - 0.75) / 0.5 + (0.9 - 0.75) / 0.5)
    # "no object": its learned bias alone (initial -2) when the query is zero
    assert logits.tolist() == pytest.approx([outside, inside, -2.0], abs=1e-5)


def test_box_prompt_prior_picks_the_overlapping_candidate():
    """A fresh pointer's prompt term prefers the candidate a box prompt covers."""
    boxes = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.1, 0.1, 0.4, 0.4]]
    logits = _prompt_only(
        boxes, torch.tensor([[0.0, 0.0, 0.45, 0.5]]), torch.full((1, 2), float("nan"))
    )
    assert int(logits[:3].argmax()) == 0 and logits[0] - logits[2] > 1.0, logits


def _match_only_pointer(category_bias: list[float]) -> CandidatePointer:
    """A pointer whose logits are only the named-category match (text_category's bias)."""
    torch.manual_seed(0)
    pointer = CandidatePointer(hidden=4, candidate_width=2, dim=4, layers=0, categories=3, colors=2)
    with torch.no_grad():
        for module in (pointer.query, pointer.prompt[2]):
            module.weight.zero_()
            module.bias.zero_()
        pointer.objectness_weight.zero_()
        assert pointer.text_category is not None
        pointer.text_category.weight.zero_()
        pointer.text_category.bias.copy_(torch.tensor(category_bias))
        _name_relation(pointer, "none")
    return pointer.eval()


def _name_relation(pointer: CandidatePointer, relation: str, anchor_category: int = 0) -> None:
    """Make the relation heads name `relation` and an anchor of `anchor_category`, any colour."""
    with torch.no_grad():
        pointer.text_relation.weight.zero_()
        pointer.text_relation.bias.fill_(-20.0)
        pointer.text_relation.bias[RELATIONS.index(relation)] = 20.0
        pointer.anchor_category.weight.zero_()
        pointer.anchor_category.bias.fill_(-20.0)
        pointer.anchor_category.bias[anchor_category] = 20.0
        assert pointer.anchor_color is not None
        pointer.anchor_color.weight.zero_()
        pointer.anchor_color.bias.fill_(-20.0)
        pointer.anchor_color.bias[-1] = 20.0  # "any"


@pytest.mark.parametrize(
    ("category_bias", "favoured"),
    [([20.0, 0.0, 0.0, 0.0], 0), ([0.0, 0.0, 20.0, 0.0], 2), ([0.0, 0.0, 0.0, 20.0], None)],
)
def test_named_category_raises_the_candidates_of_that_category(category_bias, favoured):
    """log sum_c q_c p_ic: the query naming category c lifts candidates predicted as c; "any"
    (the last class: a prompt names no category) lifts none."""
    pointer = _match_only_pointer(category_bias)
    inputs = PointerInputs(
        f3d=torch.zeros(1, 4), words=torch.zeros(1, 1, 4),
        word_mask=torch.ones(1, 1, dtype=torch.bool), features=torch.zeros(1, 3, 2),
        geometry=torch.zeros(1, 3, GEOMETRY_WIDTH), objectness=torch.zeros(1, 3),
        valid=torch.ones(1, 3, dtype=torch.bool), box_prompt=NAN4, point_prompt=NAN2,
        category_probs=torch.eye(3)[None],  # candidate i is surely category i
    )  # fmt: skip
    with torch.no_grad():
        out = pointer(inputs)
    assert out.category_logits is not None and out.category_logits.shape == (1, 4)
    assert out.color_logits is not None and out.color_logits.shape == (1, 3)
    logits = out.logits[0, :3]
    if favoured is None:
        assert logits.tolist() == pytest.approx([0.0] * 3, abs=1e-5)
    else:
        others = [i for i in range(3) if i != favoured]
        assert logits[favoured].item() == pytest.approx(0.0, abs=1e-5)
        assert bool((logits[others] < -8.0).all())  # log(1e-4) at the floor


def test_evidence_holds_each_candidates_logit_matches_and_the_words_certainty():
    """pointer.EVIDENCE, column by column, against the pointer's own outputs; none without the
    candidates' colours (a model that cannot match colours has no answer calibration)."""
    pointer = _match_only_pointer([3.0, 1.0, 0.0, 0.0])
    colors = torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]])
    inputs = PointerInputs(
        f3d=torch.zeros(1, 4), words=torch.zeros(1, 1, 4),
        word_mask=torch.ones(1, 1, dtype=torch.bool), features=torch.zeros(1, 3, 2),
        geometry=torch.zeros(1, 3, GEOMETRY_WIDTH), objectness=torch.zeros(1, 3),
        valid=torch.tensor([[True, True, False]]), box_prompt=NAN4, point_prompt=NAN2,
        category_probs=torch.eye(3)[None], color_probs=colors,
    )  # fmt: skip
    with torch.no_grad():
        out = pointer(inputs)
    assert out.evidence is not None and out.evidence.shape == (1, 3, len(EVIDENCE))
    assert out.category_logits is not None and out.color_logits is not None
    named = out.category_logits.softmax(-1)[0]
    colour = out.color_logits.softmax(-1)[0]
    evidence = out.evidence[0]
    assert evidence[:2, 0].tolist() == pytest.approx(out.logits[0, :2].tolist())
    assert float(evidence[2, 0]) == -30.0  # an invalid candidate: finite, never a best one
    for k in range(3):
        assert float(evidence[k, 1]) == pytest.approx(math.log(named[k] + named[-1]), abs=1e-5)
        agree = float(colour[:-1] @ colors[0, k] + colour[-1])
        assert float(evidence[k, 2]) == pytest.approx(math.log(agree), abs=1e-5)
    assert evidence[:, 3].tolist() == pytest.approx([float(named[:-1].max())] * 3)
    assert evidence[:, 4].tolist() == pytest.approx([float(colour[-1])] * 3)
    inputs.color_probs = None
    with torch.no_grad():
        assert pointer(inputs).evidence is None


@pytest.mark.parametrize(
    ("relation", "anchor", "favoured"),
    [("left_of", 1, 0), ("right_of", 1, 2), ("farthest", 0, 1), ("nearest", 0, 2),
     ("largest", 0, 1), ("left_half", 0, 0), ("none", 0, None)],
)  # fmt: skip
def test_named_relation_raises_the_candidates_in_it(relation, anchor, favoured):
    """The relation heads' term (spatial_relations.py): the query naming "left of the <category
    1>" lifts the candidate left of candidate 1 over the anchor and the one to its right."""
    pointer = _match_only_pointer([0.0, 0.0, 0.0, 20.0])  # the target: any category
    _name_relation(pointer, relation, anchor)
    uv = torch.tensor([[[0.2, 0.5], [0.6, 0.5], [0.85, 0.5]]])
    dims = torch.tensor([[[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [0.5, 0.5, 0.5]]])
    boxes = torch.tensor([[[0.1, 0.3, 0.3, 0.7], [0.5, 0.3, 0.7, 0.7], [0.75, 0.3, 0.95, 0.7]]])
    geometry = candidate_geometry(uv, torch.tensor([[4.0, 6.0, 2.0]]), dims, boxes)
    inputs = PointerInputs(
        f3d=torch.zeros(1, 4), words=torch.zeros(1, 1, 4),
        word_mask=torch.ones(1, 1, dtype=torch.bool), features=torch.zeros(1, 3, 2),
        geometry=geometry, objectness=torch.zeros(1, 3),
        valid=torch.ones(1, 3, dtype=torch.bool), box_prompt=NAN4, point_prompt=NAN2,
        category_probs=torch.eye(3)[None],
    )  # fmt: skip
    with torch.no_grad():
        out = pointer(inputs)
    assert out.relation_logits is not None and out.relation_logits.shape == (1, len(RELATIONS))
    assert out.anchor_category_logits is not None
    assert out.anchor_category_logits.shape == (1, ANCHORS, 4)
    logits = out.logits[0, :3]
    if favoured is None:
        assert logits.tolist() == pytest.approx([0.0] * 3, abs=1e-5)
    else:
        others = [i for i in range(3) if i != favoured]
        assert logits[favoured].item() > -0.1, logits
        assert bool((logits[others] < -5.0).all()), logits
    # without the spatial heads the term and its logits are gone
    plain = CandidatePointer(4, 2, 4, 0, categories=3, colors=2, spatial=False)
    assert plain(inputs).relation_logits is None


def test_text_losses_skip_unlabelled_relations_and_anchors():
    """-1 (no relation recorded, no second anchor) adds nothing; all unlabelled gives 0, not NaN."""
    pointed = PointerOutput(
        torch.zeros(2, 4), torch.zeros(2, 3, RESIDUAL_WIDTH),
        relation_logits=torch.zeros(2, len(RELATIONS), requires_grad=True),
        anchor_category_logits=torch.zeros(2, ANCHORS, 4), anchor_color_logits=None,
    )  # fmt: skip
    losses = text_losses(pointed, {
        "query_relation": torch.tensor([-1, -1]),
        "anchor_category": torch.tensor([[2, -1], [-1, -1]]),
    })  # fmt: skip
    assert float(losses["text_relation"].detach()) == 0.0
    assert float(losses["text_anchor"]) == pytest.approx(math.log(4))  # uniform over 4 classes
    losses["text_relation"].backward()  # still part of the graph


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
