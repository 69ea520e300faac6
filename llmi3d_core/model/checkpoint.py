"""Checkpoints: a directory with `config.json` and `model.safetensors` holding the trained parts.

    DIR/config.json        {"format": "llmi3d-checkpoint", "format_version": 1,
                            "model_config": {...ModelConfig...}, "extra": {...caller's data...}}
    DIR/model.safetensors  every tensor of the model except the referenced pretrained weights

Referenced, not stored: a pretrained base LLM (rebuilt from model_config.llm: the smollm2
package, a GGUF or a model directory; its LoRA adapter IS stored; the randomly initialised "tiny"
LLM is stored whole), and a pretrained vision backbone that is frozen and loaded from a
path (low_res.path with trainable=False; high_res.path or pretrained with trainable=False).
Everything else is stored: LoRA, vision branches, SECBA, projector, heads, the 3D Query and the
new token embeddings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmi3d_core.errors import CheckpointError, ConfigError
from llmi3d_core.model.config import ModelConfig, config_from_dict
from llmi3d_core.model.llm import LLM_SOURCES
from llmi3d_core.model.llmi3d import LLMI3D
from llmi3d_core.model.pointer import EVIDENCE
from llmi3d_core.prediction import NO_ANSWER_RATIO

FORMAT = "llmi3d-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def referenced_prefixes(config: ModelConfig) -> tuple[str, ...]:
    """State-dict key prefixes whose weights come from elsewhere (not stored)."""
    prefixes = []
    source = LLM_SOURCES.get(config.llm.kind)
    if source is None or source.pretrained:
        prefixes.append("llm.model.")
    if config.low_res.path is not None and not config.low_res.trainable:
        prefixes.append("low_res.backbone.")
    high = config.high_res
    if high.enabled and not high.trainable and (high.path is not None or high.pretrained):
        prefixes.append("high_res.backbone.")
    return tuple(prefixes)


def is_stored(key: str, prefixes: tuple[str, ...]) -> bool:
    """True for a key that a checkpoint stores (LoRA weights always are)."""
    return "lora_" in key or not key.startswith(prefixes)


def trained_state(model: torch.nn.Module, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores, detached and contiguous.

    Tied weights (a tiny LLM's embedding and LM head) are copied, since safetensors refuses
    tensors that share memory; loading writes the same values to both.
    """
    prefixes = referenced_prefixes(config)
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        if not is_stored(key, prefixes):
            continue
        tensor = value.detach().contiguous()
        if tensor.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        state[key] = tensor
    return state


def with_older_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with what checkpoints of older releases lack filled in, as they meant it.

    Before `others_calibration` (model revision 13), every candidate used `score_calibration`;
    before `answer_ratio` (revision 14) no model had an answer rule of its own; before
    `answer_calibration` (revision 15) every best candidate was scored from its logit.
    """
    state = dict(state)
    if "score_calibration" in state and "others_calibration" not in state:
        state["others_calibration"] = state["score_calibration"].clone()
    state.setdefault("answer_ratio", torch.tensor(NO_ANSWER_RATIO))
    state.setdefault("answer_calibration", torch.zeros(len(EVIDENCE) + 1))
    return state


def with_older_config(model_config: Any) -> Any:
    """A stored model config with what configs of older releases lack filled in, as they meant it.

    Before `detector.crop_names_from` (model revision 16) the crop heads named from the descriptor's
    summary columns; the default now reads all of it.
    """
    detector = model_config.get("detector") if isinstance(model_config, dict) else None
    if isinstance(detector, dict) and "crop_names_from" not in detector:
        model_config = {**model_config, "detector": {**detector, "crop_names_from": "summary"}}
    return model_config


def save_checkpoint(model: Any, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `model` (an LLMI3D) to `directory`, creating it; returns the directory.

    Args:
        model: the LLMI3D model (its `config` is stored).
        directory: target directory; existing files of the same names are replaced.
        extra: JSON-serialisable data to keep alongside (step, metrics, dataset name, ...).

    Raises:
        CheckpointError: when `extra` is not JSON-serialisable or the directory is not writable.
    """
    directory = Path(directory)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "extra": extra or {},
    }
    try:
        text = json.dumps(meta, indent=2)
    except TypeError as err:
        raise CheckpointError(f"checkpoint extra data is not JSON-serialisable: {err}") from err
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (WEIGHTS_FILE + ".tmp")
        merged = model.llm.lora_merged
        if merged:  # store the adapter and the base weights apart, as they are loaded
            model.llm.unmerge_lora()
        try:  # trained_state holds views of the weights: write them before merging back
            save_file(trained_state(model, model.config), str(tmp), metadata={"format": FORMAT})
        finally:
            if merged:
                model.llm.merge_lora()
        os.replace(tmp, directory / WEIGHTS_FILE)
        (directory / CONFIG_FILE).write_text(text + "\n")
    except OSError as err:
        raise CheckpointError(f"Could not write checkpoint to {directory}: {err}") from err
    return directory


def read_checkpoint_meta(directory: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The ModelConfig and the extra data of a checkpoint, without loading weights.

    Raises:
        CheckpointError: missing or malformed config.json, or an unsupported format version.
    """
    path = Path(directory) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{directory} is not an llmi3d checkpoint: {CONFIG_FILE} is missing"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"Could not read {path}: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an llmi3d checkpoint config (format {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {meta.get('format_version')!r}; this code reads "
            f"version {FORMAT_VERSION}"
        )
    try:
        config = config_from_dict(with_older_config(meta.get("model_config") or {}))
    except ConfigError as err:
        raise CheckpointError(f"{path}: invalid model_config: {err}") from err
    return config, dict(meta.get("extra") or {})


def load_checkpoint(directory: str | Path) -> Any:
    """Rebuild the LLMI3D model of a checkpoint (on the CPU, float32, in eval mode).

    The base LLM and referenced backbones are loaded from their sources; the stored tensors
    replace everything else.

    Raises:
        CheckpointError: missing files, or tensors that do not match the rebuilt model.
    """
    config, _ = read_checkpoint_meta(directory)
    weights = Path(directory) / WEIGHTS_FILE
    try:
        state = with_older_tensors(load_file(str(weights)))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"Could not read checkpoint weights {weights}: {err}") from err
    model = LLMI3D(config, load_pretrained=True)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"checkpoint {directory} does not fit its model: {err}") from err
    prefixes = referenced_prefixes(config)
    missing = [key for key in missing if is_stored(key, prefixes)]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {directory} does not match its model config: "
            f"{len(missing)} missing tensors {missing[:3]}, "
            f"{len(unexpected)} unexpected tensors {unexpected[:3]}"
        )
    return model.eval()
