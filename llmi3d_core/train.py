"""Train LLMI3D (or fit a baseline) from a YAML config: `llmi3d train`.

Paste-able commands (every key of config/train/*.yaml can be overridden as key=value):

    # CI smoke recipe, < 2 min on a 2-core CPU; the synthetic data is generated on first use
    llmi3d train --config config/train/tiny_synth.yaml
    # the embedded default model (SmolLM2-135M backbone), ~10 min on a 2-core CPU
    llmi3d train --config config/train/smol_synth.yaml
    # continue a run that was stopped or killed, exactly where its last checkpoint left it
    llmi3d train --config config/train/smol_synth.yaml --resume
    # overrides
    llmi3d train --config config/train/tiny_synth.yaml max_steps=50 optim.lr=1e-3 out_dir=runs/x
    # one GPU (bf16 autocast where the GPU has it)
    llmi3d train --config config/train/smol_synth_long.yaml device=cuda
    # several GPUs on one machine: one process per GPU through accelerate (DDP)
    accelerate launch --multi_gpu --num_processes 4 -m llmi3d_core.cli train \
        --config config/train/paper_7b.yaml
    # a baseline, fitted by the same command and evaluated like a model
    llmi3d train --config config/train/baseline_mean_box.yaml
    llmi3d eval --checkpoint runs/baseline_mean_box/best --data data/synth --split test

A run directory (`out_dir`) holds:

    config.yaml               the resolved TrainConfig (a resumed run must match it)
    log.jsonl                 one JSON object a line: "train" lines (loss terms, lr, samples/s)
                              and "eval" lines (validation loss, Acc@0.25, mean IoU)
    tb/                       TensorBoard events, when the tensorboard package is installed
    checkpoints/step-NNNNNN/  a model checkpoint (model/checkpoint.py format) + trainer.pt
                              (optimizer, step, data position, best so far) + rng-<rank>.pt
    checkpoints/best-NNNNNN/  the model with the best validation metric
    latest -> checkpoints/step-NNNNNN     symlinks, switched atomically
    best   -> checkpoints/best-NNNNNN
    done.json                 written when the run has finished

Exact resume. The data order is a pure function of (seed, micro-batch index): epoch e visits
the training set in the permutation seeded by (seed, e), so a resumed run continues with the
next micro-batch. Python, numpy and torch RNG states are restored, the model is rebuilt from the
same seed before its trained tensors are loaded, and DataLoaders have generators of their own
(creating an iterator does not draw from the global RNG). A resumed run therefore ends with
the same weights as an uninterrupted one (with data.num_workers = 0, or augmentation that does
not use worker RNG). Checkpoints are written to a temporary directory and renamed into place,
then the `latest` symlink is replaced by rename(2): a kill at any moment leaves the previous
checkpoint intact.

Losses: the model's forward returns its terms (L1 on the regression heads and on the
object-level depth map, cross-entropy on the answer text and <pos>, BCE of the score head) and
their weighted sum "total", which is what is minimised; the weights are the config's
`model.loss` section (llmi3d_core/model/config.py LossConfig), e.g. `model.loss.text=0.5`.

The loop follows nanoGPT's train.py: lr -> eval/checkpoint -> forward/backward inside
accelerator.accumulate -> clip -> step -> zero_grad(set_to_none=True) -> log.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmi3d_core.errors import CheckpointError, ConfigError
from llmi3d_core.train_config import (
    OptimConfig,
    StageConfig,
    TrainConfig,
    config_diff,
    config_to_dict,
    load_train_config,
    resolve_synth_config,
)

__all__ = [
    "StepBatchSampler",
    "add_arguments",
    "ensure_trained",
    "get_lr",
    "prepare_data",
    "run",
    "train",
]

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
DONE_FILE = "done.json"
TRAINER_FILE = "trainer.pt"
CHECKPOINTS = "checkpoints"
# Keys that may differ between a run and its resumption (they do not change the result).
RUN_CONTROL_KEYS = (
    "max_steps_this_run",
    "progress",
    "tensorboard",
    "threads",
    "data.num_workers",
    "data.root",
)


# --------------------------------------------------------------------------------------------
# Helpers: learning rate, evaluation, data order
# --------------------------------------------------------------------------------------------


def get_lr(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): warm-up, then decay to min_lr.

    1) linear warm-up from lr / (warmup + 1) to lr over `warmup_steps` steps,
    2) after `decay_steps` (0 = max_steps): min_lr,
    3) in between: cosine (or linear) decay from lr to min_lr; "constant" stays at lr.
    """
    # 1) linear warm-up
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / (optim.warmup_steps + 1)
    decay_steps = optim.decay_steps or max_steps
    # 2) after the decay: the floor
    if step >= decay_steps:
        return optim.min_lr if optim.schedule != "constant" else optim.lr
    # 3) in between: decay from lr down to min_lr
    ratio = (step - optim.warmup_steps) / max(1, decay_steps - optim.warmup_steps)  # [0, 1)
    if optim.schedule == "constant":
        return optim.lr
    cosine = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    coeff = 1.0 - ratio if optim.schedule == "linear" else cosine
    return optim.min_lr + coeff * (optim.lr - optim.min_lr)


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Endless micro-batches of dataset indices whose order depends only on (seed, index).

    Epoch e is the permutation of the training set drawn from a generator seeded with
    (seed, e); micro-batch b of process `rank` is slice (b mod per_epoch) * world + rank of it
    (incomplete last batches are dropped). Starting at `start_batch` therefore continues an
    earlier run exactly, which is what resume needs, and processes never share samples.

    Args:
        num_samples: training set size.
        batch_size: samples per micro-batch per process.
        seed: run seed.
        start_batch: first micro-batch index to yield (per process).
        rank, world: this process and the number of processes.

    Raises:
        ConfigError: when the training set is smaller than one global batch.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        *,
        start_batch: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_batch = start_batch
        self.rank = rank
        self.world = world
        self.per_epoch = num_samples // (batch_size * world)
        if self.per_epoch < 1:
            raise ConfigError(
                f"the training split has {num_samples} samples, fewer than one global batch "
                f"(batch_size {batch_size} x {world} processes); lower batch_size or add data"
            )

    def permutation(self, epoch: int) -> list[int]:
        """The visiting order of epoch `epoch`."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        index = self.start_batch
        epoch, order = -1, []
        while True:
            this_epoch, offset = divmod(index, self.per_epoch)
            if this_epoch != epoch:
                epoch, order = this_epoch, self.permutation(this_epoch)
            start = (offset * self.world + self.rank) * self.batch_size
            yield order[start : start + self.batch_size]
            index += 1


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def prepare_data(config: TrainConfig, progress: bool = True) -> Path:
    """Return the dataset directory, generating it first when absent and `data.synth` is set.

    Generation goes to a temporary sibling directory that is renamed into place at the end, so
    an interrupted generation is redone rather than half-used.

    Raises:
        ConfigError: when the directory does not exist and there is no `data.synth` section.
    """
    from llmi3d_core.data.format import DATASET_JSON

    root = Path(config.data.root)
    if (root / DATASET_JSON).is_file():
        return root
    if config.data.synth is None:
        raise ConfigError(
            f"data.root {str(root)!r} holds no dataset ({DATASET_JSON} missing) and the config "
            "has no data.synth section to generate one; run `llmi3d data synth --out "
            f"{root}` or add data.synth: {{num_images: N, seed: S}}"
        )
    from llmi3d_core.data.synth import generate_dataset

    synth = resolve_synth_config(config.data.synth)
    tmp = root.parent / f".tmp-{root.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    workers = min(2, os.cpu_count() or 1)
    generate_dataset(synth, tmp, overwrite=True, workers=workers, progress=progress)
    if root.exists():  # an unfinished directory of an earlier attempt
        shutil.rmtree(root)
    os.rename(tmp, root)
    return root


class CachedItems(torch.utils.data.Dataset[dict[str, Any]]):
    """Keep every item of a deterministic dataset in memory after its first load.

    For small models the PNG decoding and resizing of GroundingDataset cost as much as the
    training step (tiny: ~17 ms an item against ~14 ms of compute); items without augmentation
    are the same every epoch, so they are loaded once. Memory: one item of the tiny preset is
    ~0.13 MB, of smol ~1.7 MB.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.items: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self.items:
            self.items[index] = self.dataset[index]
        return self.items[index]


# --------------------------------------------------------------------------------------------
# Checkpoints: atomic directories, symlink pointers, RNG state
# --------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every RNG state a training step may draw from (python, numpy, torch, CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by `rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def write_dir_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling directory with `write(tmp)`, then rename it to `final`.

    A kill before the rename leaves only a `.tmp-*` directory (removed at the next start);
    `final` is never seen half-written.
    """
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    return publish_dir(tmp, final)


def publish_dir(tmp: Path, final: Path) -> Path:
    """Rename the finished directory `tmp` to `final` (replacing an older `final`)."""
    if final.exists():  # same step written twice: move the old one aside first
        trash = final.parent / f".tmp-old-{final.name}-{os.getpid()}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return final


def point_link(link: Path, target: Path) -> None:
    """Make symlink `link` point at `target` (relative), replacing it atomically."""
    tmp = link.parent / f".tmp-link-{link.name}-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


def _clean_stale(out_dir: Path) -> None:
    """Remove temporary directories and links left by a killed process."""
    for parent in (out_dir, out_dir / CHECKPOINTS):
        if not parent.is_dir():
            continue
        for path in parent.glob(".tmp-*"):
            if path.is_symlink() or path.is_file():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)


def _prune(out_dir: Path, prefix: str, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints named `prefix`-NNNNNN (never a linked one)."""
    linked = {
        (out_dir / name).resolve() for name in ("latest", "best") if (out_dir / name).exists()
    }
    dirs = sorted((out_dir / CHECKPOINTS).glob(f"{prefix}-*"))
    for path in dirs[: max(0, len(dirs) - keep)]:
        if path.resolve() not in linked:
            shutil.rmtree(path, ignore_errors=True)


def _load_model_tensors(model: Any, directory: Path) -> None:
    """Load a checkpoint's stored tensors into an already built model (strict on stored keys)."""
    from safetensors.torch import load_file

    from llmi3d_core.model.checkpoint import WEIGHTS_FILE, is_stored, referenced_prefixes

    state = load_file(str(directory / WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    prefixes = referenced_prefixes(model.config)
    missing = [k for k in missing if is_stored(k, prefixes)]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {directory} does not match the model of this config: missing "
            f"{missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})"
        )


# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------


class RunLog:
    """Appends JSON lines to log.jsonl (main process only) and mirrors scalars to TensorBoard."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, resume_step: int) -> None:
        self.path = out_dir / LOG_FILE
        self.enabled = enabled
        self.writer: Any = None
        if not enabled:
            return
        if resume_step >= 0 and self.path.exists():
            self._truncate_after(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL only
                return
            self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=max(resume_step, 0))

    def _truncate_after(self, step: int) -> None:
        """Drop lines of steps after `step` (written by the killed process past its checkpoint)."""
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line).get("step", 0)) <= step:
                    kept.append(line)
            except (json.JSONDecodeError, TypeError, ValueError):
                continue  # a line cut by the kill
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, event: str, step: int, values: dict[str, float]) -> None:
        """Append one line {"event", "step", "time", **values}."""
        if not self.enabled:
            return
        record = {"event": event, "step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                tag = key if "/" in key else f"{event}/{key}"
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------


def _make_accelerator(config: TrainConfig) -> Any:
    from accelerate import Accelerator, DistributedDataParallelKwargs

    cuda = torch.cuda.is_available() and config.device != "cpu"
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but torch sees no GPU; use device=cpu or auto")
    precision = config.mixed_precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if precision != "no" and not cuda:
        raise ConfigError(f"mixed_precision {precision!r} needs a GPU; use 'no' or 'auto' on CPU")
    return Accelerator(
        cpu=not cuda,
        mixed_precision=precision,
        gradient_accumulation_steps=config.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices (dim >= 2), none on biases, norms and embeddings rows."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _check_resumable(out_dir: Path, config: TrainConfig) -> None:
    """Raise ConfigError when out_dir's config differs from `config` in a result-changing key."""
    import yaml

    stored = yaml.safe_load((out_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    differing = [
        key
        for key in config_diff(stored, config_to_dict(config))
        if not key.startswith(RUN_CONTROL_KEYS)
    ]
    if differing:
        raise ConfigError(
            f"cannot resume {out_dir}: its {CONFIG_FILE} differs from this config in "
            f"{differing}; resume with the same config, or start a new out_dir"
        )


def _write_config(out_dir: Path, config: TrainConfig) -> None:
    import yaml

    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    tmp = out_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out_dir / CONFIG_FILE)


def _start_run_dir(config: TrainConfig, resume: bool, overwrite: bool) -> tuple[Path, bool]:
    """Create or check out_dir; return it and whether a checkpoint will be resumed."""
    out_dir = Path(config.out_dir)
    has_run = (out_dir / CONFIG_FILE).exists()
    if has_run and not resume:
        if not overwrite:
            raise ConfigError(
                f"out_dir {str(out_dir)!r} already holds a run; pass --resume to continue it, "
                "--overwrite to start over, or choose another out_dir"
            )
        shutil.rmtree(out_dir)
        has_run = False
    if has_run:
        _check_resumable(out_dir, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale(out_dir)
    _write_config(out_dir, config)
    return out_dir, has_run and (out_dir / "latest").exists()


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Run (or continue) the training described by `config`; return the `best` checkpoint path.

    Args:
        config: the run.
        resume: continue from out_dir/latest when present (a finished run returns at once).
        overwrite: delete an existing run in out_dir first.

    Returns:
        out_dir/best, resolved; None-like paths never: a finished run always has a best.

    Raises:
        ConfigError: bad config, or out_dir holding a different run.
        CheckpointError: a checkpoint that cannot be loaded.
    """
    out_dir = Path(config.out_dir)
    if resume and (out_dir / DONE_FILE).exists() and (out_dir / "best").exists():
        _check_resumable(out_dir, config)
        return (out_dir / "best").resolve()
    out_dir, resuming = _start_run_dir(config, resume, overwrite)
    prepare_data(config, progress=config.progress)
    if config.method != "model":
        return _fit_baseline_run(config, out_dir)
    return _train_model(config, out_dir, resuming)


def _fit_baseline_run(config: TrainConfig, out_dir: Path) -> Path:
    """Fit a non-learned baseline on the training split and store it as the run's `best`."""
    from llmi3d_core.baselines import fit_baseline, save_baseline
    from llmi3d_core.data.reader import read_dataset
    from llmi3d_core.data.splits import select_queries

    dataset = read_dataset(config.data.root)
    queries = select_queries(dataset, config.data.train_split)
    baseline = fit_baseline(
        config.method, dataset, queries, box2d=config.baseline.box2d, depth=config.baseline.depth
    )
    final = out_dir / CHECKPOINTS / "best-000000"

    def write(tmp: Path) -> None:
        save_baseline(baseline, tmp)

    write_dir_atomically(final, write)
    point_link(out_dir / "best", final)
    point_link(out_dir / "latest", final)
    log = RunLog(out_dir, True, False, -1)
    log.write("fit", 0, {"train_queries": float(len(queries))})
    summary = {"step": 0, "method": config.method, "train_queries": len(queries)}
    (out_dir / DONE_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return final.resolve()


def _stages(config: TrainConfig) -> list[StageConfig]:
    """The run's stages; a config without any is one joint stage with the run's settings."""
    if config.stages:
        return list(config.stages)
    return [StageConfig(kind="joint", max_steps=config.max_steps)]


def _stage_config(config: TrainConfig, stage: StageConfig) -> TrainConfig:
    """The run's config as one stage sees it (its steps, batch, learning rate, eval interval)."""
    optim = config.optim
    if stage.lr:
        ratio = optim.min_lr / optim.lr
        optim = dataclasses.replace(optim, lr=stage.lr, min_lr=stage.lr * ratio)
    if stage.warmup_steps >= 0:
        optim = dataclasses.replace(optim, warmup_steps=stage.warmup_steps)
    return dataclasses.replace(
        config,
        max_steps=stage.max_steps,
        batch_size=stage.batch_size or config.batch_size,
        eval_interval=config.eval_interval if stage.eval_interval < 0 else stage.eval_interval,
        optim=optim,
        stages=(),
    )


def _train_model(config: TrainConfig, out_dir: Path, resuming: bool) -> Path:
    """Run the stages in order; each starts from the best checkpoint of the one before.

    A run of one joint stage uses out_dir itself; a staged run puts stage i in
    out_dir/stages/<i>-<kind>/ and points out_dir's `best` and `latest` at the last stage's.
    Finished stages (done.json) are skipped on resume.
    """
    from llmi3d_core.data.reader import read_dataset
    from llmi3d_core.train_stages import make_task, model_config_for_data, size_priors

    dataset = read_dataset(config.data.root)
    model_config = model_config_for_data(config, dataset)
    priors = size_priors(dataset, config.data.train_split, model_config.detector.categories)
    stages = _stages(config)
    init: Path | None = None
    best = out_dir / "best"
    for index, stage in enumerate(stages, start=1):
        stage_dir = out_dir if not config.stages else out_dir / "stages" / f"{index}-{stage.kind}"
        stage_dir.mkdir(parents=True, exist_ok=True)
        if config.stages:
            _clean_stale(stage_dir)
        done = (stage_dir / DONE_FILE).exists() and (stage_dir / "best").exists()
        if not done:
            # a staged run links out_dir/latest only when it ends: its stages' own `latest`
            # (only ever written by this run: a new or overwritten run starts empty) says it
            stage_resuming = (stage_dir / "latest").exists() and (resuming or bool(config.stages))
            task = make_task(config, stage, dataset)
            best = _train_stage(
                _stage_config(config, stage), stage_dir, stage_resuming, init, task, model_config,
                priors,
            )  # fmt: skip
            if not (stage_dir / DONE_FILE).exists():  # stopped by max_steps_this_run
                return best
        init = (stage_dir / "best").resolve()
    if config.stages:
        point_link(out_dir / "best", (out_dir / "stages" / f"{len(stages)}-{stages[-1].kind}" /
                                      "best").resolve())  # fmt: skip
        last = out_dir / "stages" / f"{len(stages)}-{stages[-1].kind}"
        point_link(out_dir / "latest", (last / "latest").resolve())
        summary = json.loads((last / DONE_FILE).read_text(encoding="utf-8"))
        summary["stages"] = [f"{i}-{s.kind}" for i, s in enumerate(stages, start=1)]
        (out_dir / DONE_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return (out_dir / "best").resolve()


def _train_stage(  # noqa: PLR0917 (the nanoGPT loop reads top to bottom)
    config: TrainConfig,
    out_dir: Path,
    resuming: bool,
    init: Path | None,
    task: Any,
    model_config: Any,
    priors: torch.Tensor,
) -> Path:
    """The gradient-descent loop of one stage (see the module docstring)."""
    from tqdm import tqdm

    from llmi3d_core.model.checkpoint import save_checkpoint
    from llmi3d_core.model.llmi3d import LLMI3D
    from llmi3d_core.train_stages import to_device

    if config.threads:
        torch.set_num_threads(config.threads)
    accelerator = _make_accelerator(config)
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes

    # model, built from the run seed (so random parts not stored in checkpoints are reproduced)
    seed_everything(config.seed)
    model = LLMI3D(model_config, load_pretrained=True)
    model.set_size_priors(priors)
    if init is not None:
        _load_model_tensors(model, init)
    task.select_trainable(model)
    model.train()
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.optim.weight_decay),
        lr=config.optim.lr,
        betas=(config.optim.beta1, config.optim.beta2),
        fused=False,
    )

    # state to resume
    # best so far: (sign * metric, val loss), compared as a tuple so ties go to the lower loss
    start_step, best_value, best_step = 0, (math.inf, math.inf), -1
    restored_rng: dict[str, Any] | None = None
    if resuming:
        latest = (out_dir / "latest").resolve()
        try:
            trainer = torch.load(latest / TRAINER_FILE, map_location="cpu", weights_only=False)
            rank_rng = torch.load(latest / f"rng-{rank}.pt", map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError) as err:
            raise CheckpointError(f"Could not read the training state in {latest}: {err}") from err
        if trainer.get("world") != world:
            raise CheckpointError(
                f"{latest} was written by {trainer.get('world')} processes, this run has {world}; "
                "resume with the same number of processes"
            )
        _load_model_tensors(model, latest)
        optimizer.load_state_dict(trainer["optimizer"])
        start_step, best_step = trainer["step"], trainer["best_step"]
        best_value = tuple(trainer["best"])
        restored_rng = rank_rng

    model, optimizer = accelerator.prepare(model, optimizer)
    if resuming and accelerator.scaler is not None and trainer.get("scaler") is not None:
        accelerator.scaler.load_state_dict(trainer["scaler"])
    raw_model = accelerator.unwrap_model(model)

    # data: endless micro-batches in a seed-determined order, starting where the run stopped
    # (caches are computed here, from the model as loaded: deterministic, so a resumed run
    # computes the same ones)
    train_set, val_set = task.datasets(raw_model)
    sampler = StepBatchSampler(
        len(train_set),
        config.batch_size,
        config.seed,
        start_batch=start_step * config.grad_accum,
        rank=rank,
        world=world,
    )
    # each DataLoader has a generator of its own: making an iterator must not draw from the
    # global RNG (a resumed run makes its training iterator at a different point)
    loader_kwargs: dict[str, Any] = {"collate_fn": task.collate, "num_workers": 0}
    if task.kind == "joint":
        loader_kwargs["num_workers"] = config.data.num_workers
    batches = iter(
        torch.utils.data.DataLoader(
            train_set,
            batch_sampler=sampler,
            generator=torch.Generator().manual_seed(config.seed),
            **loader_kwargs,
        )
    )
    val_loader = None
    if val_set is not None:
        shard = torch.utils.data.Subset(val_set, range(rank, len(val_set), world))
        val_loader = torch.utils.data.DataLoader(
            shard,
            batch_size=config.batch_size,
            generator=torch.Generator().manual_seed(config.seed),
            **loader_kwargs,
        )
    best_metric = config.best_metric
    if task.kind == "detector" or (best_metric == "val_acc25" and raw_model.readout.offset is None):
        best_metric = "val_loss"  # no boxes to score: choose on the loss
    sign = -1.0 if best_metric == "val_acc25" else 1.0  # minimise sign * value

    log = RunLog(out_dir, main, config.tensorboard, start_step if resuming else -1)
    if restored_rng is not None:
        set_rng_state(restored_rng)  # last: nothing above may draw after this point

    def save_step(step: int) -> None:
        """Checkpoint `step`: model + optimizer + data position + RNG; then point `latest`."""
        final = out_dir / CHECKPOINTS / f"step-{step:06d}"
        tmp = final.parent / f".tmp-{final.name}-shared"
        rng = rng_state()
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        torch.save(rng, tmp / f"rng-{rank}.pt")
        accelerator.wait_for_everyone()
        if main:
            extra = {
                "step": step,
                "seed": config.seed,
                "run": config.name,
                "data": config.data.root,
            }
            save_checkpoint(raw_model, tmp, extra=extra)
            trainer_state = {
                "step": step,
                "best": list(best_value),
                "best_step": best_step,
                "world": world,
                "optimizer": optimizer.state_dict(),
                "scaler": None if accelerator.scaler is None else accelerator.scaler.state_dict(),
                "config": config_to_dict(config),
            }
            torch.save(trainer_state, tmp / TRAINER_FILE)
            publish_dir(tmp, final)
            point_link(out_dir / "latest", final)
            _prune(out_dir, "step", config.keep_checkpoints)
        accelerator.wait_for_everyone()

    def save_best(step: int, metrics: dict[str, float]) -> None:
        final = out_dir / CHECKPOINTS / f"best-{step:06d}"
        extra = {
            "step": step,
            "seed": config.seed,
            "run": config.name,
            "data": config.data.root,
            "metrics": metrics,
        }

        def write(tmp: Path) -> None:
            save_checkpoint(raw_model, tmp, extra=extra)

        write_dir_atomically(final, write)
        point_link(out_dir / "best", final)
        _prune(out_dir, "best", 1)

    def validate(step: int) -> None:
        nonlocal best_value, best_step
        if val_loader is None:
            return
        metrics = task.evaluate(model, val_loader, accelerator)
        log.write("eval", step, metrics)
        key = "val/acc@0.25" if best_metric == "val_acc25" else "val/loss"
        value = (sign * metrics[key], metrics["val/loss"])
        if value < best_value:
            best_value, best_step = value, step
            if main:
                save_best(step, metrics)
        accelerator.wait_for_everyone()

    samples_per_step = config.samples_per_step * world
    bar = tqdm(
        total=config.max_steps,
        initial=start_step,
        disable=not (config.progress and main),
        desc=f"{config.name} {task.kind}",
        unit="step",
        dynamic_ncols=True,
    )
    stop_at = config.max_steps
    if config.max_steps_this_run:
        stop_at = min(stop_at, start_step + config.max_steps_this_run)
    step = start_step
    while step < stop_at:
        # learning rate of this step
        lr = get_lr(step, config.optim, config.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # evaluate and checkpoint (not at the step a resumed run starts from: done before)
        if step > start_step or (step > 0 and not resuming):
            if config.eval_interval and step % config.eval_interval == 0:
                validate(step)
            if config.checkpoint_interval and step % config.checkpoint_interval == 0:
                save_step(step)

        # forward / backward over grad_accum micro-batches
        started = time.perf_counter()
        terms: dict[str, float] = {}
        for _ in range(config.grad_accum):
            batch = to_device(next(batches), accelerator.device)
            with accelerator.accumulate(model):
                losses = task.losses(model, batch)
                accelerator.backward(losses["total"])
            for name, value in losses.items():
                terms[name] = terms.get(name, 0.0) + float(value.detach()) / config.grad_accum
        if not math.isfinite(terms["total"]):
            raise FloatingPointError(
                f"training loss is {terms['total']} at step {step}; lower optim.lr or check data"
            )
        # clip, step, zero the gradients
        grad_norm = math.nan
        if config.optim.grad_clip > 0:
            grad_norm = float(
                accelerator.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], config.optim.grad_clip
                )
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        # log
        elapsed = time.perf_counter() - started
        speed = samples_per_step / max(elapsed, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{terms['total']:.4f}", lr=f"{lr:.2e}", samples_s=f"{speed:.1f}")
        if step % config.log_interval == 0 or step == stop_at:
            values = {("loss" if k == "total" else f"loss/{k}"): v for k, v in terms.items()}
            log.write(
                "train",
                step,
                {
                    **values,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "samples_per_s": speed,
                    "step_s": elapsed,
                },
            )
    bar.close()

    # end of this process: eval and checkpoint the last step; done.json when the run is over.
    # A run stopped early does here what the loop would have done at the top of this step, so
    # that the resumed run (which skips its first step's eval/checkpoint) matches.
    finished = step >= config.max_steps
    if step > start_step or not resuming:
        due = bool(config.eval_interval) and step % config.eval_interval == 0
        if finished or due:
            validate(step)
        save_step(step)
    if finished and main:
        if not (out_dir / "best").exists():  # no validation split: the final model is the best
            save_best(step, {})
        summary = {
            "step": step,
            "best_step": best_step if best_step >= 0 else step,
            "best_metric": best_metric,
            "best_value": None if best_step < 0 else sign * best_value[0],
        }
        (out_dir / DONE_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    log.close()
    accelerator.wait_for_everyone()
    return (out_dir / "best").resolve() if (out_dir / "best").exists() else out_dir / "best"


def ensure_trained(
    config_path: str | Path, out_dir: str | Path, overrides: list[str] | None = None
) -> Path:
    """Return the best checkpoint of the finished run in `out_dir`, training it first if needed.

    A finished run (done.json) is returned at once; a partial one is resumed from its last
    checkpoint; otherwise training starts. A relative `data.root` is taken under
    `out_dir/data/` so that everything of the run lives in one (cache) directory.

    Args:
        config_path: training YAML, e.g. config/train/smol_synth.yaml.
        out_dir: run directory (its config.yaml must match the config when it exists).
        overrides: extra key=value overrides.

    Returns:
        The resolved `best` checkpoint directory, for Predictor.from_checkpoint.

    Raises:
        ConfigError: invalid config, or out_dir holding a run of a different config.
    """
    out = Path(out_dir).expanduser()
    config = load_train_config(config_path, [f"out_dir={out}", *(overrides or [])])
    if not Path(config.data.root).is_absolute():
        root = out / "data" / Path(config.data.root).name
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(root)))
    return train(config, resume=True)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llmi3d train`."""
    parser.add_argument(
        "--config",
        type=Path,
        help="training YAML (config/train/*.yaml); with --resume alone, out_dir's config.yaml",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in out_dir from its latest checkpoint (same data order and RNG)",
    )
    parser.add_argument("--overwrite", action="store_true", help="delete a run in out_dir first")
    parser.add_argument(
        "--out-dir", help="run directory (the same as the override out_dir=...)", default=None
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-3"
    )


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = list(args.overrides)
    if args.out_dir:
        overrides.append(f"out_dir={args.out_dir}")
    if args.config is not None:
        return load_train_config(args.config, overrides)
    if not args.resume:
        raise ConfigError("--config FILE is required (or --resume with out_dir=... of a run)")
    probe = load_train_config(None, overrides)
    stored = Path(probe.out_dir) / CONFIG_FILE
    if not stored.exists():
        raise ConfigError(f"--resume without --config needs {stored}, which does not exist")
    return load_train_config(stored, overrides)


def run(args: argparse.Namespace) -> int:
    """Run `llmi3d train`."""
    config = _config_from_args(args)
    best = train(config, resume=args.resume, overwrite=args.overwrite)
    done = (Path(config.out_dir) / DONE_FILE).exists()
    state = "finished" if done else "stopped (resume with --resume)"
    print(f"llmi3d train: {config.name} {state}; best checkpoint: {best}", file=sys.stderr)
    return 0
