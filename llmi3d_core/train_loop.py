"""The gradient-descent loop of one training stage (`StageTrainer`), with exact resume.

The loop follows nanoGPT's train.py: lr -> eval/checkpoint -> forward/backward inside
accelerator.accumulate -> clip -> step -> zero_grad(set_to_none=True) -> log.

Exact resume. The data order is a pure function of (seed, micro-batch index) (train_data.py),
so a resumed run continues with the next micro-batch. Python, numpy and torch RNG states are
restored, the model is rebuilt from the same seed before its trained tensors are loaded, and
DataLoaders have generators of their own (creating an iterator does not draw from the global
RNG). A resumed run therefore ends with the same weights as an uninterrupted one (with
data.num_workers = 0, or augmentation that does not use worker RNG). Checkpoints go to the run
directory atomically (rundir.py).

Losses: the stage's task (train_stages.py) returns its terms (for the joint model: L1 on the
regression heads and on the object-level depth map, cross-entropy on the answer text and <pos>,
BCE of the score head) and their weighted sum "total", which is what is minimised; the weights
are the config's `model.loss` section (llmi3d_core/model/config.py LossConfig), e.g.
`model.loss.text=0.5`.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from safetensors.torch import load_file
from tqdm import tqdm

from llmi3d_core.errors import CheckpointError, ConfigError
from llmi3d_core.model.checkpoint import (
    WEIGHTS_FILE,
    is_stored,
    referenced_prefixes,
    save_checkpoint,
    with_older_tensors,
)
from llmi3d_core.model.config import ModelConfig
from llmi3d_core.model.llmi3d import LLMI3D
from llmi3d_core.precision import resolve_mixed_precision
from llmi3d_core.rundir import (
    CHECKPOINTS,
    TRAINER_FILE,
    RunLog,
    point_link,
    prune_checkpoints,
    publish_dir,
    rng_state,
    seed_everything,
    set_rng_state,
    write_dir_atomically,
    write_done,
)
from llmi3d_core.train_config import OptimConfig, TrainConfig, config_to_dict
from llmi3d_core.train_data import make_loaders, to_device
from llmi3d_core.train_stages import StageTask

__all__ = ["StageTrainer", "get_lr", "load_model_tensors"]


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


def _make_accelerator(config: TrainConfig) -> Any:
    cuda = torch.cuda.is_available() and config.device != "cpu"
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but torch sees no GPU; use device=cpu or auto")
    precision = resolve_mixed_precision(config.mixed_precision, cuda)
    return Accelerator(
        cpu=not cuda,
        # on a CPU the stages apply bfloat16 themselves, to the passes it pays on (precision.py)
        mixed_precision=precision if cuda else "no",
        gradient_accumulation_steps=config.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


# parameters learning at optim.backbone_lr_scale x the schedule's rate: the pretrained HR CNN
BACKBONE_PREFIX = "high_res.backbone."


def _param_groups(
    model: torch.nn.Module, weight_decay: float, backbone_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices (dim >= 2), none on biases, norms and embeddings rows.

    Each group carries "lr_scale", its share of the schedule's rate (`BACKBONE_PREFIX`); empty
    groups are left out.
    """
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            scale = backbone_lr_scale if name.startswith(BACKBONE_PREFIX) else 1.0
            groups.setdefault((param.dim() >= 2, scale), []).append(param)
    return [
        {"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
        for (decays, scale), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], -kv[0][1]))
    ]


def load_model_tensors(model: Any, directory: Path) -> None:
    """Load a checkpoint's stored tensors into an already built model (strict on stored keys)."""
    state = with_older_tensors(load_file(str(directory / WEIGHTS_FILE)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    prefixes = referenced_prefixes(model.config)
    missing = [k for k in missing if is_stored(k, prefixes)]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {directory} does not match the model of this config: missing "
            f"{missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})"
        )


class StageTrainer:
    """One stage of a run in `out_dir`: set up (or restored) when built, trained by `run`.

    Everything that draws random numbers happens in the same order in a new and in a resumed
    run: the model is built from the run seed, then the resumed tensors and optimizer are
    loaded, the data prepared, and the saved RNG states restored last.
    """

    def __init__(  # noqa: PLR0917 (one call site, every argument named there)
        self,
        config: TrainConfig,
        out_dir: Path,
        resuming: bool,
        init: Path | None,
        task: StageTask,
        model_config: ModelConfig,
        priors: torch.Tensor,
    ) -> None:
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config, self.out_dir, self.resuming, self.task = config, out_dir, resuming, task
        self.accelerator = _make_accelerator(config)
        self.main = self.accelerator.is_main_process
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes

        model, optimizer = self._build_model(init, model_config, priors)
        # best so far: (sign * metric, val loss), compared as a tuple so ties go to the lower loss
        self.start_step, self.best_value, self.best_step = 0, (math.inf, math.inf), -1
        trainer: dict[str, Any] | None = None
        restored_rng: dict[str, Any] | None = None
        if resuming:
            trainer, restored_rng = self._restore(model, optimizer)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        scaler = self.accelerator.scaler
        if trainer is not None and scaler is not None and trainer.get("scaler") is not None:
            scaler.load_state_dict(trainer["scaler"])
        self.raw_model = self.accelerator.unwrap_model(self.model)

        # data: endless micro-batches in a seed-determined order, starting where the run stopped
        # (caches are computed here, from the model as loaded: deterministic, so a resumed run
        # computes the same ones)
        train_set, val_set = task.datasets(self.raw_model)
        self.batches, self.val_loader = make_loaders(
            train_set,
            val_set,
            batch_size=config.batch_size,
            seed=config.seed,
            start_batch=self.start_step * config.grad_accum,
            rank=self.rank,
            world=self.world,
            collate=task.collate,
            num_workers=config.data.num_workers if task.streams_images(self.raw_model) else 0,
        )
        self.best_metric = config.best_metric
        if not task.scores_boxes or (
            self.best_metric == "val_acc25" and self.raw_model.readout.offset is None
        ):
            self.best_metric = "val_loss"  # no boxes to score: the task's selection_key
        self.sign = -1.0 if self.best_metric == "val_acc25" else 1.0  # minimise sign * value
        # the validation metric that chooses `best` (done.json names it)
        self.best_key = "val/acc@0.25" if self.best_metric == "val_acc25" else task.selection_key

        self.log = RunLog(
            out_dir, self.main, config.tensorboard, self.start_step if resuming else -1
        )
        if restored_rng is not None:
            set_rng_state(restored_rng)  # last: nothing above may draw after this point

    def _build_model(
        self, init: Path | None, model_config: ModelConfig, priors: torch.Tensor
    ) -> tuple[LLMI3D, torch.optim.Optimizer]:
        """The model, started from `init`, and its optimizer.

        The model is built from the run seed, so that random parts not stored in checkpoints are
        reproduced.
        """
        config = self.config
        seed_everything(config.seed)
        model = LLMI3D(model_config, load_pretrained=True)
        model.set_size_priors(priors)
        if init is not None:
            load_model_tensors(model, init)
        self.task.select_trainable(model)
        model.train()
        optimizer = torch.optim.AdamW(
            _param_groups(model, config.optim.weight_decay, config.optim.backbone_lr_scale),
            lr=config.optim.lr,
            betas=(config.optim.beta1, config.optim.beta2),
            fused=False,
        )
        return model, optimizer

    def _restore(
        self, model: LLMI3D, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load out_dir/latest into the model, optimizer and step counters.

        Returns the trainer state and this process's RNG state (restored at the end of setup).
        """
        latest = (self.out_dir / "latest").resolve()
        try:
            trainer = torch.load(latest / TRAINER_FILE, map_location="cpu", weights_only=False)
            rank_rng = torch.load(
                latest / f"rng-{self.rank}.pt", map_location="cpu", weights_only=False
            )
        except (OSError, RuntimeError, EOFError) as err:
            raise CheckpointError(f"Could not read the training state in {latest}: {err}") from err
        if trainer.get("world") != self.world:
            raise CheckpointError(
                f"{latest} was written by {trainer.get('world')} processes, this run has "
                f"{self.world}; resume with the same number of processes"
            )
        load_model_tensors(model, latest)
        optimizer.load_state_dict(trainer["optimizer"])
        self.start_step, self.best_step = trainer["step"], trainer["best_step"]
        self.best_value = tuple(trainer["best"])
        return trainer, rank_rng

    # ----------------------------------------------------------------------------------------
    # The loop
    # ----------------------------------------------------------------------------------------

    def run(self) -> Path:
        """Train up to max_steps (or max_steps_this_run more); return the `best` checkpoint."""
        config = self.config
        bar = tqdm(
            total=config.max_steps,
            initial=self.start_step,
            disable=not (config.progress and self.main),
            desc=f"{config.name} {self.task.kind}",
            unit="step",
            dynamic_ncols=True,
        )
        stop_at = config.max_steps
        if config.max_steps_this_run:
            stop_at = min(stop_at, self.start_step + config.max_steps_this_run)
        step = self.start_step
        while step < stop_at:
            # learning rate of this step
            lr = get_lr(step, config.optim, config.max_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)

            # evaluate and checkpoint (not at the step a resumed run starts from: done before)
            if step > self.start_step or (step > 0 and not self.resuming):
                if config.eval_interval and step % config.eval_interval == 0:
                    self.validate(step)
                if config.checkpoint_interval and step % config.checkpoint_interval == 0:
                    self.save_step(step)

            started = time.perf_counter()
            terms, grad_norm = self._optimizer_step(step)
            step += 1

            # log
            elapsed = time.perf_counter() - started
            speed = config.samples_per_step * self.world / max(elapsed, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{terms['total']:.4f}", lr=f"{lr:.2e}", samples_s=f"{speed:.1f}")
            if step % config.log_interval == 0 or step == stop_at:
                values = {("loss" if k == "total" else f"loss/{k}"): v for k, v in terms.items()}
                extra = {"lr": lr, "grad_norm": grad_norm, "samples_per_s": speed}
                self.log.write("train", step, {**values, **extra, "step_s": elapsed})
        bar.close()
        return self._finish(step)

    def _optimizer_step(self, step: int) -> tuple[dict[str, float], float]:
        """Forward/backward over grad_accum micro-batches, clip, step, zero the gradients.

        Returns the mean loss terms and the gradient norm before clipping (nan: no clipping).
        """
        config, accelerator, model = self.config, self.accelerator, self.model
        terms: dict[str, float] = {}
        for _ in range(config.grad_accum):
            batch = to_device(next(self.batches), accelerator.device)
            with accelerator.accumulate(model):
                losses = self.task.losses(model, batch)
                accelerator.backward(losses["total"])
            for name, value in losses.items():
                terms[name] = terms.get(name, 0.0) + float(value.detach()) / config.grad_accum
        if not math.isfinite(terms["total"]):
            raise FloatingPointError(
                f"training loss is {terms['total']} at step {step}; lower optim.lr or check data"
            )
        grad_norm = math.nan
        if config.optim.grad_clip > 0:
            grad_norm = float(
                accelerator.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], config.optim.grad_clip
                )
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return terms, grad_norm

    def _finish(self, step: int) -> Path:
        """End of this process: eval and checkpoint the last step; done.json when it is over.

        A run stopped early does here what the loop would have done at the top of this step, so
        that the resumed run (which skips its first step's eval/checkpoint) matches.
        """
        config, out_dir = self.config, self.out_dir
        finished = step >= config.max_steps
        if step > self.start_step or not self.resuming:
            due = bool(config.eval_interval) and step % config.eval_interval == 0
            if finished or due:
                self.validate(step)
            self.save_step(step)
        if finished and self.main:
            if not (out_dir / "best").exists():  # no validation split: the final model is best
                self.save_best(step, {})
            summary = {
                "step": step,
                "best_step": self.best_step if self.best_step >= 0 else step,
                "best_metric": self.best_metric,
                "best_key": self.best_key,
                "best_value": None if self.best_step < 0 else self.sign * self.best_value[0],
            }
            write_done(out_dir, summary)
        self.log.close()
        self.accelerator.wait_for_everyone()
        return (out_dir / "best").resolve() if (out_dir / "best").exists() else out_dir / "best"

    # ----------------------------------------------------------------------------------------
    # Validation and checkpoints
    # ----------------------------------------------------------------------------------------

    def validate(self, step: int) -> None:
        """Validate; a better model than the best so far becomes the `best` checkpoint."""
        if self.val_loader is None:
            return
        metrics = self.task.evaluate(self.model, self.val_loader, self.accelerator)
        self.log.write("eval", step, metrics)
        value = (self.sign * metrics[self.best_key], metrics["val/loss"])
        if value < self.best_value:
            self.best_value, self.best_step = value, step
            if self.main:
                self.save_best(step, metrics)
        self.accelerator.wait_for_everyone()

    def _checkpoint_extra(self, step: int) -> dict[str, Any]:
        """What a checkpoint of `step` records about the run."""
        config = self.config
        return {"step": step, "seed": config.seed, "run": config.name, "data": config.data.root}

    def save_step(self, step: int) -> None:
        """Checkpoint `step`: model + optimizer + data position + RNG; then point `latest`."""
        accelerator, config, out_dir = self.accelerator, self.config, self.out_dir
        final = out_dir / CHECKPOINTS / f"step-{step:06d}"
        tmp = final.parent / f".tmp-{final.name}-shared"
        rng = rng_state()
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        torch.save(rng, tmp / f"rng-{self.rank}.pt")
        accelerator.wait_for_everyone()
        if self.main:
            save_checkpoint(self.raw_model, tmp, extra=self._checkpoint_extra(step))
            trainer_state = {
                "step": step,
                "best": list(self.best_value),
                "best_step": self.best_step,
                "world": self.world,
                "optimizer": self.optimizer.state_dict(),
                "scaler": None if accelerator.scaler is None else accelerator.scaler.state_dict(),
                "config": config_to_dict(config),
            }
            torch.save(trainer_state, tmp / TRAINER_FILE)
            publish_dir(tmp, final)
            point_link(out_dir / "latest", final)
            prune_checkpoints(out_dir, "step", config.keep_checkpoints)
        accelerator.wait_for_everyone()

    def save_best(self, step: int, metrics: dict[str, float]) -> None:
        """Store the model as checkpoints/best-<step> with its metrics; point `best` at it."""
        final = self.out_dir / CHECKPOINTS / f"best-{step:06d}"
        extra = {**self._checkpoint_extra(step), "metrics": metrics}

        def write(tmp: Path) -> None:
            save_checkpoint(self.raw_model, tmp, extra=extra)

        write_dir_atomically(final, write)
        point_link(self.out_dir / "best", final)
        prune_checkpoints(self.out_dir, "best", 1)
