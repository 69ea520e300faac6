"""The run directory of `llmi3d train`: its layout, atomic checkpoints, RNG state and log.

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

Checkpoints are written to a temporary directory and renamed into place, then the `latest`
symlink is replaced by rename(2): a kill at any moment leaves the previous checkpoint intact,
and the `.tmp-*` leftovers of a killed process are removed at the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from llmi3d_core.errors import ConfigError
from llmi3d_core.train_config import TrainConfig, config_diff, config_to_dict

__all__ = [
    "CHECKPOINTS",
    "CONFIG_FILE",
    "DONE_FILE",
    "LOG_FILE",
    "RUN_CONTROL_KEYS",
    "TRAINER_FILE",
    "RunLog",
    "check_resumable",
    "clean_stale",
    "point_link",
    "prune_checkpoints",
    "publish_dir",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "start_run_dir",
    "write_dir_atomically",
    "write_done",
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
# RNG state
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


# --------------------------------------------------------------------------------------------
# Checkpoints: atomic directories, symlink pointers
# --------------------------------------------------------------------------------------------


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


def clean_stale(out_dir: Path) -> None:
    """Remove temporary directories and links left by a killed process."""
    for parent in (out_dir, out_dir / CHECKPOINTS):
        if not parent.is_dir():
            continue
        for path in parent.glob(".tmp-*"):
            if path.is_symlink() or path.is_file():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(out_dir: Path, prefix: str, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints named `prefix`-NNNNNN (never a linked one)."""
    linked = {
        (out_dir / name).resolve() for name in ("latest", "best") if (out_dir / name).exists()
    }
    dirs = sorted((out_dir / CHECKPOINTS).glob(f"{prefix}-*"))
    for path in dirs[: max(0, len(dirs) - keep)]:
        if path.resolve() not in linked:
            shutil.rmtree(path, ignore_errors=True)


def write_done(out_dir: Path, summary: dict[str, Any]) -> None:
    """Write done.json: the run (or stage) in `out_dir` has finished."""
    (out_dir / DONE_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# The run's config: start, check and resume
# --------------------------------------------------------------------------------------------


def check_resumable(out_dir: Path, config: TrainConfig) -> None:
    """Raise ConfigError when out_dir's config differs from `config` in a result-changing key."""
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
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    tmp = out_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out_dir / CONFIG_FILE)


def start_run_dir(config: TrainConfig, resume: bool, overwrite: bool) -> tuple[Path, bool]:
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
        check_resumable(out_dir, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale(out_dir)
    _write_config(out_dir, config)
    return out_dir, has_run and (out_dir / "latest").exists()


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
            try:  # tensorboard is optional: imported here, where its absence is handled
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (optional)
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
