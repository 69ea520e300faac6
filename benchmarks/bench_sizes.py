"""The benchmark sizes (smoke, reduced, full): every budget a benchmark run uses, in one place.

run_benchmarks.py runs the sections at one size; bench_accuracy.py, run alone, takes the same sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class BenchSize:
    """Budgets of one benchmark size; every figure in the markdown names the ones it used.

    Attributes:
        name: "smoke", "reduced" or "full".
        purpose: one line for the markdown.
        threads: torch CPU threads of every measurement: this process, the node process and
            every training run (`threads=` override); 0 keeps torch's default and the recipes'
            own settings. On the shared 2-core CPU one thread is the fast choice: measured, a
            smol_synth step took 8.4 s with 1 thread and 66 s with 2 while other jobs ran.
            (The default model is trained, when not cached, exactly as the demo does: with
            its recipe's own threads.)
        latency_preset: backbone of the latency section.
        latency_runs: timed runs per variant (one more, untimed, warms up).
        memory_preset: model of the memory section (the node's default is smol).
        memory_queries: queries (each on a new frame) over which the node's peak RSS is taken.
        throughput_recipes: config/train recipes timed in the throughput section.
        throughput_steps: timed optimizer steps per stage of each recipe (after
            `throughput_warmup`).
        throughput_warmup: untimed first steps of each stage.
        throughput_images: images of the IG3D-Synth set each throughput recipe trains on.
        default_model: "cached": the default model as the demo serves it
            (`ensure_default_model()`: reused from the user cache, trained first when absent);
            "standin": the ladders' tiny `llmi3d` row takes its place (sizes too small to train
            the default model).
        default_test_images: images of `default_test_data()` (its default: 200).
        default_eval_images: of those, the images whose queries are evaluated, spread evenly
            (0: all).
        decoding_images: of the evaluated images, those of the decoding ablations (0: all).
        data_images: IG3D-Synth images rendered for the ablation ladders.
        data_seed: its generator seed.
        ablation_family: "smol" or "tiny": the model family of the ablation ladders.
        ablation_stage_steps: optimizer steps of each stage kind of a ladder model ("detector",
            "pointer", "joint"; a kind left out keeps the recipe's).
        stage_batch: batch caps per stage kind (left out: the recipe's batch); every batch is
            also capped by the stage's training samples.
        eval_queries: ladder test queries evaluated, spread evenly over the test split (0: all).
        val_queries: validation queries used during ladder training to pick `best`.
        device: "cpu", "cuda" or "auto" (a GPU where there is one): where the latency, memory
            and accuracy models run (training: the recipe's `device=` override). The
            throughput section measures every device regardless.
        ablation_rows: train only these variants of the ladders (bench_accuracy.VARIANTS keys;
            empty: all). Every variant's config is still built and checked.
        seed: training seed of every model.
        soak_preset: model of the soak section (bringup's default is smol).
        soak_minutes: measured window of the soak (`--minutes` overrides it).
        gpu_run: a run directory of config/train/smol_synth_gpu.yaml (trained where a GPU was
            at hand) whose model section 1 also evaluates on the default model's test set
            (`--gpu-run`); "" = none.
    """

    name: str
    purpose: str
    threads: int
    latency_preset: str
    latency_runs: int
    memory_preset: str
    memory_queries: int
    throughput_recipes: tuple[str, ...]
    throughput_steps: int
    throughput_warmup: int
    data_images: int
    data_seed: int
    ablation_family: str
    eval_queries: int
    val_queries: int
    throughput_images: int = 64
    default_model: str = "cached"
    default_test_images: int = 200
    default_eval_images: int = 0
    decoding_images: int = 0
    ablation_stage_steps: dict[str, int] = dataclasses.field(default_factory=dict)
    stage_batch: dict[str, int] = dataclasses.field(default_factory=dict)
    device: str = "cpu"
    ablation_rows: tuple[str, ...] = ()
    seed: int = 0
    soak_preset: str = "smol"
    soak_minutes: float = 30.0
    gpu_run: str = ""


SIZES: dict[str, BenchSize] = {
    "smoke": BenchSize(
        name="smoke",
        purpose="CI: every section runs with the tiny preset and a handful of samples and steps "
        "(about 1 min); the tiny `llmi3d` ladder row stands in for the default model on 6 "
        "held-out images; the numbers mean nothing",
        threads=1,
        latency_preset="tiny",
        latency_runs=1,
        memory_preset="tiny",
        memory_queries=2,
        throughput_recipes=("tiny_synth",),
        throughput_steps=2,
        throughput_warmup=1,
        throughput_images=24,
        default_model="standin",
        default_test_images=6,
        data_images=40,
        data_seed=0,
        ablation_family="tiny",
        ablation_stage_steps={"detector": 2, "pointer": 2, "joint": 2},
        stage_batch={"detector": 4, "pointer": 4, "joint": 4},
        eval_queries=8,
        val_queries=4,
        ablation_rows=("llmi3d", "euler", "backproject", "mean_box"),
        soak_preset="tiny",
        soak_minutes=0.5,
    ),
    "reduced": BenchSize(
        name="reduced",
        purpose="the default: on a 2-core CPU about 20 min when the default model is already "
        "cached (the demo's first run caches it; when it is not, this run trains it first, "
        "about 12 min more; 3 min of it train the default recipe's pointer stage again without "
        "negative queries); the default model on all 200 held-out images (decoding "
        "ablations on 60 of them); of the ablation ladders, the rows that bear on the issues "
        "(height depth, rotation, the pointer, the floors) on the tiny preset with the "
        "tiny_synth recipe's stage budgets (each trained row costs ~2 min here; `--size full` "
        "trains them all)",
        threads=1,
        latency_preset="smol",
        latency_runs=5,
        memory_preset="smol",
        memory_queries=20,
        throughput_recipes=("tiny_synth", "smol_synth"),
        throughput_steps=4,
        throughput_warmup=2,
        decoding_images=60,
        data_images=800,
        data_seed=0,
        ablation_family="tiny",
        ablation_rows=(
            "llmi3d",
            "no_height_depth",
            "euler",
            "no_pointer",
            "backproject",
            "mean_box",
        ),
        eval_queries=200,
        val_queries=32,
    ),
    "full": BenchSize(
        name="full",
        purpose="for a GPU (not run here, there is none; days on a CPU): the default model on "
        "the whole held-out set with every decoding, every ladder model on the smol backbone "
        "with the recipes' stage budgets, the whole ladder test split",
        threads=0,
        latency_preset="smol",
        latency_runs=20,
        memory_preset="smol",
        memory_queries=100,
        throughput_recipes=("tiny_synth", "smol_synth"),
        throughput_steps=10,
        throughput_warmup=3,
        data_images=1000,
        data_seed=1,
        ablation_family="smol",
        eval_queries=0,
        val_queries=96,
        device="auto",
    ),
}
