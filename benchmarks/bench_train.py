"""Training throughput of the shipped recipes on this machine: samples per second.

    python benchmarks/bench_train.py                       # tiny_synth and smol_synth
    python benchmarks/bench_train.py --recipes tiny_synth --steps 30
    python benchmarks/bench_train.py --data data/synth     # reuse a dataset

Each recipe runs its real training loop (`llmi3d_core.train.train`, data loading included) for a
few optimizer steps in a temporary run directory, with its own batch size, accumulation and
thread count; the first `--warmup` steps (allocator and lazy initialisation) are not counted.
Samples/s is the recipe's samples per optimizer step divided by the step's wall time (the same
number the progress bar and log.jsonl show), summarised by the median over the timed steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmi3d_core.train import train  # noqa: E402
from llmi3d_core.train_config import load_train_config  # noqa: E402

DEFAULT_STEPS = {"tiny_synth": 30, "smol_synth": 8}


def bench(recipe: str, steps: int, warmup: int, data: Path, workdir: Path) -> dict[str, object]:
    """Train `recipe` for warmup + steps steps; return its throughput summary."""
    config = load_train_config(
        REPO / "config" / "train" / f"{recipe}.yaml",
        [
            f"out_dir={workdir / recipe}",
            f"data.root={data}",
            f"max_steps={warmup + steps}",
            "eval_interval=0",
            "checkpoint_interval=0",
            "data.val_queries=1",
            "progress=false",
            "tensorboard=false",
        ],
    )
    started = time.perf_counter()
    train(config)
    total = time.perf_counter() - started
    lines = (workdir / recipe / "log.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if '"train"' in line][warmup:]
    speeds = [float(r["samples_per_s"]) for r in rows]
    step_s = [float(r["step_s"]) for r in rows]
    return {
        "recipe": recipe,
        "model": config.model.get("preset", config.model.get("file", "?")),
        "batch": f"{config.batch_size} x {config.grad_accum}",
        "threads": config.threads or "default",
        "steps": len(rows),
        "samples_per_s": statistics.median(speeds),
        "step_s": statistics.median(step_s),
        "wall_s": total,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default="tiny_synth,smol_synth")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (0: per recipe)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--data", type=Path, default=None, help="dataset (default: generate 40)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        workdir = Path(tmp)
        data = args.data
        if data is None:
            from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset

            data = workdir / "data"
            generate_dataset(SynthConfig(num_images=40, seed=0), data, workers=2, progress=False)
        results = []
        for recipe in args.recipes.split(","):
            steps = args.steps or DEFAULT_STEPS.get(recipe, 10)
            results.append(bench(recipe.strip(), steps, args.warmup, data, workdir))
            print(f"done {recipe}", file=sys.stderr)
    print("| recipe | model | batch x accum | threads | timed steps | samples/s | s/step |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['recipe']} | {r['model']} | {r['batch']} | {r['threads']} | {r['steps']} "
            f"| {r['samples_per_s']:.2f} | {r['step_s']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
