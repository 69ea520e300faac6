"""Checkpoints store only the trained parts and reload to identical predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from llmi3d_core.errors import CheckpointError, ConfigError
from llmi3d_core.inference import Predictor
from llmi3d_core.model import load_checkpoint, read_checkpoint_meta, save_checkpoint
from llmi3d_core.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE


def _trained(model, make_batch):
    """A model whose LoRA and new parameters are no longer at their initial values."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for seed in range(2):
        model(make_batch(model.config, seed=seed)).losses["total"].backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def test_only_trained_parts_are_stored(make_model, make_batch, tmp_path):
    model = _trained(make_model(), make_batch)
    save_checkpoint(model, tmp_path / "ckpt", extra={"step": 2})
    stored = load_file(str(tmp_path / "ckpt" / WEIGHTS_FILE))
    assert any("lora_" in k for k in stored)
    # the tiny LLM is randomly initialised, so its base weights are stored too
    assert any(k.startswith("llm.model.") and "lora_" not in k for k in stored)
    prefixes = (
        "low_res.", "high_res.neck.", "high_res.colour.", "high_res.backbone.", "dense_heads.",
        "fusion.", "projector.", "object_projector.", "pointer.", "high_res.rays.",
    )  # fmt: skip
    for prefix in prefixes:
        assert any(k.startswith(prefix) for k in stored), prefix
    for key in ("query_embedding", "llm.new_embeddings", "llm.pos_head.weight", "log_priors",
                "score_calibration", "others_calibration", "answer_ratio",
                "answer_calibration"):  # fmt: skip
        assert key in stored
    config, extra = read_checkpoint_meta(tmp_path / "ckpt")
    assert config == model.config and extra == {"step": 2}


def test_size_priors_are_kept(make_model, tmp_path):
    """The per-category size priors (set from the training data) travel with the checkpoint."""
    model = make_model(**{"detector.categories": ["chair", "lamp"]})
    priors = torch.tensor([[0.1, 0.2, 0.3], [-0.5, 0.0, 0.5], [0.0, 0.1, 0.2]])
    model.set_size_priors(priors)
    save_checkpoint(model, tmp_path / "ckpt")
    assert torch.equal(load_checkpoint(tmp_path / "ckpt").log_priors, priors)
    with pytest.raises(ConfigError, match=r"size priors must be \(3, 3\)"):
        model.set_size_priors(torch.zeros(2, 3))


def test_score_calibration_is_kept(make_model, tmp_path):
    """The pointer's calibration (fitted on validation queries) travels with the checkpoint."""
    model = make_model()
    model.score_calibration.copy_(torch.tensor([1.7, -0.4]))
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(loaded.score_calibration, torch.tensor([1.7, -0.4]))
    logits = torch.tensor([-1.0, 0.5, 2.0])
    torch.testing.assert_close(loaded.scores(logits), model.scores(logits))


def test_others_calibration_is_kept_and_filled_in_for_older_checkpoints(make_model, tmp_path):
    """others_calibration travels with the checkpoint; a checkpoint of an older release, which
    has none, loads with score_calibration in its place (what every candidate used then)."""
    model = make_model()
    model.score_calibration.copy_(torch.tensor([1.7, -0.4]))
    model.others_calibration.copy_(torch.tensor([0.9, -1.6]))
    save_checkpoint(model, tmp_path / "ckpt")
    assert torch.equal(load_checkpoint(tmp_path / "ckpt").others_calibration,
                       torch.tensor([0.9, -1.6]))  # fmt: skip
    weights = tmp_path / "ckpt" / WEIGHTS_FILE
    stored = load_file(str(weights))
    del stored["others_calibration"]
    save_file(stored, str(weights))
    older = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(older.others_calibration, torch.tensor([1.7, -0.4]))


def test_the_answer_ratio_is_kept_and_none_for_older_checkpoints(make_model, tmp_path):
    """The answer rule's ratio fitted for a model travels with it; a model without one (a new
    one, or a checkpoint of a release before it) has none, and the node's default serves it."""
    model = make_model()
    assert model.fitted_answer_ratio is None
    model.answer_ratio.fill_(0.7)
    save_checkpoint(model, tmp_path / "ckpt")
    assert load_checkpoint(tmp_path / "ckpt").fitted_answer_ratio == pytest.approx(0.7)
    weights = tmp_path / "ckpt" / WEIGHTS_FILE
    stored = load_file(str(weights))
    del stored["answer_ratio"]
    save_file(stored, str(weights))
    assert load_checkpoint(tmp_path / "ckpt").fitted_answer_ratio is None


def test_the_answer_calibration_is_kept_and_none_for_older_checkpoints(make_model, tmp_path):
    """A worded query's answer calibration travels with the model; a checkpoint of a release
    before it loads with none (zeros: its best candidates are scored from their logits)."""
    model = make_model()
    weights = torch.tensor([0.7, 0.6, 1.2, -2.5, -1.1, 4.3])
    model.answer_calibration.copy_(weights)
    save_checkpoint(model, tmp_path / "ckpt")
    assert load_checkpoint(tmp_path / "ckpt").answer_calibration.tolist() == pytest.approx(
        weights.tolist()
    )
    stored_path = tmp_path / "ckpt" / WEIGHTS_FILE
    stored = load_file(str(stored_path))
    del stored["answer_calibration"]
    save_file(stored, str(stored_path))
    assert not load_checkpoint(tmp_path / "ckpt").answer_calibration.any()


def test_crop_heads_of_older_checkpoints_name_from_the_summary(make_model, tmp_path):
    """A checkpoint whose config predates detector.crop_names_from (model revision 16) was
    trained naming from the summary columns: it loads so, and predicts as it did; a new one
    keeps what it says."""
    overrides = {
        "detector.crop_heads": True,
        "detector.crop_size": 32,
        "detector.categories": ("chair", "lamp"),
        "detector.colors": ("red", "blue"),
    }
    older = make_model(**overrides, **{"detector.crop_names_from": "summary"})
    save_checkpoint(older, tmp_path / "older")
    meta_path = tmp_path / "older" / CONFIG_FILE
    meta = json.loads(meta_path.read_text())
    del meta["model_config"]["detector"]["crop_names_from"]
    meta_path.write_text(json.dumps(meta))
    assert read_checkpoint_meta(tmp_path / "older")[0].detector.crop_names_from == "summary"
    loaded = load_checkpoint(tmp_path / "older")
    descriptors = torch.randn(3, older.crop_heads.mean.numel())
    torch.testing.assert_close(
        loaded.crop_heads(descriptors)["category"], older.eval().crop_heads(descriptors)["category"]
    )
    save_checkpoint(make_model(**overrides), tmp_path / "new")
    assert read_checkpoint_meta(tmp_path / "new")[0].detector.crop_names_from == "descriptor"
    assert load_checkpoint(tmp_path / "new").crop_heads.names_width == descriptors.shape[1]


IMAGE = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
K_SMALL = np.array([[150.0, 0, 80], [0, 150, 60], [0, 0, 1]])


def _predict(predictor):
    return predictor.predict(IMAGE, K_SMALL, "find the lamp", box2d=[10, 10, 90, 70])[0]


def _assert_same(a, b, rtol=0.0):
    for field in ("center", "dims", "rotation", "box2d", "center_uv"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=rtol, atol=0)
    assert a.score == pytest.approx(b.score, rel=rtol, abs=0) and a.label == b.label


def test_save_then_load_gives_identical_predictions(make_model, make_batch, tmp_path):
    torch.manual_seed(1)
    model = _trained(make_model(), make_batch)
    before = _predict(Predictor(model, merge_lora=False))
    save_checkpoint(model, tmp_path / "ckpt")
    torch.manual_seed(123)  # different random init underneath: everything must come from disk
    after = _predict(Predictor.from_checkpoint(tmp_path / "ckpt", merge_lora=False))
    _assert_same(before, after)


def test_merged_lora_predicts_the_same_and_saves_unmerged(make_model, make_batch, tmp_path):
    torch.manual_seed(1)
    model = _trained(make_model(), make_batch)
    # "ground": rounding must not flip the untrained model's answer-or-not decision
    unmerged = _predict(Predictor(model, merge_lora=False, answer_policy="ground"))
    predictor = Predictor(model, answer_policy="ground")  # merges LoRA into the base weights
    assert model.llm.lora_merged
    _assert_same(unmerged, _predict(predictor), rtol=1e-4)
    save_checkpoint(model, tmp_path / "ckpt")
    assert model.llm.lora_merged  # saving leaves the Predictor's model as it was
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert not loaded.llm.lora_merged
    reloaded = Predictor(loaded, merge_lora=False, answer_policy="ground")
    _assert_same(unmerged, _predict(reloaded), rtol=1e-4)


def test_frozen_pretrained_backbones_are_referenced(make_model):
    from llmi3d_core.model.checkpoint import referenced_prefixes

    model = make_model()
    config = model.config.replace(**{"low_res.path": "/x", "low_res.trainable": False})
    assert "low_res.backbone." in referenced_prefixes(config)
    assert referenced_prefixes(model.config) == ()
    assert referenced_prefixes(config.replace(**{"llm.kind": "smollm2"}))[0] == "llm.model."


def test_missing_checkpoint_is_reported(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"is not an llmi3d checkpoint: config.json is missing"
    ):
        load_checkpoint(tmp_path)


def test_wrong_format_version_is_reported(make_model, tmp_path):
    save_checkpoint(make_model(), tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["format_version"] = 99
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"format_version 99; this code reads version 1"):
        load_checkpoint(tmp_path)


def test_tensors_not_matching_the_config_are_reported(make_model, tmp_path):
    save_checkpoint(make_model(), tmp_path)
    state = load_file(str(tmp_path / WEIGHTS_FILE))
    state["heads.extra.weight"] = torch.zeros(1)
    del state["query_embedding"]
    save_file(state, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match=r"1 missing tensors.*query_embedding.*1 unexpected"):
        load_checkpoint(tmp_path)


def test_shape_mismatch_is_reported(make_model, tmp_path):
    save_checkpoint(make_model(), tmp_path)
    state = load_file(str(tmp_path / WEIGHTS_FILE))
    state["query_embedding"] = torch.zeros(3)
    save_file(state, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match=r"does not fit its model"):
        load_checkpoint(tmp_path)


def test_unserialisable_extra_is_reported(make_model, tmp_path):
    with pytest.raises(CheckpointError, match=r"not JSON-serialisable"):
        save_checkpoint(make_model(), tmp_path, extra={"bad": object()})
