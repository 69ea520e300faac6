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
    # one GPU (bf16 autocast where the GPU has it): the default recipe, its detector fine-tuned
    llmi3d train --config config/train/smol_synth_gpu.yaml
    # several GPUs on one machine: one process per GPU through accelerate (DDP)
    accelerate launch --multi_gpu --num_processes 4 -m llmi3d_core.cli train \
        --config config/train/paper_7b.yaml
    # a baseline, fitted by the same command and evaluated like a model
    llmi3d train --config config/train/baseline_mean_box.yaml
    llmi3d eval --checkpoint runs/baseline_mean_box/best --data data/synth --split test

This module runs a whole run: its stages in order (train_stages.py says what each trains), each
through the loop of train_loop.py (exact resume, losses), in the run directory of rundir.py
(config.yaml, log.jsonl, checkpoints, `latest` and `best` links, done.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from llmi3d_core.baselines import fit_baseline, save_baseline
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.splits import select_queries
from llmi3d_core.errors import ConfigError
from llmi3d_core.rundir import (
    CHECKPOINTS,
    CONFIG_FILE,
    DONE_FILE,
    RunLog,
    check_resumable,
    clean_stale,
    point_link,
    start_run_dir,
    write_dir_atomically,
    write_done,
)
from llmi3d_core.train_config import StageConfig, TrainConfig, load_train_config
from llmi3d_core.train_data import prepare_data
from llmi3d_core.train_loop import StageTrainer
from llmi3d_core.train_stages import (
    check_crop_stage,
    make_task,
    model_config_for_data,
    size_priors,
)

__all__ = ["add_arguments", "ensure_trained", "run", "train"]


# --------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------


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
        check_resumable(out_dir, config)
        return (out_dir / "best").resolve()
    out_dir, resuming = start_run_dir(config, resume, overwrite)
    prepare_data(config, progress=config.progress)
    if config.method != "model":
        return _fit_baseline_run(config, out_dir)
    return _train_model(config, out_dir, resuming)


def _fit_baseline_run(config: TrainConfig, out_dir: Path) -> Path:
    """Fit a non-learned baseline on the training split and store it as the run's `best`."""
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
    write_done(out_dir, summary)
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
    dataset = read_dataset(config.data.root)
    model_config = model_config_for_data(config, dataset)
    priors = size_priors(dataset, config.data.train_split, model_config.detector.categories)
    stages = _stages(config)
    check_crop_stage(model_config, [stage.kind for stage in stages])
    init: Path | None = None
    best = out_dir / "best"
    for index, stage in enumerate(stages, start=1):
        stage_dir = out_dir if not config.stages else out_dir / "stages" / f"{index}-{stage.kind}"
        stage_dir.mkdir(parents=True, exist_ok=True)
        if config.stages:
            clean_stale(stage_dir)
        done = (stage_dir / DONE_FILE).exists() and (stage_dir / "best").exists()
        if not done:
            # a staged run links out_dir/latest only when it ends: its stages' own `latest`
            # (only ever written by this run: a new or overwritten run starts empty) says it
            stage_resuming = (stage_dir / "latest").exists() and (resuming or bool(config.stages))
            task = make_task(config, stage, dataset)
            trainer = StageTrainer(
                _stage_config(config, stage), stage_dir, stage_resuming, init, task, model_config,
                priors,
            )  # fmt: skip
            best = trainer.run()
            if not (stage_dir / DONE_FILE).exists():  # stopped by max_steps_this_run
                return best
        init = (stage_dir / "best").resolve()
    if config.stages:
        last = out_dir / "stages" / f"{len(stages)}-{stages[-1].kind}"
        point_link(out_dir / "best", (last / "best").resolve())
        point_link(out_dir / "latest", (last / "latest").resolve())
        summary = json.loads((last / DONE_FILE).read_text(encoding="utf-8"))
        summary["stages"] = [f"{i}-{s.kind}" for i, s in enumerate(stages, start=1)]
        write_done(out_dir, summary)
    return (out_dir / "best").resolve()


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
