"""The LLMI3D network on the tiny preset: shapes, losses, gradients, the cached inference path."""

from __future__ import annotations

import time

import pytest
import torch

from llmi3d_core.errors import ConfigError
from llmi3d_core.model import format_query


def test_forward_shapes_and_losses(make_model, make_batch):
    model = make_model()
    batch = make_batch(model.config, size=3)
    out = model(batch)
    shapes = {name: tuple(value.shape) for name, value in out.outputs.items()}
    assert shapes == {
        "center_uv": (3, 2),
        "depth": (3, 1),
        "rot6d": (3, 6),
        "dims": (3, 3),
        "box2d": (3, 4),
        "score_logit": (3, 1),
    }
    assert out.boxes["center"].shape == (3, 3)
    assert out.boxes["R"].shape == (3, 3, 3)
    assert out.boxes["box2d_px"].shape == (3, 4)
    assert out.depth_map is not None and out.depth_map.shape[:2] == (3, 1)
    expected = {"center_uv", "depth", "dims", "rotation", "box2d", "score", "depth_map", "text"}
    expected |= {"pointer"}  # heads.pointer is on by default
    assert set(out.losses) == expected | {"total"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    weights = model.config.loss
    manual = sum(getattr(weights, k) * v.item() for k, v in out.losses.items() if k != "total")
    assert out.losses["total"].item() == pytest.approx(manual, rel=1e-5)


def test_forward_without_targets_has_no_losses(make_model, make_batch):
    model = make_model()
    batch = make_batch(model.config)
    for key in ("center_uv", "virtual_depth", "dims_lwh", "rot6d_allo", "box2d", "depth_map"):
        del batch[key]
    out = model(batch)
    assert out.losses == {}
    assert out.boxes["center"].shape == (2, 3)


def test_rotation_is_a_rotation_and_box_is_ordered(make_model, make_batch):
    model = make_model()
    out = model(make_batch(model.config, size=4))
    R = out.boxes["R"]
    eye = torch.eye(3).expand_as(R)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(R.shape[0]), atol=1e-5)
    box = out.outputs["box2d"]
    assert bool((box[:, 2] >= box[:, 0]).all() and (box[:, 3] >= box[:, 1]).all())


def test_forward_backward_is_fast_on_cpu(make_model, make_batch):
    model = make_model()
    batch = make_batch(model.config, size=2)
    model(batch).losses["total"].backward()  # warm-up (first-call allocations)
    model.zero_grad()
    start = time.perf_counter()
    model(batch).losses["total"].backward()
    assert time.perf_counter() - start < 1.0


def test_gradients_reach_trainable_parts_only(make_model, make_batch):
    model = make_model()
    model(make_batch(model.config)).losses["total"].backward()
    params = dict(model.named_parameters())

    def has_grad(name: str) -> bool:
        grad = params[name].grad
        return grad is not None and bool(grad.abs().sum() > 0)

    groups = {
        "lora": [n for n in params if "lora_" in n],
        "low_res": [n for n in params if n.startswith("low_res.backbone.layers.")],
        "high_res": [n for n in params if n.startswith("high_res.backbone.")],
        "high_res convs": [n for n in params if n.startswith("high_res.conv_")],
        "depth head": [n for n in params if n.startswith("high_res.depth_head.")],
        "fusion": [n for n in params if n.startswith("fusion.")],
        "projector": [n for n in params if n.startswith("projector.")],
        "heads": [n for n in params if n.startswith("heads.")],
        "3D query": ["query_embedding"],
        "new tokens": ["llm.new_embeddings", "llm.pos_head.weight"],
    }
    for group, names in groups.items():
        assert names, group
        assert any(has_grad(n) for n in names), f"no gradient reaches {group}"
    frozen = [n for n in params if n.startswith("llm.model.") and "lora_" not in n]
    assert frozen
    for name in frozen:
        assert not params[name].requires_grad, name
        assert params[name].grad is None, name


def test_answer_tokens_are_supervised_only_for_answer_types(make_model, make_batch):
    model = make_model()
    batch = make_batch(model.config, size=2, query_types=("caption", "caption"))
    loss_without = model(batch).losses["text"].item()
    batch["answer"] = ["a completely different phrase"] * 2
    assert model(batch).losses["text"].item() == pytest.approx(loss_without)
    batch["query_type"] = ["question", "question"]
    assert model(batch).losses["text"].item() != pytest.approx(loss_without)


@pytest.mark.parametrize("readout", ["query", "pos_token", "text_feature"])
def test_ground_policy_matches_teacher_forced_forward(make_model, make_batch, readout):
    """The cached one-pass inference path sees the same sequence as training."""
    model = make_model(**{"heads.readout": readout}).eval()
    batch = make_batch(model.config, size=2, query_types=("caption",))
    batch["query"] = ["find the lamp", "find the big red chair near the window"]  # padding
    with torch.no_grad():
        forward = model(batch).outputs
        features = model.encode_image(batch["image_lr"], batch["image_hr"])
        for i in range(2):
            context = model.prepare_context(features, i)
            text = format_query(batch["query"][i], batch["box_prompt"][i], batch["point_prompt"][i])
            located = model.locate(context, text, policy="ground")
            assert not located.answered
            for name, value in located.outputs.items():
                assert torch.allclose(value[0], forward[name][i], atol=1e-4), name


def test_locate_restores_the_image_cache(make_model, make_batch):
    model = make_model().eval()
    batch = make_batch(model.config, size=1)
    features = model.encode_image(batch["image_lr"], batch["image_hr"])
    context = model.prepare_context(features)
    length = context.cache.get_seq_length()
    assert length == context.prefix_length
    first = model.locate(context, "find the lamp", policy="answer")
    assert first.answered
    assert context.cache.get_seq_length() == length
    again = model.locate(context, "find the lamp", policy="answer")
    assert again.answer == first.answer
    for name in first.outputs:
        assert torch.allclose(first.outputs[name], again.outputs[name])


@pytest.mark.parametrize("readout", ["query", "pos_token", "text_feature"])
@pytest.mark.parametrize("max_tokens", [0, 1, 3])
def test_answer_path_reads_out_for_every_readout(make_model, make_batch, readout, max_tokens):
    overrides = {"heads.readout": readout, "llm.max_answer_tokens": max_tokens}
    model = make_model(**overrides).eval()
    batch = make_batch(model.config, size=1)
    context = model.prepare_context(model.encode_image(batch["image_lr"], batch["image_hr"]))
    located = model.locate(context, "what should I use to read?", policy="answer")
    assert located.answered and located.outputs["dims"].shape == (1, 3)
    assert context.cache.get_seq_length() == context.prefix_length


def test_locate_rejects_unknown_policy(make_model, make_batch):
    model = make_model().eval()
    batch = make_batch(model.config, size=1)
    context = model.prepare_context(model.encode_image(batch["image_lr"], batch["image_hr"]))
    with pytest.raises(ConfigError, match=r"unknown answer policy 'maybe'"):
        model.locate(context, "find the lamp", policy="maybe")


def test_format_query_puts_prompts_as_text():
    assert format_query(" find it ") == "find it"
    text = format_query("what is this?", [0.1, 0.2, 0.333, 0.9], [float("nan")] * 2)
    assert text == "what is this? (box: [0.10, 0.20, 0.33, 0.90])"
    assert format_query("this", None, torch.tensor([0.5, 0.25])) == "this (point: [0.50, 0.25])"


def test_box_prompt_changes_the_prediction(make_model, make_batch):
    model = make_model().eval()
    batch = make_batch(model.config, size=1)
    with torch.no_grad():
        plain = model(batch).outputs["center_uv"]
        batch["box_prompt"] = torch.tensor([[0.1, 0.1, 0.4, 0.5]])
        prompted = model(batch).outputs["center_uv"]
    assert not torch.allclose(plain, prompted)
