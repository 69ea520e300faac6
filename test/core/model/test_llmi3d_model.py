"""The LLMI3D network on the tiny preset: shapes, losses, gradients, the cached inference path."""

from __future__ import annotations

import time

import pytest
import torch

from llmi3d_core.errors import ConfigError
from llmi3d_core.model import LLMI3D, format_query

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
    assert out.pointer_logits.shape == (3, model.config.detector.max_objects)
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
    assert out.pointer_logits.shape == (2, model.config.detector.max_objects)


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


def test_forward_backward_is_fast_on_cpu(make_model, make_batch):
    model = make_model()
    batch = make_batch(model.config, size=2)
    model(batch).losses["total"].backward()  # warm-up (first-call allocations)
    model.zero_grad()
    start = time.perf_counter()
    model(batch).losses["total"].backward()
    assert time.perf_counter() - start < 1.0


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


def _expected_ranking(logits: torch.Tensor, objectness: torch.Tensor):
    """Scores (pointer probability x objectness) and their order, best first."""
    scores = logits.softmax(dim=-1) * objectness.sigmoid()
    order = torch.argsort(scores, descending=True)
    return scores[order], order


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
            scores, order = _expected_ranking(
                forward.pointer_logits[i], features.candidates.objectness[i]
            )
            torch.testing.assert_close(located.scores, scores, rtol=1e-4, atol=1e-6)
            # the forward pass's box (the pointer's argmax) is among the ranked ones
            slot = int((order == forward.pointer_logits[i].argmax()).nonzero()[0, 0])
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
    assert bool((located.scores >= 0).all() and located.scores.sum() <= 1 + 1e-6)
    assert located.boxes["center"].shape == (count, 3)
    assert bool((located.categories == -1).all())  # the tiny preset has no category head


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
    if bool(missing.any()):  # injected into the last slot: the target's centre cell
        assert bool(is_target[missing, -1].all())
