"""The `hf` code path offline: vision models and a causal LM loaded from local directories.

Small random transformers models are saved with save_pretrained into tmp_path and loaded the way
a user's local CLIP / ConvNeXt / 7B LLM would be (config/model/hf_paper.yaml).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    ConvNextConfig,
    ConvNextModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from llmi3d_core.errors import ConfigError
from llmi3d_core.model import LLMI3D, get_preset, load_checkpoint, save_checkpoint
from llmi3d_core.model.checkpoint import WEIGHTS_FILE
from llmi3d_core.model.llm import byte_tokenizer


@pytest.fixture(scope="module")
def local_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    CLIPVisionModel(
        CLIPVisionConfig(
            image_size=64,
            patch_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(root / "clip")
    ConvNextModel(
        ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2)
    ).save_pretrained(root / "convnext")
    tokenizer = byte_tokenizer()
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
    ).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    return root


def _config(root):
    return get_preset("tiny").replace(
        **{
            "low_res.kind": "clip",
            "low_res.path": str(root / "clip"),
            "low_res.trainable": False,
            "high_res.path": str(root / "convnext"),
            "llm.kind": "pretrained",
            "llm.path": str(root / "llm"),
        }
    )


def test_local_models_build_train_and_reload(local_models, make_batch, tmp_path):
    config = _config(local_models)
    torch.manual_seed(0)
    model = LLMI3D(config)
    reference = CLIPVisionModel.from_pretrained(local_models / "clip")
    loaded = model.low_res.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
    batch = make_batch(config)
    out = model(batch)
    out.losses["total"].backward()
    assert all(p.grad is None for p in model.low_res.parameters())  # frozen CLIP
    assert any(p.grad is not None for p in model.high_res.backbone.parameters())

    save_checkpoint(model, tmp_path / "ckpt")
    stored = load_file(str(tmp_path / "ckpt" / WEIGHTS_FILE))
    assert not any(k.startswith("low_res.backbone.") for k in stored)  # frozen, referenced
    assert any(k.startswith("high_res.backbone.") for k in stored)  # trainable, stored
    assert all("lora_" in k for k in stored if k.startswith("llm.model."))
    model.eval()
    reloaded = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        expected = model(batch)
        actual = reloaded(batch)
    torch.testing.assert_close(actual.pointer_logits, expected.pointer_logits)
    for name in expected.boxes:
        torch.testing.assert_close(actual.boxes[name], expected.boxes[name])
    for name in expected.losses:
        torch.testing.assert_close(actual.losses[name], expected.losses[name])


def test_missing_local_model_is_a_config_error(local_models, tmp_path):
    config = _config(local_models).replace(**{"low_res.path": str(tmp_path / "nothing")})
    with pytest.raises(ConfigError, match=r"Could not load low_res.path"):
        LLMI3D(config)
    config = _config(local_models).replace(**{"llm.path": str(tmp_path / "nothing")})
    with pytest.raises(ConfigError, match=r"Could not load llm.path"):
        LLMI3D(config)


def test_patch_size_mismatch_is_reported(local_models):
    config = _config(local_models).replace(**{"low_res.patch_size": 32})
    with pytest.raises(ConfigError, match=r"low_res.patch_size is 32 but the model at .* uses 16"):
        LLMI3D(config)
