"""Dataclass configuration of a training run: every default lives here, once.

A run is described by a YAML file (config/train/*.yaml) whose keys mirror `TrainConfig`, plus
``key=value`` overrides from the command line (dotted paths, YAML values):

    llmi3d train --config config/train/tiny_synth.yaml max_steps=50 optim.lr=1e-3 \
        data.synth.num_images=40 model.heads.readout=text

A YAML file may start from another one with ``base: other.yaml`` (a path relative to the file);
its keys then override the base recursively. Unknown keys are rejected
(``Unknown config key: ...``, as nanoGPT's configurator) and every value is type-checked, so a
typo fails before any work is done.

The `model` section is the model's own config (llmi3d_core/model/config.py): ``preset: NAME``
and/or ``file: PATH`` and any overrides of its fields, e.g. ``model.heads.readout: text`` for the
Text3D baseline; it is resolved and checked by `resolve_model_config`.

`method` picks what is trained: "model" (LLMI3D or one of its ablations) or a non-learned
baseline ("mean_box", "backproject") fitted on the training split by the same command.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmi3d_core.config_io import apply_overrides, dataclass_from_dict, merge, parse_override
from llmi3d_core.data.synth.generator import SynthConfig
from llmi3d_core.errors import ConfigError
from llmi3d_core.model.config import ModelConfig
from llmi3d_core.model.presets import get_preset, load_config_file
from llmi3d_core.paths import share_dir

__all__ = [
    "METHODS",
    "STAGE_KINDS",
    "BaselineConfig",
    "DataConfig",
    "OptimConfig",
    "StageConfig",
    "SynthSpec",
    "TrainConfig",
    "apply_overrides",
    "config_diff",
    "config_from_dict",
    "config_to_dict",
    "load_train_config",
    "parse_override",
    "resolve_model_config",
    "resolve_synth_config",
]

# What `llmi3d train` can train; the baselines are fitted in seconds, the model by gradient steps.
METHODS = ("model", "mean_box", "backproject")
# What a stage of a staged run trains (train_stages.py):
#   detector  the HR neck, dense heads and object-token projector on every object of the
#             training images (no language); a frozen backbone's maps are cached once per image
#   crops     the crop heads (category, colour, 2D box correction) on descriptors of crops of
#             every training object's jittered box, computed once with the frozen backbone
#   pointer   the pointer and its residual on cached LLM states (everything else frozen)
#   joint     every trainable parameter through the whole teacher-forced model
STAGE_KINDS = ("detector", "crops", "pointer", "joint")
SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
BEST_METRICS = ("val_loss", "val_acc25")


@dataclass
class SynthSpec:
    """How to generate the training set when `data.root` does not exist yet.

    Attributes:
        num_images: images to render (each gives several queries).
        seed: generator seed (same seed, same dataset, byte for byte).
        options: further keyword arguments of the synthetic generator's config.
    """

    num_images: int = 200
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ConfigError(f"data.synth.num_images must be >= 1, got {self.num_images}")


@dataclass
class DataConfig:
    """Where the training data is and how it is read.

    Attributes:
        root: dataset directory (docs/dataset_format.md); relative paths are taken from the
            current directory.
        train_split, val_split: split specs (splits.select_queries grammar, e.g. "train",
            "train@source", "val:base").
        query_types: keep only these query types (None: all).
        augment: GroundingDataset's training augmentation.
        mirrored_copies: the detector stage also trains on a left-right mirrored copy of every
            training image. Unlike `augment` it keeps the backbone cache (twice as many maps);
            against the heatmap head overfitting a few thousand images.
        num_workers: DataLoader worker processes (0 loads in the training process; on the
            2-core CPU that is the fastest).
        val_queries: validation queries evaluated during training (the first ones of the val
            split, a fixed subset so numbers are comparable across steps); 0 = all.
        cache_items: keep loaded items in memory (only without augmentation and with
            num_workers = 0): worth it for small models, where decoding the PNGs costs as much
            as the step.
        synth: generate `root` with the synthetic generator when it does not exist.
    """

    root: str = "data/synth"
    train_split: str = "train"
    val_split: str = "val"
    query_types: tuple[str, ...] | None = None
    augment: bool = False
    mirrored_copies: bool = False
    num_workers: int = 0
    val_queries: int = 64
    cache_items: bool = False
    synth: SynthSpec | None = None

    def __post_init__(self) -> None:
        if self.num_workers < 0 or self.val_queries < 0:
            raise ConfigError(
                f"data.num_workers and data.val_queries must be >= 0, got {self.num_workers} "
                f"and {self.val_queries}"
            )
        if self.augment and self.mirrored_copies:
            raise ConfigError("data.augment already mirrors at random: drop data.mirrored_copies")


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (see train_loop.get_lr).

    Attributes:
        lr: peak learning rate, reached at the end of warm-up.
        min_lr: floor of the decay (nanoGPT: about lr / 10).
        warmup_steps: optimizer steps of linear warm-up from ~0 to lr.
        decay_steps: the step at which the decay reaches min_lr; 0 = max_steps.
        schedule: "cosine", "linear" or "constant" (decay shape after warm-up).
        weight_decay: AdamW decoupled weight decay (not applied to biases and norms).
        beta1, beta2: AdamW betas.
        grad_clip: clip the global gradient norm to this; 0 disables clipping.
        backbone_lr_scale: the trainable HR backbone (a pretrained CNN) learns at this fraction
            of the rate (detectors usually fine-tune theirs about ten times slower than their
            new heads).
    """

    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 20
    decay_steps: int = 0
    schedule: str = "cosine"
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    backbone_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.backbone_lr_scale <= 1:
            raise ConfigError(
                f"optim.backbone_lr_scale must be in (0, 1], got {self.backbone_lr_scale}"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"optim.schedule {self.schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}"
            )
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ConfigError(
                f"optim.lr must be > 0 and 0 <= optim.min_lr <= optim.lr, got lr={self.lr}, "
                f"min_lr={self.min_lr}"
            )
        if self.warmup_steps < 0 or self.decay_steps < 0 or self.grad_clip < 0:
            raise ConfigError(
                "optim.warmup_steps, optim.decay_steps and optim.grad_clip must be >= 0, got "
                f"{self.warmup_steps}, {self.decay_steps}, {self.grad_clip}"
            )


@dataclass
class BaselineConfig:
    """Options of the non-learned baselines (method "mean_box" / "backproject").

    Attributes:
        box2d: where "backproject" takes the target's 2D box: "gt" (the annotated tight box, an
            oracle 2D grounder such as a perfect TransVG) or "proj" (the projected 3D box).
        depth: "category_mean" (the mean training depth of the category, the paper's
            TransVG+backproj) or "height" (pinhole depth f_y H / h from the category-mean
            height H and the 2D box height h).
    """

    box2d: str = "gt"
    depth: str = "category_mean"

    def __post_init__(self) -> None:
        if self.box2d not in ("gt", "proj"):
            raise ConfigError(f"baseline.box2d {self.box2d!r} is unknown; allowed: gt, proj")
        if self.depth not in ("category_mean", "height"):
            raise ConfigError(
                f"baseline.depth {self.depth!r} is unknown; allowed: category_mean, height"
            )


@dataclass
class StageConfig:
    """One stage of a staged run (see STAGE_KINDS).

    The stages run in order, each starting from the best checkpoint of the previous one.

    Attributes:
        kind: "detector", "crops", "pointer" or "joint".
        max_steps: optimizer steps of this stage.
        batch_size: samples per step (images for "detector", objects for "crops", queries
            otherwise); 0 = the run's.
        lr: peak learning rate; 0 = the run's optim.lr (min_lr keeps its ratio to lr).
        warmup_steps: -1 = the run's optim.warmup_steps.
        eval_interval: validate every N steps (and at the end); -1 = the run's.
        max_images: train on the queries (the objects, for "crops") of the first N training
            images only; 0 = all. The pointer stage runs the LLM once per cached query, which
            bounds what a CPU can do.
        hide_targets: pointer stage only: the probability that a training caption or question
            is shown without its targets, labelled "no object" (train_stages.hide_targets):
            negatives made from positives, free since the LLM states are cached. 0 = never.
        not_here_rate: pointer stage only: fit the model's own answer rule on the validation
            split: the lowest min_ratio_to_nothing that says "not here" to this share of its
            negative queries (LLMI3D.answer_ratio; every negative of the split is read, not only
            the first data.val_queries). 0 = none: the node's default ratio serves the model.
    """

    kind: str = "joint"
    max_steps: int = 100
    batch_size: int = 0
    lr: float = 0.0
    warmup_steps: int = -1
    eval_interval: int = -1
    max_images: int = 0
    hide_targets: float = 0.0
    not_here_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ConfigError(
                f"stages[].kind {self.kind!r} is unknown; allowed: {', '.join(STAGE_KINDS)}"
            )
        if self.max_steps < 1 or self.batch_size < 0 or self.lr < 0:
            raise ConfigError(
                f"stage {self.kind}: max_steps must be >= 1, batch_size and lr >= 0, got "
                f"{self.max_steps}, {self.batch_size}, {self.lr}"
            )
        # the pointer stage's shares, and why they belong to it alone
        for name, why in (
            ("hide_targets", "its candidates are cached"),
            ("not_here_rate", "it fits the pointer's answer rule"),
        ):
            share = getattr(self, name)
            if not 0.0 <= share < 1.0:
                raise ConfigError(f"stage {self.kind}: {name} must be in [0, 1), got {share}")
            if share and self.kind != "pointer":
                raise ConfigError(f"stage {self.kind}: {name} is an option of the pointer stage "
                                  f"({why}); remove it here")  # fmt: skip


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        name: run name (logs, TensorBoard).
        method: "model", "mean_box" or "backproject" (see METHODS).
        out_dir: run directory: config.yaml, log.jsonl, checkpoints/, `latest` and `best`.
        seed: seeds the model initialisation, the data order and every RNG.
        model: the model config, resolved by `resolve_model_config` (preset/file + overrides).
        data: the training data.
        optim: optimizer and schedule.
        baseline: options of the baselines.
        batch_size: samples per micro-batch, per process.
        grad_accum: micro-batches per optimizer step (effective batch = batch_size x grad_accum
            x processes).
        max_steps: optimizer steps of the whole run (of the single joint stage when `stages` is
            empty; with stages, each stage has its own).
        stages: the stages of a staged run, in order (StageConfig); empty = one joint stage with
            the settings above (the run directory then holds it directly).
        max_steps_this_run: stop (with a checkpoint) after this many steps in this process, to
            split a run over several invocations; 0 = no limit.
        eval_interval: validate every N steps (and at the end); 0 = only at the end.
        checkpoint_interval: write `latest` every N steps (and at the end); 0 = only at the end.
        keep_checkpoints: periodic checkpoints kept on disk (older ones are deleted).
        log_interval: append a training line to log.jsonl every N steps.
        best_metric: "val_loss" (lower is better) or "val_acc25" (Acc@0.25 of the decoded boxes
            on the validation queries, higher is better) chooses `best`. A stage that scores no
            boxes chooses on its own key (train_stages.StageTask.selection_key: the loss, or
            the crop heads' error rate).
        mixed_precision: "auto" (bf16 on a GPU that has it, else fp16 on a GPU; on a CPU,
            bf16 where it has bfloat16 units, else none), "no", "bf16" or "fp16" (GPU only).
            On a CPU, bf16 runs the frozen passes that feed the crop heads and the pointer in
            bfloat16; trained weights, losses and the detector stay float32 (precision.py).
        device: "auto", "cpu" or "cuda".
        threads: torch CPU threads; 0 keeps torch's default.
        tensorboard: also write TensorBoard events when the package is installed.
        progress: show a tqdm progress bar.
    """

    name: str = "run"
    method: str = "model"
    out_dir: str = "runs/run"
    seed: int = 0
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 200
    stages: tuple[StageConfig, ...] = ()
    max_steps_this_run: int = 0
    eval_interval: int = 50
    checkpoint_interval: int = 50
    keep_checkpoints: int = 2
    log_interval: int = 1
    best_metric: str = "val_loss"
    mixed_precision: str = "auto"
    device: str = "auto"
    threads: int = 0
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        choices = {
            "method": METHODS,
            "best_metric": BEST_METRICS,
            "mixed_precision": MIXED_PRECISION,
            "device": DEVICES,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"{key} {getattr(self, key)!r} is unknown; allowed: {', '.join(allowed)}"
                )
        positive = ("batch_size", "grad_accum", "max_steps", "keep_checkpoints", "log_interval")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("max_steps_this_run", "eval_interval", "checkpoint_interval", "threads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")

    @property
    def samples_per_step(self) -> int:
        """Samples per optimizer step on one process (batch_size x grad_accum)."""
        return self.batch_size * self.grad_accum


# --------------------------------------------------------------------------------------------
# Plain data <-> dataclasses, with type checks
# --------------------------------------------------------------------------------------------


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from plain data; missing keys keep their defaults.

    Raises:
        ConfigError: for an unknown key, a wrong type or an invalid value.
    """
    config = dataclass_from_dict(TrainConfig, data)
    # the free-form sections are checked now too, so that a typo fails before any work
    if config.method == "model":
        resolve_model_config(config.model)
    if config.data.synth is not None:
        resolve_synth_config(config.data.synth)
    return config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain data (tuples as lists), what config.yaml and checkpoints hold."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs (sorted)."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        dotted = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, dotted + ".")
        elif va != vb:
            out.append(dotted)
    return out


# --------------------------------------------------------------------------------------------
# YAML files and overrides
# --------------------------------------------------------------------------------------------


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config YAML, following `base:` chains (relative to the file)."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"config base chain loops: {chain}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"Could not read training config {path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"Training config {path} is not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"Training config {path} must hold a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a file name, got {base!r}")
    return merge(_read_yaml(path.parent / base, (*seen, path)), data)


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training config file (or the defaults when `path` is None) and apply overrides.

    Args:
        path: YAML file; may name a `base:` file whose keys it overrides.
        overrides: ``key=value`` strings, applied in order after the file.

    Returns:
        The checked TrainConfig.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or invalid value.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    return config_from_dict(apply_overrides(data, list(overrides or [])))


def _find_config_file(name: str) -> Path:
    """A model config path as given, else relative to the package's share directory."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path
    try:
        shared = share_dir() / path
    except FileNotFoundError:
        return path
    return shared if shared.exists() else path


def resolve_model_config(spec: dict[str, Any]) -> ModelConfig:
    """The `model` section -> a checked ModelConfig.

    ``file: PATH`` loads a model YAML (which may itself name a preset; a relative PATH that does
    not exist from the current directory is looked up in the package's share directory, so
    ``file: config/model/hf_paper.yaml`` works installed too), else ``preset: NAME``
    starts from a preset, else the defaults; the remaining keys override that base.

    Raises:
        ConfigError: unknown preset or key (named as ``model.<path>``), or a wrong type.
    """
    spec = dict(spec)
    file_name = spec.pop("file", None)
    preset = spec.pop("preset", None)
    if file_name is not None:
        base = load_config_file(_find_config_file(str(file_name))).to_dict()
    elif preset is not None:
        base = get_preset(str(preset)).to_dict()
    else:
        base = {}
    return dataclass_from_dict(ModelConfig, merge(base, spec), "model")


def resolve_synth_config(spec: SynthSpec) -> SynthConfig:
    """The `data.synth` section -> the generator's checked SynthConfig.

    Raises:
        ConfigError: an unknown or mistyped key under ``data.synth.options``.
    """
    options = {**spec.options, "num_images": spec.num_images, "seed": spec.seed}
    return dataclass_from_dict(SynthConfig, options, "data.synth.options")
