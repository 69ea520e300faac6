"""The LLMI3D network on the tiny preset: shapes, losses, gradients, the cached inference path."""

from __future__ import annotations

import pytest
import torch

from llmi3d_core.data.dataset import GroundingDataset, collate_grounding
from llmi3d_core.errors import ConfigError
from llmi3d_core.model import LLMI3D, format_query, sequence
from llmi3d_core.model.detector import output_widths
from llmi3d_core.model.sequence import length_groups, query_tails
from llmi3d_core.model.sequence import rewind_cache as _rewind

BOX_TERMS = {"center_uv", "depth", "dims", "rotation", "box2d", "keypoints"}


def _features(model, batch):
    return model.encode_image(batch["image_lr"], batch["image_hr"], batch["K"], batch["image_size"])


def test_forward_shapes_and_losses(make_model, make_batch):
    model = make_model()
    batch = make_batch(model.config, size=3)
    out = model(batch)
    assert out.boxes["center"].shape == (3, 3)
    assert out.boxes["R"].shape == (3, 3, 3)
    assert out.boxes["dims"].shape == (3, 3)
    assert out.boxes["box2d_px"].shape == (3, 4)
    assert out.boxes["center_uv_px"].shape == (3, 2)
    # every candidate, then "no object"
    assert out.pointer_logits.shape == (3, model.config.detector.max_objects + 1)
    assert out.chosen_box2d.shape == (3, 4)
    # the dense heads on every object, the pointer on the queried one, and the answer text
    expected = {"heatmap", *BOX_TERMS, "pointer", "residual", "text"}
    assert set(out.losses) == expected | {"total"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    weights = model.config.loss
    manual = sum(getattr(weights, k) * v.item() for k, v in out.losses.items() if k != "total")
    assert out.losses["total"].item() == pytest.approx(manual, rel=1e-5)


def test_category_and_colour_heads_are_trained_when_the_data_has_them(data_config, make_batch):
    assert data_config.detector.categories and data_config.detector.colors
    torch.manual_seed(0)
    model = LLMI3D(data_config)
    widths = model.dense_heads.widths
    assert widths["category"] == len(data_config.detector.categories)
    assert widths["color"] == len(data_config.detector.colors)
    batch = make_batch(data_config)
    assert bool((batch["obj_category"][batch["obj_valid"]] >= 0).all())
    losses = model(batch).losses
    # the object tokens are aligned with the LLM's embedding of their category name
    assert {"category", "color", "align"} <= set(losses)
    assert all(torch.isfinite(losses[k]) for k in ("category", "color", "align"))


def test_forward_without_targets_has_no_losses(make_model, make_batch, without_targets):
    model = make_model()
    out = model(without_targets(make_batch(model.config)))
    assert out.losses == {}
    assert out.boxes["center"].shape == (2, 3)
    assert out.pointer_logits.shape == (2, model.config.detector.max_objects + 1)


def test_rotation_is_a_rotation_and_box_is_ordered(make_model, make_batch):
    model = make_model()
    out = model(make_batch(model.config, size=4))
    R = out.boxes["R"]
    eye = torch.eye(3).expand_as(R)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(R.shape[0]), atol=1e-5)
    box = out.chosen_box2d
    assert bool((box[:, 2] >= box[:, 0]).all() and (box[:, 3] >= box[:, 1]).all())
    assert bool((out.boxes["dims"] > 0).all() and (out.boxes["z"] > 0).all())


def _has_grad(params, name: str) -> bool:
    grad = params[name].grad
    return grad is not None and bool(grad.abs().sum() > 0)


def _check_frozen_llm(params) -> None:
    frozen = [n for n in params if n.startswith("llm.model.") and "lora_" not in n]
    assert frozen
    for name in frozen:
        assert not params[name].requires_grad, name
        assert params[name].grad is None, name


def test_gradients_reach_trainable_parts_only(make_model, make_batch):
    model = make_model()
    model(make_batch(model.config)).losses["total"].backward()
    params = dict(model.named_parameters())
    groups = {
        "lora": [n for n in params if "lora_" in n],
        "low_res": [n for n in params if n.startswith("low_res.backbone.layers.")],
        "high_res backbone": [n for n in params if n.startswith("high_res.backbone.")],
        "fpn neck": [n for n in params if n.startswith("high_res.neck.")],
        "colour map": [n for n in params if n.startswith("high_res.colour.")],
        "viewing rays": [n for n in params if n.startswith("high_res.rays.")],
        "dense heads": [n for n in params if n.startswith("dense_heads.")],
        "fusion": [n for n in params if n.startswith("fusion.")],
        "projector": [n for n in params if n.startswith("projector.")],
        "object tokens": [n for n in params if n.startswith("object_projector.")],
        "pointer": [n for n in params if n.startswith("pointer.")],
        "3D query": ["query_embedding"],
        "new tokens": ["llm.new_embeddings", "llm.pos_head.weight"],
    }
    for group, names in groups.items():
        assert names, group
        assert any(_has_grad(params, n) for n in names), f"no gradient reaches {group}"
    # every dense output is trained (the heatmap and each regression head)
    for name in model.dense_heads.outputs:
        assert _has_grad(params, f"dense_heads.outputs.{name}.weight"), name
    _check_frozen_llm(params)


def test_mlp_readout_trains_every_head(make_model, make_batch):
    """Without the pointer, each MLP head on F_3D gets its own box loss (paper read-out)."""
    model = make_model(**{"heads.pointer": False})
    model(make_batch(model.config)).losses["total"].backward()
    params = dict(model.named_parameters())
    for name in model.heads.mlps:
        assert _has_grad(params, f"heads.mlps.{name}.0.weight"), f"no gradient reaches {name}"
    assert _has_grad(params, "query_embedding")
    assert any(_has_grad(params, n) for n in params if n.startswith("dense_heads."))
    _check_frozen_llm(params)


def test_answer_tokens_are_supervised_only_for_answer_types(make_model, make_batch):
    model = make_model()
    batch = make_batch(model.config, size=2, query_types=("caption",))
    loss_without = model(batch).losses["text"].item()
    batch["answer"] = ["a completely different phrase"] * 2
    assert model(batch).losses["text"].item() == pytest.approx(loss_without)
    batch["query_type"] = ["question", "question"]
    assert model(batch).losses["text"].item() != pytest.approx(loss_without)


def _expected_ranking(model, logits: torch.Tensor):
    """Scores (calibrated sigmoids of the candidates' logits), their order, "no object"'s."""
    probabilities = model.scores(logits)
    scores = probabilities[:-1]
    order = torch.argsort(scores, descending=True)
    return scores[order], order, float(probabilities[-1])


@pytest.mark.parametrize("readout", ["query", "pos_token", "text_feature"])
def test_ground_policy_matches_teacher_forced_forward(
    make_model, make_batch, without_targets, readout
):
    """The cached one-pass inference path sees the same sequence as training."""
    model = make_model(**{"heads.readout": readout}).eval()
    batch = without_targets(make_batch(model.config, size=2, query_types=("caption",)))
    batch["query"] = ["find the lamp", "find the big red chair near the window"]  # padding
    with torch.no_grad():
        forward = model(batch)
        features = _features(model, batch)
        for i in range(2):
            context = model.prepare_context(features, i)
            text = format_query(batch["query"][i], batch["box_prompt"][i], batch["point_prompt"][i])
            located = model.locate(context, text, policy="ground")
            assert not located.answered and located.answer == ""
            scores, order, nothing = _expected_ranking(model, forward.pointer_logits[i])
            torch.testing.assert_close(located.scores, scores, rtol=1e-4, atol=1e-6)
            assert located.nothing_score == pytest.approx(nothing, rel=1e-4, abs=1e-6)
            # the forward pass's box (the pointer's argmax over the objects) is the first
            choice = forward.pointer_logits[i, :-1].argmax()
            slot = int((order == choice).nonzero()[0, 0])
            assert slot == 0
            for name in ("center", "dims", "R"):
                torch.testing.assert_close(
                    located.boxes[name][slot], forward.boxes[name][i], rtol=1e-4, atol=1e-5
                )


def test_locate_ranks_every_candidate(make_model, make_batch):
    model = make_model().eval()
    batch = make_batch(model.config, size=1)
    context = model.prepare_context(_features(model, batch))
    located = model.locate(context, "find the lamp", policy="ground")
    count = model.config.detector.max_objects
    assert located.scores.shape == (count,) and located.categories.shape == (count,)
    assert bool((located.scores[:-1] >= located.scores[1:]).all())  # best first
    # each score a probability of its own (a query may have several targets, or none)
    assert bool((located.scores >= 0).all() and (located.scores <= 1).all())
    assert 0.0 < located.nothing_score < 1.0
    assert located.boxes["center"].shape == (count, 3)
    assert bool((located.categories == -1).all())  # the tiny preset has no category head


def test_scores_apply_the_fitted_calibration(make_model, make_batch):
    """score = sigmoid(logit / T + b) with (T, b) the buffer score_calibration (saved with it)."""
    model = make_model().eval()
    assert model.score_calibration.tolist() == [1.0, 0.0]
    assert "score_calibration" in model.state_dict()
    logits = torch.tensor([-2.0, 0.0, 3.0, float("-inf")])
    assert model.scores(logits).tolist() == pytest.approx(torch.sigmoid(logits).tolist(), abs=1e-7)
    model.score_calibration.copy_(torch.tensor([2.0, -1.0]))
    assert model.scores(logits).tolist() == pytest.approx(
        [torch.sigmoid(torch.tensor(x / 2.0 - 1.0)).item() for x in (-2.0, 0.0, 3.0)] + [0.0]
    )
    # locate ranks by the calibrated scores: the same order, other values
    context = model.prepare_context(_features(model, make_batch(model.config, size=1)))
    calibrated = model.locate(context, "find the lamp", policy="ground")
    model.score_calibration.copy_(torch.tensor([1.0, 0.0]))
    plain = model.locate(context, "find the lamp", policy="ground")
    torch.testing.assert_close(calibrated.boxes["center"], plain.boxes["center"])
    raw = torch.logit(plain.scores.double())
    # the best candidate takes score_calibration; the others keep others_calibration's (1, 0),
    # capped at the best's score
    best = torch.sigmoid(raw[:1] / 2.0 - 1.0)
    expected = torch.cat([best, torch.sigmoid(raw[1:]).clamp(max=float(best))])
    torch.testing.assert_close(calibrated.scores.double(), expected, rtol=1e-4, atol=1e-6)


def test_a_worded_querys_best_is_scored_from_its_evidence(make_model, make_batch):
    """With an answer calibration (saved with the model), the best candidate of a query without
    a box or point prompt scores sigmoid(w . evidence + c); the order, the boxes, "no object"
    and the other candidates' scores (capped at the best's) follow as before; a prompted
    query keeps its logit's score."""
    names = {"detector.categories": ("chair", "lamp", "bin"), "detector.colors": ("red", "blue")}
    model = make_model(**names).eval()
    assert not model.answer_calibration.any() and "answer_calibration" in model.state_dict()
    context = model.prepare_context(_features(model, make_batch(model.config, size=1)))
    box = torch.tensor([0.2, 0.2, 0.6, 0.7])
    plain = model.locate(context, "find the lamp", policy="ground")
    prompted = model.locate(context, "what is this?", policy="ground", box_prompt=box)
    # the logit alone with weight 1 and the identity score_calibration: the same scores
    model.answer_calibration.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    same = model.locate(context, "find the lamp", policy="ground")
    torch.testing.assert_close(same.scores, plain.scores, rtol=1e-5, atol=1e-6)
    # a bias alone: every worded query's best scores sigmoid(-3)
    model.answer_calibration.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, -3.0]))
    low = model.locate(context, "find the lamp", policy="ground")
    torch.testing.assert_close(low.boxes["center"], plain.boxes["center"])
    assert low.nothing_score == pytest.approx(plain.nothing_score)
    best = torch.sigmoid(torch.tensor(-3.0))
    assert float(low.scores[0]) == pytest.approx(float(best), rel=1e-5)
    torch.testing.assert_close(low.scores[1:], plain.scores[1:].clamp(max=float(best)))
    again = model.locate(context, "what is this?", policy="ground", box_prompt=box)
    torch.testing.assert_close(again.scores, prompted.scores)


@pytest.mark.parametrize("bias", [-2.0, 3.0])
def test_candidates_after_the_best_take_their_own_calibration(make_model, make_batch, bias):
    """Every candidate after the best is scored by others_calibration (saved with the model),
    at most the best's score, so the order and the boxes stay; "no object" keeps
    score_calibration."""
    model = make_model().eval()
    assert model.others_calibration.tolist() == [1.0, 0.0]
    assert "others_calibration" in model.state_dict()
    context = model.prepare_context(_features(model, make_batch(model.config, size=1)))
    plain = model.locate(context, "find the lamp", policy="ground")
    model.others_calibration.copy_(torch.tensor([0.5, bias]))
    other = model.locate(context, "find the lamp", policy="ground")
    torch.testing.assert_close(other.boxes["center"], plain.boxes["center"])
    assert other.nothing_score == pytest.approx(plain.nothing_score)
    raw = torch.logit(plain.scores.double())
    later = torch.sigmoid(raw[1:] / 0.5 + bias).clamp(max=float(plain.scores[0]))
    torch.testing.assert_close(other.scores[:1], plain.scores[:1])
    torch.testing.assert_close(other.scores[1:].double(), later, rtol=1e-4, atol=1e-6)
    assert bool((other.scores[:-1] >= other.scores[1:]).all())
    if bias > 0:  # the cap binds: a later candidate never outranks the best
        assert bool((other.scores[1:] == other.scores[0]).any())


def test_locate_restores_the_image_cache(make_model, make_batch):
    model = make_model().eval()
    batch = make_batch(model.config, size=1)
    context = model.prepare_context(_features(model, batch))
    length = context.cache.get_seq_length()
    assert length == context.prefix_length
    first = model.locate(context, "find the lamp", policy="answer")
    assert first.answered
    assert context.cache.get_seq_length() == length
    again = model.locate(context, "find the lamp", policy="answer")
    assert again.answer == first.answer
    torch.testing.assert_close(first.scores, again.scores)
    for name in first.boxes:
        torch.testing.assert_close(first.boxes[name], again.boxes[name])


@pytest.mark.parametrize("readout", ["query", "pos_token", "text_feature"])
@pytest.mark.parametrize("max_tokens", [0, 1, 3])
def test_answer_path_reads_out_for_every_readout(make_model, make_batch, readout, max_tokens):
    overrides = {"heads.readout": readout, "llm.max_answer_tokens": max_tokens}
    model = make_model(**overrides).eval()
    batch = make_batch(model.config, size=1)
    context = model.prepare_context(_features(model, batch))
    located = model.locate(context, "what should I use to read?", policy="answer")
    assert located.answered
    assert located.boxes["dims"].shape == (model.config.detector.max_objects, 3)
    assert context.cache.get_seq_length() == context.prefix_length


def test_mlp_readout_locates_one_box(make_model, make_batch):
    model = make_model(**{"heads.pointer": False}).eval()
    batch = make_batch(model.config, size=1)
    context = model.prepare_context(_features(model, batch))
    located = model.locate(context, "find the lamp", policy="ground")
    assert located.boxes["center"].shape == (1, 3) and located.scores.shape == (1,)
    assert 0.0 < float(located.scores[0]) < 1.0  # the score head's sigmoid


def test_locate_rejects_unknown_policy(make_model, make_batch):
    model = make_model().eval()
    batch = make_batch(model.config, size=1)
    context = model.prepare_context(_features(model, batch))
    with pytest.raises(ConfigError, match=r"unknown answer policy 'maybe'"):
        model.locate(context, "find the lamp", policy="maybe")


def test_format_query_puts_prompts_as_text():
    assert format_query(" find it ") == "find it"
    text = format_query("what is this?", [0.1, 0.2, 0.333, 0.9], [float("nan")] * 2)
    assert text == "what is this? (box: [0.10, 0.20, 0.33, 0.90])"
    assert format_query("this", None, torch.tensor([0.5, 0.25])) == "this (point: [0.50, 0.25])"


def test_box_prompt_changes_the_prediction(make_model, make_batch, without_targets):
    model = make_model().eval()
    batch = without_targets(make_batch(model.config, size=1, query_types=("caption",)))
    assert bool(batch["box_prompt"].isnan().all())
    with torch.no_grad():
        plain = model(batch).pointer_logits
        batch["box_prompt"] = torch.tensor([[0.1, 0.1, 0.4, 0.5]])
        prompted = model(batch).pointer_logits
    assert not torch.allclose(plain, prompted)


def test_with_target_cell_always_offers_the_target(make_model, make_batch):
    """Teacher forcing: the target's own cell is a candidate even when the detector missed it."""
    model = make_model().eval()
    batch = make_batch(model.config, size=3)
    with torch.no_grad():
        features = _features(model, batch)
        candidates, is_target = model.with_target_cell(batch, features)
    assert bool(is_target.any(dim=-1).all())
    owner = batch["assign"].gather(1, candidates.cells)
    hit = owner == batch["target_index"][:, None]
    missing = ~hit.any(dim=-1)
    assert torch.equal(is_target[~missing], hit[~missing])
    assert torch.equal(is_target, model.target_slots(batch, candidates.cells) | is_target)
    if bool(missing.any()):  # injected into the last slot: the target's centre cell
        assert bool(is_target[missing, -1].all())


def _object_cells(model, batch, features):
    """(B, M) the cell holding each object's projected centre."""
    grid = model._grid(features.hr_map, features.image_size)
    return grid.cell_of(batch["obj_center_uv"] * features.image_size[:, None, :])


def _with_cells(model, features, cells):
    """The features with the candidates at `cells` (B, K) instead of the detector's peaks."""
    features.candidates = model.candidates(
        features.hr_map, features.dense, features.K, features.image_size, cells,
        image_hr=features.image_hr,
    )  # fmt: skip
    return features


def _background_cells(batch, count):
    """(B, count) cells that belong to no object."""
    rows = [torch.nonzero(assign < 0)[:count, 0] for assign in batch["assign"]]
    assert all(len(r) == count for r in rows)
    return torch.stack(rows)


@pytest.mark.parametrize("crops", [False, True], ids=["dense heads", "crop heads"])
def test_with_target_cell_injects_every_missed_target(
    make_model, make_mixed_batch, data_config, crops
):
    """A multi-target query whose targets the detector all missed gets each of them, in the
    last slots; a negative query gets nothing; is_target marks exactly the injected slots."""
    if crops:  # named and boxed from crops, as a trained model's candidates are
        torch.manual_seed(0)
        model = LLMI3D(
            data_config.replace(**{"detector.crop_heads": True, "detector.crop_size": 32})
        ).eval()
        model.crop_heads.fitted.fill_(True)
    else:
        model = make_model().eval()
    batch = make_mixed_batch(model.config, ("multi", "negative"))
    targets = batch["target_mask"]
    count = int(targets[0].sum())
    assert count >= 2 and not bool(targets[1].any())
    K = model.config.detector.max_objects
    with torch.no_grad():
        features = _with_cells(model, _features(model, batch), _background_cells(batch, K))
        before = features.candidates.cells.clone()
        assert not bool(model.target_slots(batch, before).any())  # every target missed
        candidates, is_target = model.with_target_cell(batch, features)
    cells = candidates.cells
    expected = _object_cells(model, batch, features)[0, torch.nonzero(targets[0])[:, 0]]
    assert sorted(cells[0, K - count :].tolist()) == sorted(expected.tolist())
    assert torch.equal(cells[0, : K - count], before[0, : K - count])  # the rest kept
    assert is_target[0].tolist() == [False] * (K - count) + [True] * count
    assert torch.equal(cells[1], before[1]) and not bool(is_target[1].any())
    # the injected slots are real candidates: their heads read at the targets' cells
    assert bool(candidates.valid.all())
    owners = batch["assign"][0, cells[0, K - count :]]
    assert set(owners.tolist()) <= set(torch.nonzero(targets[0])[:, 0].tolist())
    # only the injected columns are read anew; the result is what reading every cell gives
    with torch.no_grad():
        full = model.candidates(features.hr_map, features.dense, features.K, features.image_size,
                                cells, image_hr=features.image_hr)  # fmt: skip
    for name in ("features", "geometry", "objectness"):
        assert torch.allclose(getattr(candidates, name), getattr(full, name), atol=1e-5), name
    for name, value in full.outputs.items():
        assert torch.allclose(candidates.outputs[name], value, atol=1e-5), name


def test_with_target_cell_injects_only_the_missed_targets(make_model, make_mixed_batch):
    """Of a multi-target query whose first target is found, only the others are injected;
    a found target 0 followed by empty candidates stays found (no duplicate injection)."""
    model = make_model().eval()
    batch = make_mixed_batch(
        model.config, ("multi", "single"), accept=lambda item: int(item["target_index"]) == 0
    )
    K = model.config.detector.max_objects
    with torch.no_grad():
        features = _features(model, batch)
        centres = _object_cells(model, batch, features)
        cells = _background_cells(batch, K)
        first = batch["target_index"]  # (B,): 0 for the single-target query
        cells[:, 0] = centres[torch.arange(2), first]
        assert torch.equal(batch["assign"].gather(1, cells[:, :1])[:, 0], first)
        features = _with_cells(model, features, cells)
        candidates, is_target = model.with_target_cell(batch, features)
    others = torch.nonzero(batch["target_mask"][0])[1:, 0]
    count = len(others)
    assert sorted(candidates.cells[0, K - count :].tolist()) == sorted(centres[0, others].tolist())
    assert is_target[0].tolist() == [True] + [False] * (K - 1 - count) + [True] * count
    # the single-target query's target is on offer: nothing changes
    assert torch.equal(candidates.cells[1], cells[1])
    assert is_target[1].tolist() == [True] + [False] * (K - 1)


def test_target_slots_marks_the_cells_of_any_target(make_model, make_mixed_batch):
    model = make_model().eval()
    batch = make_mixed_batch(model.config, ("single", "multi", "negative"))
    cells = torch.arange(batch["assign"].shape[1]).expand(3, -1)  # every cell of the map
    slots = model.target_slots(batch, cells)
    owner = batch["assign"]
    for row in range(3):
        targets = torch.nonzero(batch["target_mask"][row])[:, 0]
        assert torch.equal(slots[row], torch.isin(owner[row], targets) & (owner[row] >= 0))
    assert bool(slots[0].any()) and bool(slots[1].any()) and not bool(slots[2].any())


def test_forward_losses_of_negative_and_multi_target_queries(make_model, make_mixed_batch):
    """The pointer learns every kind; the residual only from single-target queries."""
    model = make_model()
    out = model(make_mixed_batch(model.config, ("single", "multi", "negative")))
    assert torch.isfinite(out.losses["pointer"]) and torch.isfinite(out.losses["residual"])
    only_others = model(make_mixed_batch(model.config, ("multi", "negative")))
    assert only_others.losses["residual"].item() == 0.0
    assert only_others.losses["pointer"].item() > 0.0
    only_others.losses["total"].backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if n.startswith("pointer."))


def test_mlp_readout_learns_from_single_target_queries_only(make_model, make_mixed_batch):
    """The paper's read-out regresses one box: without a single-target query in the batch it
    has no box and no score term (the dense heads still learn every object)."""
    model = make_model(**{"heads.pointer": False})
    mixed = model(make_mixed_batch(model.config, ("single", "multi", "negative"))).losses
    assert "score" in mixed and all(torch.isfinite(v) for v in mixed.values())
    others = model(make_mixed_batch(model.config, ("multi", "negative"))).losses
    assert "score" not in others and {"heatmap", "depth", "dims"} <= set(others)
    assert all(torch.isfinite(v) for v in others.values())


def test_dense_heads_see_the_camera(make_model, make_batch):
    """The viewing rays (positions.ray_map) enter the HR map: another K, other dense outputs."""
    model = make_model().eval()
    batch = make_batch(model.config, size=1)
    with torch.no_grad():
        one = model.image_side(batch["image_hr"], batch["K"], batch["image_size"])
        K = batch["K"].clone()
        K[:, 0, 0] *= 1.5
        other = model.image_side(batch["image_hr"], K, batch["image_size"])
    assert not torch.allclose(one.dense["heatmap"], other.dense["heatmap"])


def _image_items(dataset, config, count: int = 5):
    """Up to `count` dataset items (query dicts) of the image with the most training queries."""
    queries = GroundingDataset(dataset.root, "train", config, dataset=dataset)
    by_image: dict[str, list[int]] = {}
    for index, query in enumerate(queries.queries):
        by_image.setdefault(query.image_id, []).append(index)
    indices = max(by_image.values(), key=len)[:count]
    return [queries.get(i) for i in indices]


def _items_of_every_type(dataset, config, per_type: int = 2):
    """The first `per_type` training items of each query type (their tails differ in length)."""
    queries = GroundingDataset(dataset.root, "train", config, dataset=dataset)
    by_type: dict[str, list[int]] = {}
    for index, query in enumerate(queries.queries):
        by_type.setdefault(query.type, []).append(index)
    return [queries.get(i) for indices in by_type.values() for i in indices[:per_type]]


def _cache_tensors(cache):
    return [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]


def _prepared(model, item):
    batch = collate_grounding([item])
    features = model.encode_image(
        batch["image_lr"], batch["image_hr"], batch["K"], batch["image_size"]
    )
    return model.prepare_context(features)


@pytest.mark.parametrize("readout", ["query", "pos_token", "text_feature"])
def test_batched_teacher_forced_states_equal_one_by_one_and_inference(
    make_model, synth_dataset, readout, monkeypatch
):
    """The pointer stage's batched LLM pass gives each query the states it would get alone,
    the states of the inference path ("ground": no answer fed), and leaves the cache as it was.
    A small LENGTH_SLACK splits this tokenizer's tails (46-86 tokens) into several groups.
    """
    monkeypatch.setattr(sequence, "LENGTH_SLACK", 1.2)
    model = make_model(**{"heads.readout": readout, "answer_types": ()}).eval()
    items = _items_of_every_type(synth_dataset, model.config)  # box prompts' tails are long
    fields = ("query", "box_prompt", "point_prompt", "query_type")
    tails, _ = query_tails(model, {k: [i[k] for i in items] for k in fields}, with_text3d=False)
    groups = length_groups([len(t) for t in tails])
    assert len(groups) > 1  # several passes, their rows put back in order
    assert any(len({len(tails[i]) for i in group}) > 1 for group in groups)  # padding exercised
    context = _prepared(model, items[0])
    cache_before = _cache_tensors(context.cache)
    batched = model.teacher_forced_states(context, items)
    assert len(batched) == len(items)
    after = _cache_tensors(context.cache)
    assert context.cache.get_seq_length() == context.prefix_length
    for (k0, v0), (k1, v1) in zip(cache_before, after, strict=True):
        assert k1.shape[0] == 1 and torch.equal(k0, k1) and torch.equal(v0, v1)
    for item, states in zip(items, batched, strict=True):
        [alone] = model.teacher_forced_states(context, [item])
        text = format_query(item["query"], item["box_prompt"], item["point_prompt"])
        inferred, _, _, answered = model.query_states(context, text, policy="ground")
        _rewind(context.cache, context.prefix_length)
        assert not answered and inferred is not None
        for other in (alone, inferred):
            assert other.words.shape == states.words.shape
            assert states.f3d.shape == (1, model.llm.hidden_size)
            torch.testing.assert_close(states.f3d, other.f3d, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(states.words, other.words, rtol=1e-4, atol=1e-5)
            assert bool(states.word_mask.all())
    # the image's cache still answers as before
    again = model.teacher_forced_states(context, items)
    for first, second in zip(batched, again, strict=True):
        torch.testing.assert_close(first.f3d, second.f3d)


def test_length_groups_bound_the_padding():
    """Every index once, shortest first; within a group the longest is at most slack x the
    shortest, and a longer one starts the next group."""
    lengths = [11, 51, 14, 32, 20, 15]
    assert length_groups(lengths, 2.0) == [[0, 2, 5, 4], [3, 1]]
    assert length_groups(lengths, 1.3) == [[0, 2], [5], [4], [3], [1]]
    assert length_groups(lengths, 100.0) == [[0, 2, 5, 4, 3, 1]]
    assert length_groups([]) == []


def test_teacher_forced_states_feed_the_answers_of_answer_types(make_model, synth_dataset):
    """With answer phrases (questions, prompts) the tails differ in length: batched = alone."""
    model = make_model().eval()
    assert "question" in model.config.answer_types
    items = _image_items(synth_dataset, model.config, count=8)
    assert {i["query_type"] for i in items} & set(model.config.answer_types)
    context = _prepared(model, items[0])
    batched = model.teacher_forced_states(context, items)
    for item, states in zip(items, batched, strict=True):
        [alone] = model.teacher_forced_states(context, [item])
        torch.testing.assert_close(states.f3d, alone.f3d, rtol=1e-4, atol=1e-5)
    assert context.cache.get_seq_length() == context.prefix_length


def test_box_prompt_adds_its_own_candidate_with_the_prompt_as_its_box(make_model, make_batch):
    """The detector may miss the prompted object or box it loosely: the prompt is a candidate."""
    model = make_model().eval()
    batch = make_batch(model.config, size=1)
    context = model.prepare_context(_features(model, batch))
    count = model.config.detector.max_objects
    box = torch.tensor([0.2, 0.3, 0.5, 0.8])
    located = model.locate(context, format_query("what is this?", box), "ground", box_prompt=box)
    plain = model.locate(context, format_query("what is this?"), "ground")
    assert plain.scores.shape == (count,) and located.scores.shape == (count + 1,)
    height, width = model.config.high_res.image_size
    prompt_px = box * torch.tensor([width, height, width, height])
    # the tiny preset has no crop heads: the candidate keeps the prompt, and the pointer's prompt
    # prior (IoU 1, centred) ranks it first
    torch.testing.assert_close(located.boxes["box2d_px"][0], prompt_px)
    matches = (located.boxes["box2d_px"] - prompt_px).abs().amax(dim=-1) < 1e-3
    assert int(matches.sum()) == 1


@pytest.mark.parametrize("mode", ["heatmap", "box2d"])
def test_a_small_object_beside_a_larger_one_gets_a_candidate_by_box_nms(make_model, mode):
    """Hand-made dense maps: a large box peaks at one cell, a small box at the next cell on
    its right, weaker, and the cell on its left repeats the large box (moved by 8 of its 80
    px); one background cell is a local maximum. With K = 3, "heatmap" takes the two local
    maxima and fills the last slot with the strongest other cell, the repeat; "box2d" keeps the
    small box (IoU 0.01 with the large one) and drops the repeat (IoU 0.82)."""
    model = make_model(**{"detector.candidate_nms": mode, "detector.max_objects": 3})
    height, width = model.config.high_res.image_size
    h, w = height // model.high_res.stride, width // model.high_res.stride
    dense = {name: torch.zeros(1, size, h, w) for name, size in output_widths(model.config).items()}
    dense["heatmap"] -= torch.linspace(5.0, 6.0, h * w).reshape(1, 1, h, w)  # background
    large, small, twin = 2 * w + 3, 2 * w + 4, 2 * w + 2
    for cell, logit, log_size in ((large, 4.0, 2.3), (small, 3.0, 0.0), (twin, 3.5, 2.3)):
        dense["heatmap"].view(-1)[cell] = logit
        dense["box2d"][0, 2:].view(2, -1)[:, cell] = log_size  # side exp(2.3) = 10 strides
    hr_map = torch.zeros(1, model.config.high_res.neck_channels, h, w)
    K = torch.tensor([[[100.0, 0, width / 2], [0, 100.0, height / 2], [0, 0, 1]]])
    size = torch.tensor([[float(width), float(height)]])
    with torch.no_grad():
        cells = model.candidates(hr_map, dense, K, size).cells[0].tolist()
    if mode == "heatmap":
        assert cells[0] == large and cells[2] == twin and small not in cells
    else:
        assert cells[:2] == [large, small] and twin not in cells
