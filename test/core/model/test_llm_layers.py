"""llm.keep_layers: the LM cut after its first N decoder layers is that LM's first N layers."""

from __future__ import annotations

import pytest
import torch

from llmi3d_core.errors import ConfigError
from llmi3d_core.model.config import LLMConfig
from llmi3d_core.model.llm import LanguageModel


def _reference(full: LanguageModel, embeds: torch.Tensor, keep: int) -> torch.Tensor:
    """The full LM's hidden state after layer `keep`, through its final norm."""
    decoder = full.causal_lm.get_decoder()
    out = decoder(inputs_embeds=embeds, output_hidden_states=True)
    return decoder.norm(out.hidden_states[keep])  # hidden_states[0] is the embeddings


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(LLMConfig(kind="tiny", num_layers=3, lora_rank=0), id="tiny"),
        pytest.param(LLMConfig(kind="smollm2", lora_rank=0), id="smollm2", marks=pytest.mark.slow),
    ],
)
def test_kept_layers_give_the_full_lms_intermediate_states(config: LLMConfig) -> None:
    keep = 2 if config.kind == "tiny" else 15
    torch.manual_seed(0)
    full = LanguageModel(config).eval()
    torch.manual_seed(0)
    cut = LanguageModel(LLMConfig(**{**config.__dict__, "keep_layers": keep})).eval()
    cut.load_state_dict(
        {k: v for k, v in full.state_dict().items() if k in cut.state_dict()}, strict=True
    )
    assert len(cut.causal_lm.get_decoder().layers) == keep
    embeds = full.embed(torch.tensor([full.tokenize("where is the red chair?")]))
    with torch.no_grad():
        expected = _reference(full, embeds, keep)
        got, _ = cut.hidden_states(embeds)
        assert not torch.allclose(got, full.hidden_states(embeds)[0], atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_keeping_more_layers_than_the_lm_has_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"keep_layers must be in 1\.\.3"):
        LanguageModel(LLMConfig(kind="tiny", num_layers=3, lora_rank=0, keep_layers=4))
