"""Accuracy: the default model on its held-out test set, and the ablation ladders of Tables X-XIII.

Used by run_benchmarks.py (section 1); run alone it does the same for one size and prints the
markdown:

    python benchmarks/bench_accuracy.py --size smoke --workdir /tmp/bench_accuracy
    python benchmarks/bench_accuracy.py --size reduced --workdir runs/bench_accuracy

Two parts, both through the library (`llmi3d_core.train.train`, what `llmi3d train` runs, and
`llmi3d_core.evaluate`, what `llmi3d eval` runs):

* The default model, exactly what the demo serves: `default_model.ensure_default_model()`
  (config/train/smol_synth.yaml in its stages, trained once and cached in the user cache; a
  benchmark run reuses the demo's model and trains it only when it is not cached yet),
  evaluated on `default_model.default_test_data()` (synthetic scenes of a seed no recipe trains
  on, all in its "test" split, with negative and multi-target queries) as the node answers:
  `predict_with_model` with the node's answer rule (the predictor's `served_rule`), and the same
  pass with every best box kept (the all-zero rule: localisation without the "not here"
  answer). Next to it: the same heads read at each target's own cell (`predict_at_true_cells`,
  the upper bound of pointing: what a perfect pointer reaches with this detector), the same
  pass with every candidate named by the object it boxes (`predict_with_true_names`, the upper
  bound of naming: what misnaming costs the pointer, under the node's rule), the mean box
  and the back-projection of the true 2D box (llmi3d_core.baselines, fitted on the model's own
  training split). What negative queries cost the positive ones (issue 14): the same recipe's
  pointer stage trained again without them, on the default run's own detector and crop heads
  (`train_without_negatives`), answering its best box every time. Then decoding ablations of
  the same weights at inference
  (`model.set_decoding`): eq. 20 as the paper writes it (height from the tight 2D box, plain
  mean of the two depths) and virtual depth alone.
  At size `smoke` the ladders' tiny `llmi3d` row stands in for the default model (training the
  default model takes ~23 min), so only the pipeline is checked there.
* The ablation ladders (paper Tables X-XIII and the pointer), on an IG3D-Synth set rendered for
  the run (size.data_images, size.data_seed) with the family recipe's scene options. Every model
  is trained and validated on the "source" camera domain only (`data.train_split=train@source`,
  `val@source`), so the test queries of the "target" camera groups come from cameras never seen
  in training; novel categories are never targets in training.

Model families of the ladders. `smol`: the recipe files as they are (smol_synth.yaml and the
ablation/baseline files built on it). `tiny`: tiny_synth.yaml plus exactly the keys in which the
ablation/baseline file differs from smol_synth.yaml (e.g. model.high_res.enabled=false), for
sizes where the smol backbone is too slow to train a dozen times on a CPU; where such a file
lists its own stages (e.g. no pointer stage), its stage kinds are kept and each takes the tiny
recipe's stage of that kind (its batch and learning rate) when there is one.

Stage budgets. The recipes train in stages (detector, pointer, joint), each with its own
max_steps; a size sets the steps of each stage kind (size.ablation_stage_steps), caps batch
sizes (size.stage_batch) and every batch is further capped by the training samples the stage
has (images for the detector stage, queries otherwise), so a small set still trains.

Text3D output that does not parse into a box (ModelOutputError, or a singular rotation) is not
a crash: that query gets the mean-box prior instead, and the table counts such queries.

Verdicts: for every claim of the paper (e.g. "HR branch helps") the difference in Acc@0.25
between the two rows over the single-target queries, with the standard error of that paired
difference, and whether our ordering agrees.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (REPO, HERE):  # run from a checkout, uninstalled
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

CONFIG_DIR = REPO / "config" / "train"
FAMILY_RECIPES = {"smol": "smol_synth", "tiny": "tiny_synth"}
DIFF_REFERENCE = "smol_synth"  # the recipe the ablation/baseline files are written against
RUN_KEYS = ("name", "out_dir")  # differences that do not define a variant
TRAIN_SPLIT = "train@source"
VAL_SPLIT = "val@source"
TEST_SPLIT = "test"
UNSEEN_SUBSET = "camera: target"


@dataclass(frozen=True)
class Variant:
    """One row: a recipe file (None: the family's own recipe) and its display name."""

    key: str
    label: str
    recipe: str | None


VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (
        Variant("llmi3d", "LLMI3D (3D Query, full model)", None),
        Variant("text3d", "Text3D (box as text numbers)", "baseline_text3d"),
        Variant("backproject", "2D box + back-projection (oracle 2D box)", "baseline_backproject"),
        Variant("mean_box", "mean-box prior", "baseline_mean_box"),
        Variant("no_hr", "w/o HR branch", "ablation_no_hr"),
        Variant("no_depth_branch", "w/o depth branch", "ablation_no_depth_branch"),
        Variant("no_secba", "w/o SECBA (HR tokens pooled + concatenated)", "ablation_no_secba"),
        Variant("secba_local", "local SECBA (patch info mining)", "ablation_secba_local"),
        Variant("text_feature", "text feature (token before <pos>)", "ablation_text_feature"),
        Variant("pos_token", "position token (<pos> hidden state)", "ablation_pos_token"),
        Variant("xyz", "direct XYZ regression (no back-projection)", "ablation_xyz"),
        Variant("no_virtual_depth", "w/o virtual depth (metric Z)", "ablation_no_virtual_depth"),
        Variant("no_height_depth", "w/o height depth", "ablation_no_height_depth"),
        Variant("euler", "Euler angles instead of 6D", "ablation_euler"),
        Variant("no_pointer", "w/o spatial pointer (the paper's read-out)", "ablation_no_pointer"),
    )
}  # fmt: skip

# (better row, worse row, what the paper reports). Rows are keys of the result's "rows":
# "default/<key>" (the default model's table), "decoding/<key>", "<family>/<variant>". A text
# starting with "paper" counts in the summary; "ours" and "sanity" are shown without counting.
Claim = tuple[str, str, str]

DEFAULT_ROWS: dict[str, str] = {
    "llmi3d": "LLMI3D (default)",
    "llmi3d_best": "LLMI3D (default), always its best box (rule of zeros)",
    # the same recipe without negative queries: what adding them costs the positive ones
    "no_negatives": "LLMI3D (default) trained without negative queries, always its best box "
    "(the pointer stage again, on the same detector and crop heads)",
    "llmi3d_bf16": "LLMI3D (default) run in bfloat16 (node parameter dtype)",
    "llmi3d_floor": "LLMI3D (default), the camera's floor given (node parameter floor_frame "
    "through TF, or camera_height_m, camera_pitch_deg)",
    "true_cells": "heads at the true cell (upper bound of pointing)",
    "true_names": "LLMI3D (default), each candidate named by the object it boxes (upper bound "
    "of naming)",
    "mean_box": "mean box",
    "backproject": "back-projection of the true 2D box",
    # with --gpu-run: the GPU recipe's model (its own answer rule) and its upper bound
    "gpu": "LLMI3D, GPU recipe smol_synth_gpu (detector fine-tuned on a GPU)",
    "gpu_true_cells": "GPU recipe: its heads at the true cell",
}
# rows that read the heads at each target's own cell: single-target queries only, score 1
TRUE_CELL_ROWS = ("true_cells", "gpu_true_cells")
DEFAULT_CLAIMS: tuple[Claim, ...] = (
    ("default/llmi3d", "default/backproject", "paper: LLMI3D beats 2D grounding + back-projection"),
    ("default/llmi3d", "default/mean_box", "sanity: LLMI3D beats the mean-box prior"),
    ("default/true_cells", "default/llmi3d",
     "ours: the pointer loses accuracy to wrong objects (the upper bound is above LLMI3D)"),
    ("default/llmi3d_floor", "default/llmi3d",
     "ours: a calibrated camera's floor places the boxes better than the model's depth"),
    ("default/gpu", "default/llmi3d",
     "ours: the GPU recipe's fine-tuned detector places boxes better than the default's"),
)  # fmt: skip
# inference-time decoding of the same weights: key -> (label, set_decoding arguments)
DECODINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("default: keypoint height + uncertainty fusion", {}),
    "eq20": ("eq. 20 as written: tight 2D box height + mean of the depths",
             {"height_extent": "tight_box", "depth_fusion": "mean"}),
    "no_height_depth": ("no height depth (virtual depth only)", {"use_height_depth": False}),
}  # fmt: skip
DECODING_CLAIMS: tuple[Claim, ...] = (
    ("decoding/default", "decoding/eq20",
     "ours: the keypoint height and uncertainty fusion beat eq. 20 as written"),
    ("decoding/default", "decoding/no_height_depth",
     "paper: height depth helps (here at inference, on the same weights)"),
)  # fmt: skip
LADDERS: tuple[tuple[str, tuple[str, ...], tuple[Claim, ...]], ...] = (
    (
        "Table X: image encoder (HR branch, depth branch, SECBA)",
        ("llmi3d", "no_hr", "no_depth_branch", "no_secba", "secba_local"),
        (
            ("llmi3d", "no_hr", "paper: the HR branch helps"),
            ("llmi3d", "no_depth_branch", "paper: the depth branch helps"),
            ("llmi3d", "no_secba", "paper: SECBA beats plain fusion"),
        ),
    ),
    (
        "Table XI: decoding method",
        ("llmi3d", "pos_token", "text_feature", "text3d"),
        (
            ("llmi3d", "pos_token", "paper: the 3D Query beats the position token"),
            ("llmi3d", "text_feature", "paper: the 3D Query beats the text feature"),
            ("llmi3d", "text3d", "paper: the 3D Query beats Text3D (box as text numbers)"),
        ),
    ),
    (
        "Table XII: geometry projection (back-projection, height depth, virtual depth)",
        ("llmi3d", "no_height_depth", "no_virtual_depth", "xyz"),
        (
            ("llmi3d", "no_height_depth", "paper: height depth helps"),
            ("llmi3d", "no_virtual_depth", "paper: virtual depth helps"),
            ("llmi3d", "xyz", "paper: back-projecting (u, v, depth) beats regressing XYZ"),
        ),
    ),
    (
        "Table XIII: rotation representation",
        ("llmi3d", "euler"),
        (("llmi3d", "euler", "paper: 6D beats Euler angles"),),
    ),
    (
        "Our addition: the spatial pointer (not in the paper)",
        ("llmi3d", "no_pointer"),
        (("llmi3d", "no_pointer", "ours: the pointer helps (not a paper claim)"),),
    ),
    (
        "Floors on the ladders' data (not in the paper)",
        ("llmi3d", "backproject", "mean_box"),
        (
            ("llmi3d", "backproject", "sanity: beats 2D grounding + back-projection"),
            ("llmi3d", "mean_box", "sanity: beats the mean-box prior"),
        ),
    ),
)
STANDIN_REASON = (
    "training the default model (smol_synth: detector then pointer stage) takes about 23 min on "
    "a 2-core CPU, more than this size allows"
)


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def resolve_device(name: str) -> str:
    """ "auto" -> "cuda" where torch sees a GPU, else "cpu"; other names unchanged."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _plain_config(recipe: str) -> dict[str, Any]:
    from llmi3d_core.train_config import config_to_dict, load_train_config

    return config_to_dict(load_train_config(CONFIG_DIR / f"{recipe}.yaml"))


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def variant_overrides(variant: Variant, family: str = "smol") -> list[str]:
    """key=value overrides that turn the reference recipe into `variant` (its recipe file).

    The keys are those in which the variant's file differs from smol_synth.yaml (apart from
    its name and out_dir); values are written as JSON, which the override parser reads as YAML.
    The `tiny` family keeps its own LM: model.llm keys (which LM layers run, the LoRA rank)
    are the smol LM's.
    """
    from llmi3d_core.train_config import config_diff

    if variant.recipe is None:
        return []
    reference = _plain_config(DIFF_REFERENCE)
    changed = _plain_config(variant.recipe)
    keys = [k for k in config_diff(reference, changed) if k not in RUN_KEYS]
    if family == "tiny":
        keys = [k for k in keys if not k.startswith("model.llm")]
    return [f"{k}={json.dumps(v)}" for key in keys for k, v in _leaves(key, _lookup(changed, key))]


def _leaves(key: str, value: Any) -> list[tuple[str, Any]]:
    """("model.heads", {"readout": "text"}) -> [("model.heads.readout", "text")]."""
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaves(f"{key}.{k}", v)]
    return [(key, value)]


def run_overrides(size: Any, out_dir: Path, data_root: Path) -> list[str]:
    """The benchmark's settings on top of any recipe: data, splits, quiet output, device."""
    overrides = [
        f"out_dir={out_dir}",
        f"data.root={data_root}",
        f"data.train_split={TRAIN_SPLIT}",
        f"data.val_split={VAL_SPLIT}",
        f"data.val_queries={size.val_queries}",
        f"data.synth.num_images={size.data_images}",
        f"data.synth.seed={size.data_seed}",
        f"seed={size.seed}",
        "checkpoint_interval=0",
        "keep_checkpoints=1",
        "progress=false",
        "tensorboard=false",
        f"device={size.device}",
    ]
    if size.threads:
        overrides.append(f"threads={size.threads}")
    return overrides


def stage_samples(dataset: Any, config: Any, stage: Any) -> int:
    """Training samples a stage of `config` has on `dataset`: images (detector), objects (crops)
    or queries."""
    from llmi3d_core.data.splits import select_queries

    queries = select_queries(dataset, config.data.train_split)
    if config.data.query_types is not None:
        queries = [q for q in queries if q.type in set(config.data.query_types)]
    if stage.kind == "detector":
        return len({q.image_id for q in queries})
    if stage.kind == "crops":  # the objects a crops stage keeps (data/dataset.py's obj_valid)
        from llmi3d_core.data.dataset import MAX_OBJECTS

        images = {q.image_id for q in queries}
        novel = set(dataset.info.novel_categories)
        return sum(
            o.category_name not in novel
            for r in dataset.images
            if r.image_id in images
            for o in r.objects[:MAX_OBJECTS]
        )
    if stage.kind == "pointer" and stage.max_images:
        images = set(list(dict.fromkeys(q.image_id for q in queries))[: stage.max_images])
        return sum(q.image_id in images for q in queries)
    return len(queries)


def plan_stages(
    config: Any, size: Any, family: str, dataset: Any | None = None
) -> list[dict[str, Any]]:
    """The stages a benchmark run of `config` trains, with the size's budgets applied.

    The kinds are the config's (a config without stages is one joint stage). In the `tiny`
    family each stage takes the tiny recipe's stage of its kind (batch, learning rate) where
    there is one. Steps: size.ablation_stage_steps[kind] (else the recipe's); batch: the
    stage's (else the run's), capped by size.stage_batch[kind] and, given `dataset`, by the
    stage's training samples (stage_samples). Validation runs at half-way and at the end.
    """
    from llmi3d_core.train_config import StageConfig, load_train_config

    stages = list(config.stages) or [StageConfig(kind="joint", max_steps=config.max_steps)]
    if FAMILY_RECIPES[family] != DIFF_REFERENCE:
        own = load_train_config(CONFIG_DIR / f"{FAMILY_RECIPES[family]}.yaml").stages
        by_kind = {s.kind: s for s in own}
        stages = [by_kind.get(s.kind, s) for s in stages]
    plan = []
    for stage in stages:
        steps = size.ablation_stage_steps.get(stage.kind) or stage.max_steps
        batch = stage.batch_size or config.batch_size
        if size.stage_batch.get(stage.kind):
            batch = min(batch, size.stage_batch[stage.kind])
        if dataset is not None:
            batch = max(1, min(batch, stage_samples(dataset, config, stage)))
        plan.append(
            {
                **dataclasses.asdict(stage),
                "max_steps": steps,
                "batch_size": batch,
                "eval_interval": max(1, steps // 2),
            }
        )
    return plan


def build_config(
    size: Any, family: str, variant: Variant, workdir: Path, dataset: Any | None = None
) -> Any:
    """The TrainConfig of one (family, variant) run of the benchmark (stages planned)."""
    from llmi3d_core.train_config import load_train_config

    recipe = CONFIG_DIR / f"{FAMILY_RECIPES[family]}.yaml"
    out_dir = workdir / "runs" / f"{family}_{variant.key}"
    overrides = [
        *variant_overrides(variant, family),
        f"name={family}_{variant.key}",
        *run_overrides(size, out_dir, workdir / "data"),
    ]
    config = load_train_config(recipe, overrides)
    if config.method != "model":
        return config
    stages = plan_stages(config, size, family, dataset)
    return load_train_config(recipe, [*overrides, f"stages={json.dumps(stages)}"])


def stages_text(stages: list[dict[str, Any]]) -> str:
    """[{kind, max_steps, batch_size}, ...] -> "detector 400 x 32 + joint 100 x 16"."""
    return " + ".join(f"{s['kind']} {s['max_steps']} x {s['batch_size']}" for s in stages)


# --------------------------------------------------------------------------------------------
# Data, training, evaluation
# --------------------------------------------------------------------------------------------


def make_dataset(size: Any, workdir: Path) -> Any:
    """Render the ladders' IG3D-Synth set once (the family recipe's scene options); read it."""
    from llmi3d_core.data.reader import read_dataset
    from llmi3d_core.train_data import prepare_data

    config = build_config(size, size.ablation_family, VARIANTS["llmi3d"], workdir)
    return read_dataset(prepare_data(config, progress=False))


def eval_queries(dataset: Any, count: int) -> list[Any]:
    """`count` test queries spread evenly over the test split (all when count is 0)."""
    from llmi3d_core.data.splits import select_queries

    queries = select_queries(dataset, TEST_SPLIT)
    if not count or len(queries) <= count:
        return queries
    picks = np.unique(np.linspace(0, len(queries) - 1, count).round().astype(int))
    return [queries[i] for i in picks]


def queries_of_images(queries: list[Any], count: int) -> list[Any]:
    """The queries of `count` images spread evenly over those `queries` ask about (0: all)."""
    images = list(dict.fromkeys(q.image_id for q in queries))
    if not count or len(images) <= count:
        return queries
    picks = np.unique(np.linspace(0, len(images) - 1, count).round().astype(int))
    keep = {images[i] for i in picks}
    return [q for q in queries if q.image_id in keep]


def predict_model_robust(
    predictor: Any, fallback: Any, dataset: Any, queries: list[Any]
) -> tuple[list[Any], int]:
    """`predict_with_model`; where an image's output is unusable, query by query with `fallback`.

    Unusable: the model's output does not parse into a box (ModelOutputError: Text3D text with
    the wrong count of numbers, or non-finite values), or it parses into a box that is not one
    (InvalidInputError from Box3D: e.g. a Text3D rotation of six zeros gives a singular matrix).
    The queries of one image go together (one encoding); only an image that fails is redone one
    query at a time, where the Predictor's feature cache spares the encoding.

    Under the all-zero AnswerRule every query gets the model's best box, as the baselines always
    answer one; the ladder recipes train no pointer stage, so their scores are not calibrated
    and the node's rule would turn down answers of some rows (the paper's MLP read-out scores
    nothing) and not others.

    Returns:
        (results in query order, number of queries answered by the fallback)
    """
    from llmi3d_core.errors import InvalidInputError, ModelOutputError
    from llmi3d_core.eval_predict import predict_with_baseline, predict_with_model
    from llmi3d_core.prediction import AnswerRule

    every = AnswerRule()
    by_image: dict[str, list[Any]] = {}
    for query in queries:
        by_image.setdefault(query.image_id, []).append(query)
    results: dict[str, Any] = {}
    failed = 0
    for group in by_image.values():
        try:
            answered = predict_with_model(predictor, dataset, group, progress=False, rule=every)
        except (ModelOutputError, InvalidInputError):
            answered = []
            for query in group:
                try:
                    answered += predict_with_model(
                        predictor, dataset, [query], progress=False, rule=every
                    )
                except (ModelOutputError, InvalidInputError):
                    failed += 1
                    answered += predict_with_baseline(fallback, dataset, [query])
        results.update((r.query.query_id, r) for r in answered)
    return [results[q.query_id] for q in queries], failed


def single_ious(results: list[Any]) -> list[float]:
    """First-box 3D IoU of every single-target query, in order (0 for an empty answer)."""
    from llmi3d_core.eval_report import first_ious

    return [float(v) for v in first_ious(results) if v is not None]


def scored(results: list[Any], dataset: Any) -> dict[str, Any]:
    """The subsets' metrics and the single-target IoUs of a list of QueryResults."""
    from llmi3d_core.eval_report import evaluate_results

    return {"subsets": evaluate_results(results, dataset)["subsets"], "ious": single_ious(results)}


@dataclass
class Bench:
    """What every ladder run of one accuracy section shares.

    Attributes:
        size: the bench_sizes.BenchSize.
        workdir: runs/ and data/ go here.
        dataset: the ladders' IG3D-Synth set (format.Dataset).
        queries: the evaluated test queries.
        fallback: the mean-box prior (fitted on the training split) for unusable model output.
    """

    size: Any
    workdir: Path
    dataset: Any
    queries: list[Any]
    fallback: Any


def train_and_evaluate(bench: Bench, family: str, variant: Variant) -> dict[str, Any]:
    """Train (or fit) one variant, evaluate it on the bench's queries.

    Returns:
        The row: what was trained (recipe, overrides, stages, seconds, checkpoint), the metrics
        of every subset (evaluate_results) and the single-target IoUs (for the paired verdicts).
    """
    import torch

    from llmi3d_core.baselines import is_baseline_dir, load_baseline
    from llmi3d_core.eval_predict import load_predictor, predict_with_baseline
    from llmi3d_core.train import train

    dataset, queries = bench.dataset, bench.queries
    config = build_config(bench.size, family, variant, bench.workdir, dataset)
    threads = torch.get_num_threads()
    started = time.perf_counter()
    best = train(config, overwrite=True)
    train_s = time.perf_counter() - started
    torch.set_num_threads(threads)  # a recipe may set its own; evaluation uses ours
    started = time.perf_counter()
    failed = 0
    if is_baseline_dir(best):
        results = predict_with_baseline(load_baseline(best), dataset, queries)
    else:
        predictor = load_predictor(best, device=resolve_device(bench.size.device))
        results, failed = predict_model_robust(predictor, bench.fallback, dataset, queries)
        del predictor
    eval_s = time.perf_counter() - started
    model = config.method == "model"
    return {
        "family": family,
        "variant": variant.key,
        "label": variant.label,
        "recipe": variant.recipe or FAMILY_RECIPES[family],
        "method": config.method,
        "overrides": variant_overrides(variant, family),
        "stages": [dataclasses.asdict(s) for s in config.stages] if model else [],
        "checkpoint": str(best),
        "train_s": train_s,
        "eval_s": eval_s,
        "fallback_queries": failed,
        **scored(results, dataset),
    }


# --------------------------------------------------------------------------------------------
# The default model
# --------------------------------------------------------------------------------------------


def _first_run_from_files(run_dir: Path, data_root: Path) -> dict[str, Any] | None:
    """When and how long the cached run trained: its files' times (start -> done.json).

    Start: the older of config.yaml (written when the run starts, again on a resume) and the
    training data's dataset.json (generated once, right after the first start).
    """
    done = run_dir / "done.json"
    starts = [p.stat().st_mtime for p in (run_dir / "config.yaml", data_root / "dataset.json")
              if p.exists()]  # fmt: skip
    if not done.exists() or not starts:
        return None
    end = done.stat().st_mtime
    if end < min(starts):  # files copied or touched since: their times say nothing
        return None
    return {
        "seconds": end - min(starts),
        "finished": datetime.fromtimestamp(end, timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def obtain_default_model(size: Any, ladder_row: Any) -> dict[str, Any]:
    """The checkpoint the default-model table evaluates, and how it came to be.

    size.default_model "cached": `ensure_default_model()` (the demo's model: reused from the
    cache, trained first when absent, exactly as the demo does); "standin": the ladders' tiny
    `llmi3d` row (`ladder_row()` trains it), for sizes too small to train the default model.
    """
    import torch

    from llmi3d_core.model.checkpoint import read_checkpoint_meta

    if size.default_model == "standin":
        row = ladder_row()
        checkpoint = Path(row["checkpoint"])
        return {
            "source": "standin",
            "reason": STANDIN_REASON,
            "checkpoint": str(checkpoint),
            "recipe": row["recipe"],
            "stages": row["stages"],
            "train_split": TRAIN_SPLIT,
            "data_root": str(read_checkpoint_meta(checkpoint)[1]["data"]),
            "train_s": row["train_s"],
            "first_run": None,
        }
    from llmi3d_core.default_model import default_model_dir, default_recipe, ensure_default_model
    from llmi3d_core.train_config import load_train_config

    run_dir = default_model_dir()
    cached = (run_dir / "done.json").exists()
    threads = torch.get_num_threads()
    started = time.perf_counter()
    checkpoint = ensure_default_model()
    train_s = None if cached else time.perf_counter() - started
    torch.set_num_threads(threads)  # the recipe sets its own
    recipe = load_train_config(default_recipe())
    data_root = Path(read_checkpoint_meta(checkpoint)[1]["data"])
    return {
        "source": "cached" if cached else "trained",
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "recipe": default_recipe().stem,
        "stages": [dataclasses.asdict(s) for s in recipe.stages]
        or [{"kind": "joint", "max_steps": recipe.max_steps, "batch_size": recipe.batch_size}],
        "batch_size": recipe.batch_size,
        "train_split": recipe.data.train_split,
        "data_root": str(data_root),
        "train_s": train_s,
        "first_run": _first_run_from_files(run_dir, data_root),
    }


def gpu_run_info(run_dir: Path) -> dict[str, Any]:
    """The GPU recipe's run: its checkpoint, stages and each stage's training time.

    A stage's time is the span of its log (first to last record), from its own directory, so
    a stage run on another machine (the detector on a GPU, the rest on a CPU) keeps its own.
    """
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    stages = []
    for index, stage in enumerate(config["stages"], start=1):
        log = run_dir / "stages" / f"{index}-{stage['kind']}" / "log.jsonl"
        times = [json.loads(line)["time"] for line in log.read_text(encoding="utf-8").splitlines()]
        batch = stage.get("batch_size") or config["batch_size"]
        stages.append({**stage, "batch_size": batch, "train_s": times[-1] - times[0]})
    return {
        "run_dir": str(run_dir),
        "checkpoint": str((run_dir / "best").resolve()),
        "recipe": config["name"],
        "images": config["data"]["synth"]["num_images"],
        "stages": stages,
    }


def without_negatives(data_root: Path, out_root: Path, split: str) -> Path:
    """A copy of a dataset with no negative queries in `split` (its images linked, not copied).

    `split`: a split spec (data/splits.py); its split's negatives go, whatever its filters.
    """
    import shutil

    from llmi3d_core.data.codec import dumps_line, query_to_dict
    from llmi3d_core.data.reader import iter_queries

    out_root.mkdir(parents=True, exist_ok=True)
    images = out_root / "images"
    if images.is_symlink():  # an earlier benchmark's, perhaps of another default model
        images.unlink()
    images.symlink_to((data_root / "images").resolve(), target_is_directory=True)
    for name in ("dataset.json", "images.jsonl"):
        shutil.copyfile(data_root / name, out_root / name)
    name = split.partition("@")[0].partition(":")[0]
    kept = [
        dumps_line(query_to_dict(query))
        for query in iter_queries(data_root / "queries.jsonl")
        if query.split != name or query.target_object_ids
    ]
    (out_root / "queries.jsonl").write_text("".join(f"{line}\n" for line in kept), "utf-8")
    return out_root


def train_without_negatives(run_dir: Path, workdir: Path) -> Path | None:
    """The default run's last stage, its pointer, trained again without negative queries.

    The recipe as it is, except that its training split keeps no negative query and the pointer
    stage hides no targets (`hide_targets`) and fits no answer rule (`not_here_rate`): the model
    the default would be without issue 14's "not here". The stages before it read no queries,
    so the run starts from the default run's own. Its checkpoint is answered with every best
    box, as a model without "not here" answers. None when the run's recipe does not end with a
    pointer stage or its earlier stages are not finished (a stand-in).
    """
    import shutil

    from llmi3d_core.rundir import CONFIG_FILE, start_run_dir
    from llmi3d_core.train import train
    from llmi3d_core.train_config import load_train_config

    config = load_train_config(run_dir / CONFIG_FILE)
    kinds = [stage.kind for stage in config.stages]
    if not kinds or kinds[-1] != "pointer":
        return None
    earlier = [f"{index}-{kind}" for index, kind in enumerate(kinds[:-1], start=1)]
    finished = [run_dir / "stages" / name for name in earlier]
    if not all((d / "done.json").is_file() and (d / "best").exists() for d in finished):
        return None
    out = workdir / "no_negatives"
    data = without_negatives(
        Path(config.data.root), workdir / "no_negatives_data", config.data.train_split
    )
    stages = [
        dataclasses.replace(s, hide_targets=0.0, not_here_rate=0.0) if s.kind == "pointer" else s
        for s in config.stages
    ]
    config = dataclasses.replace(
        config, name=f"{config.name}_no_negatives", out_dir=str(out), stages=stages,
        data=dataclasses.replace(config.data, root=str(data)), progress=False,
    )  # fmt: skip
    if out.exists():  # an earlier benchmark's: train it again
        shutil.rmtree(out)
    start_run_dir(config, resume=False, overwrite=False)  # the run directory `train` resumes
    for name, source in zip(earlier, finished, strict=True):
        stage = out / "stages" / name
        stage.mkdir(parents=True)
        shutil.copyfile(source / "done.json", stage / "done.json")
        (stage / "best").symlink_to((source / "best").resolve(), target_is_directory=True)
    return train(config, resume=True)  # at the pointer: the stages before it are done


def _subset(results: list[Any], keep: set[str]) -> list[Any]:
    return [r for r in results if r.query.query_id in keep]


def measure_default(size: Any, ladder_row: Any, workdir: Path | None = None) -> dict[str, Any]:
    """The default model's table and its decoding ablations (module docstring).

    With `workdir`, also the default recipe trained without negative queries
    (`train_without_negatives`, trained there), when the default model has its stages.

    Returns:
        {"model": obtain_default_model's dict, "test": what was evaluated, "decoding": its
         images, queries and default switches, "rows": {"default/<key>" and
         "decoding/<key>": row}}; each row has "label", "subsets", "ious", "eval_s"; decoding
        rows also "true_cells" (the heads read at the true cell under that decoding).
    """
    from llmi3d_core.baselines import fit_baseline
    from llmi3d_core.data.reader import read_dataset
    from llmi3d_core.data.splits import select_queries
    from llmi3d_core.default_model import TEST_SEED, default_test_data
    from llmi3d_core.eval_predict import (
        load_predictor,
        predict_at_true_cells,
        predict_with_baseline,
        predict_with_model,
        predict_with_true_names,
    )
    from llmi3d_core.prediction import AnswerRule

    model = obtain_default_model(size, ladder_row)
    root = default_test_data(num_images=size.default_test_images, progress=False)
    dataset = read_dataset(root)
    all_queries = select_queries(dataset, TEST_SPLIT)
    queries = queries_of_images(all_queries, size.default_eval_images)
    train_root = Path(model["data_root"])
    if not (train_root / "dataset.json").is_file():
        raise FileNotFoundError(
            f"the default model's training data {train_root} is gone (the baselines are fitted "
            "on it); delete the model's cache directory and rerun to train it again"
        )
    train_data = read_dataset(train_root)
    fit_on = select_queries(train_data, model["train_split"])

    rows: dict[str, dict[str, Any]] = {}

    def add(key: str, predict: Any, eval_s: float | None = None) -> list[Any]:
        print(f"[bench_accuracy] default/{key} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        results = predict()
        elapsed = time.perf_counter() - started if eval_s is None else eval_s
        rows[f"default/{key}"] = {"label": DEFAULT_ROWS[key], **scored(results, dataset),
                     "eval_s": elapsed}  # fmt: skip
        return list(results)

    predictor = load_predictor(Path(model["checkpoint"]), device=resolve_device(size.device))
    # one pass under the all-zero rule; the node's answers are these under the node's rule
    # (QueryResult.under: exactly what a pass under that rule returns)
    best = add("llmi3d_best", lambda: predict_with_model(
        predictor, dataset, queries, progress=False, rule=AnswerRule()))  # fmt: skip
    rule = predictor.served_rule  # the node's: AnswerRule.SERVED with the model's own ratio
    served = add("llmi3d", lambda: [r.under(rule) for r in best],
                 eval_s=rows["default/llmi3d_best"]["eval_s"])  # fmt: skip
    # the same weights in bfloat16 (the node's `dtype`): faster where the CPU has bfloat16
    # units, as section 2 measures; what it costs in accuracy is this row
    low = load_predictor(Path(model["checkpoint"]), device=resolve_device(size.device),
                         dtype="bfloat16")  # fmt: skip
    add("llmi3d_bf16", lambda: [r.under(rule) for r in predict_with_model(
        low, dataset, queries, progress=False, rule=AnswerRule())])  # fmt: skip
    # the same answers, each image's boxes stood on its camera's floor (the scene's camera
    # height and pitch, as the node's floor_frame or camera_height_m / camera_pitch_deg give
    # them), with their 2D boxes' bottom edges (GroundPlane.place)
    add("llmi3d_floor", lambda: [r.under(rule) for r in predict_with_model(
        predictor, dataset, queries, progress=False, rule=AnswerRule(), ground_plane=True,
    )])  # fmt: skip
    true = add("true_cells", lambda: predict_at_true_cells(predictor, dataset, queries,
                                                          progress=False))  # fmt: skip
    add("true_names", lambda: [r.under(rule) for r in predict_with_true_names(
        predictor, dataset, queries, progress=False, rule=AnswerRule())])  # fmt: skip
    plain_model: dict[str, Any] | None = None
    if workdir is not None and model["source"] != "standin":
        print("[bench_accuracy] default/no_negatives: training ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            checkpoint = train_without_negatives(Path(model["run_dir"]), workdir)
            if checkpoint is not None:
                plain_model = {"checkpoint": str(checkpoint),
                               "train_s": time.perf_counter() - started}  # fmt: skip
                plain = load_predictor(checkpoint, device=resolve_device(size.device))
                add("no_negatives", lambda: predict_with_model(
                    plain, dataset, queries, progress=False, rule=AnswerRule()))  # fmt: skip
                del plain
        except Exception:  # the rest of the table stands; the paragraph says what failed
            plain_model = {"error": _error_tail()}
            print(plain_model["error"], file=sys.stderr, flush=True)
    for key in ("mean_box", "backproject"):
        baseline = fit_baseline(key, train_data, fit_on)
        add(key, lambda b=baseline: predict_with_baseline(b, dataset, queries))
    gpu_model = None
    if size.gpu_run:
        gpu_model = gpu_run_info(Path(size.gpu_run))
        gpu = load_predictor(Path(gpu_model["checkpoint"]), device=resolve_device(size.device))
        add("gpu", lambda: [r.under(gpu.served_rule) for r in predict_with_model(
            gpu, dataset, queries, progress=False, rule=AnswerRule())])  # fmt: skip
        add("gpu_true_cells", lambda: predict_at_true_cells(gpu, dataset, queries,
                                                            progress=False))  # fmt: skip
        del gpu

    # decoding ablations: the same weights, decoded differently (a fresh feature cache each:
    # the candidates' depths, which the pointer reads, are decoded when an image is encoded)
    subset = queries_of_images(queries, size.decoding_images)
    keep = {q.query_id for q in subset}
    heads = predictor.model.config.heads
    default_decoding = {k: getattr(heads, k) for d in DECODINGS.values() for k in d[1]}
    for key, (label, switches) in DECODINGS.items():
        print(f"[bench_accuracy] decoding/{key} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        if switches:
            predictor.model.set_decoding(**switches)
            predictor.clear_cache()
            results = predict_with_model(predictor, dataset, subset, progress=False)
            at_true = predict_at_true_cells(predictor, dataset, subset, progress=False)
            predictor.model.set_decoding(**default_decoding)
            predictor.clear_cache()
        else:
            results, at_true = _subset(served, keep), _subset(true, keep)
        rows[f"decoding/{key}"] = {
            "label": label,
            "switches": switches,
            **scored(results, dataset),
            "true_cells": scored(at_true, dataset),
            "eval_s": time.perf_counter() - started if switches else None,  # None: the table's
        }
    kinds = {"single": 0, "negative": 0, "multi": 0}
    for query in queries:
        count = len(query.target_object_ids)
        kinds["single" if count == 1 else "negative" if count == 0 else "multi"] += 1
    return {
        "model": model,
        "gpu_model": gpu_model,
        "no_negatives_model": plain_model,
        "test": {
            "root": str(root),
            "seed": TEST_SEED,
            "images": len(dataset.images),
            "queries": len(all_queries),
            "eval_images": len({q.image_id for q in queries}),
            "eval_queries": len(queries),
            "kinds": kinds,
            "novel_categories": list(dataset.info.novel_categories),
            "fit_queries": len(fit_on),
            "answer_rule": asdict(rule),
        },
        "decoding": {
            "images": len({q.image_id for q in subset}),
            "queries": len(subset),
            "default": default_decoding,
        },
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------
# The whole section
# --------------------------------------------------------------------------------------------


def _error_tail(lines: int = 12) -> str:
    """The innermost frames and the message of the exception being handled."""
    import traceback

    return "\n".join(traceback.format_exc().strip().splitlines()[-lines:])


def measure_accuracy(size: Any, workdir: Path) -> dict[str, Any]:
    """Section 1: the default model's table and the ablation ladders for benchmark size `size`.

    Every variant's config is built (and so checked) even where `size.ablation_rows` leaves
    its training out. A ladder row whose training fails, or a failing default-model part, does
    not stop the rest: the markdown says FAILED with the reason, and "errors" lists them (then
    run_benchmarks.py exits with 1).
    """
    from llmi3d_core.baselines import fit_baseline
    from llmi3d_core.data.splits import select_queries

    for variant in VARIANTS.values():
        build_config(size, size.ablation_family, variant, workdir)
    dataset = make_dataset(size, workdir)
    queries = eval_queries(dataset, size.eval_queries)
    fallback = fit_baseline("mean_box", dataset, select_queries(dataset, TRAIN_SPLIT))
    bench = Bench(size, workdir, dataset, queries, fallback)
    rows: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}  # row name -> why it could not be trained (its traceback tail)
    family = size.ablation_family

    def row(key: str) -> dict[str, Any] | None:
        """The ladder row of `key`, trained on first use; None when its training failed."""
        name = f"{family}/{key}"
        if name not in rows and name not in failed:
            print(f"[bench_accuracy] {name} ...", file=sys.stderr, flush=True)
            try:
                rows[name] = done = train_and_evaluate(bench, family, VARIANTS[key])
            except Exception:  # one row must not take the others down: reported in the table
                failed[name] = _error_tail()
                print(failed[name], file=sys.stderr, flush=True)
                return None
            acc = done["subsets"]["all"]["acc@0.25"]
            print(
                f"[bench_accuracy] {name}: train {done['train_s']:.0f} s, eval "
                f"{done['eval_s']:.0f} s, Acc@0.25 {acc if acc is None else round(acc, 3)}",
                file=sys.stderr,
                flush=True,
            )
        return rows.get(name)

    def standin() -> dict[str, Any]:
        found = row("llmi3d")
        if found is None:
            raise RuntimeError(f"the stand-in {family}/llmi3d failed to train")
        return found

    try:
        default = measure_default(size, standin, workdir)
        rows.update(default.pop("rows"))
    except Exception:  # the ladders still run; the subsection says what failed
        default = {"error": _error_tail()}
        print(default["error"], file=sys.stderr, flush=True)
    ladders = []
    for title, keys, claims in LADDERS:
        wanted = [k for k in keys if not size.ablation_rows or k in size.ablation_rows]
        trained = [k for k in wanted if row(k) is not None]
        names = [f"{family}/{k}" for k in trained]
        kept = tuple((f"{family}/{b}", f"{family}/{w}", text) for b, w, text in claims
                     if b in trained and w in trained)  # fmt: skip
        skipped = [k for k in keys if k not in wanted]
        broken = {k: failed[f"{family}/{k}"] for k in wanted if k not in trained}
        ladders.append({"title": title, "rows": names, "claims": kept, "skipped": skipped,
                        "failed": broken})  # fmt: skip
    splits = {s: len(select_queries(dataset, s)) for s in (TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT)}
    plain = default.get("no_negatives_model") or {}
    errors = [default.get("error"), plain.get("error"), *failed.values()]
    return {
        "default": default,
        "default_claims": DEFAULT_CLAIMS,
        "decoding_claims": DECODING_CLAIMS,
        "data": {
            "images": len(dataset.images),
            "seed": size.data_seed,
            "queries": splits,
            "eval_queries": len(queries),
            "camera_groups": {
                name: info.get("domain") for name, info in dataset.info.camera_groups.items()
            },
            "novel_categories": list(dataset.info.novel_categories),
        },
        "ladders": ladders,
        "ablation_family": family,
        "rows": rows,
        "errors": [error for error in errors if error],
    }


# --------------------------------------------------------------------------------------------
# Verdicts and markdown
# --------------------------------------------------------------------------------------------


def paired_se(better: np.ndarray, worse: np.ndarray) -> float:
    """Standard error of the mean of per-query differences (the pairing is accounted for)."""
    diff = np.asarray(better, dtype=float) - np.asarray(worse, dtype=float)
    return float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.inf


def verdict(better: dict[str, Any], worse: dict[str, Any]) -> dict[str, Any]:
    """Does our pair of rows order as the claim says (`better` above `worse`)?

    Acc@0.25 (hit = IoU > 0.25) of the single-target queries decides; on a tie, mean IoU.
    "within noise" when the deciding difference is smaller than two standard errors of the
    paired per-query difference.
    """
    ious_a, ious_b = np.asarray(better["ious"], float), np.asarray(worse["ious"], float)
    if len(ious_a) == 0 or len(ious_a) != len(ious_b):
        return {"delta": 0.0, "miou_delta": 0.0, "decided_by": "-", "se": math.inf,
                "word": "tie", "noisy": False}  # fmt: skip
    hits_a, hits_b = (ious_a > 0.25).astype(float), (ious_b > 0.25).astype(float)
    delta = float(hits_a.mean() - hits_b.mean())
    miou = float(ious_a.mean() - ious_b.mean())
    if delta != 0:
        deciding, se = delta, paired_se(hits_a, hits_b)
    else:
        deciding, se = miou, paired_se(ious_a, ious_b)
    word = "agrees" if deciding > 0 else "disagrees" if deciding < 0 else "tie"
    noisy = word != "tie" and not abs(deciding) >= 2 * se
    return {
        "delta": delta,
        "miou_delta": miou,
        "decided_by": "Acc@0.25" if delta != 0 else "mIoU",
        "se": se,
        "word": word,
        "noisy": noisy,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _m(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None and b is None else f"{_pct(a)} / {_pct(b)}"


def _family_note(family: str) -> str:
    if family == "tiny":
        return (
            "`tiny` family: tiny_synth.yaml (random-init 2-layer LM, byte tokenizer, small "
            "vision branches, one object per image) + each ablation file's changes w.r.t. "
            "smol_synth.yaml (a file's own stage list keeps its kinds, each with the tiny "
            "recipe's batch and learning rate), because the smol backbone is too slow to train "
            "this many times on this CPU"
        )
    return "`smol` family: the recipe files as they are (SmolLM2-135M backbone)"


def _budget(r: dict[str, Any]) -> str:
    return stages_text(r["stages"]) if r["method"] == "model" else "fit"


def _metrics_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| method | recipe (+ changes) | stages: steps x batch | Acc@0.25 | Acc@0.5 | mIoU "
        "| depth err (m) | L / W / H err (m) | train + eval (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["subsets"]["all"]
        changes = ", ".join(
            o.removeprefix("model.").replace('"', "")
            for o in r["overrides"]
            if o.startswith("model.")
        )
        recipe = r["recipe"] + (f" ({changes})" if changes else "")
        note = f" ({r['fallback_queries']} unusable)" if r["fallback_queries"] else ""
        lines.append(
            f"| {r['label']}{note} | {recipe} | {_budget(r)} | {_pct(m['acc@0.25'])} "
            f"| {_pct(m['acc@0.5'])} | {_pct(m['mean_iou'])} | {_m(m['depth_mae'])} "
            f"| {_m(m['length_mae'])} / {_m(m['width_mae'])} / {_m(m['height_mae'])} "
            f"| {r['train_s']:.0f} + {r['eval_s']:.0f} |"
        )
    return lines


SUBSET_LABELS = {
    "caption": "captions",
    "question": "questions",
    "box prompt": "box prompt",
    "point prompt": "point prompt",
    "novel categories": "novel categories",
    UNSEEN_SUBSET: "unseen cameras",
}
DEFAULT_SUBSETS = ("caption", "question", "box prompt", "point prompt", "novel categories")
# the default model's test split holds queries of categories it never trained on ("novel"): a
# caption or question naming one can only be grounded by luck, so these types are followed by
# their base-category rows (eval_report.base_subset), what naming reaches (box and point prompts
# name no category)
WITH_BASE_ROWS = ("caption", "question")


def _subset_table(rows: list[dict[str, Any]]) -> list[str]:
    names = [s for s in SUBSET_LABELS if s in rows[0]["subsets"]]
    counts = [int(rows[0]["subsets"][s]["single_count"] or 0) for s in names]
    header = " | ".join(f"{SUBSET_LABELS[s]} (n={n})" for s, n in zip(names, counts, strict=True))
    lines = [f"| method | {header} |", "|---|" + "---|" * len(names)]
    for r in rows:
        cells = " | ".join(
            f"{_pct(r['subsets'][s]['acc@0.25'])} / {_pct(r['subsets'][s]['mean_iou'])}"
            for s in names
        )
        lines.append(f"| {r['label']} | {cells} |")
    return lines


def _claim_lines(claims: Any, rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for better, worse, text in claims:
        if better not in rows or worse not in rows:  # a row this run did not measure
            continue
        v = verdict(rows[better], rows[worse])
        noise = f" within noise: 2 SE = {200 * v['se']:.2f} points" if v["noisy"] else ""
        how = f", by {v['decided_by']}{',' if noise else ''}" if v["word"] != "tie" else ""
        lines.append(
            f"- {text}; ours: {100 * v['delta']:+.1f} points Acc@0.25, "
            f"{100 * v['miou_delta']:+.2f} points mIoU (**{v['word']}**{how}{noise})"
        )
    return lines


def _all_claims(result: dict[str, Any]) -> list[Claim]:
    """Every claim whose two rows were measured (a failed part has none)."""
    claims = [*result["default_claims"], *result["decoding_claims"]]
    claims += [c for ladder in result["ladders"] for c in ladder["claims"]]
    return [c for c in claims if c[0] in result["rows"] and c[1] in result["rows"]]


def all_verdicts(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(claim text, verdict) of every paper claim that was measured, default table first."""
    rows = result["rows"]
    return [
        (text, verdict(rows[better], rows[worse]))
        for better, worse, text in _all_claims(result)
        if text.startswith("paper")
    ]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The plain-words summary of section 1: how many paper claims our numbers reproduce."""
    measured = all_verdicts(result)
    verdicts = [v for _, v in measured]
    counts = {w: sum(v["word"] == w for v in verdicts) for w in ("agrees", "disagrees", "tie")}
    clear = [
        f"{text.removeprefix('paper: ')} ({v['word']})"
        for text, v in measured
        if not v["noisy"] and v["word"] != "tie"
    ]
    text = (
        f"**Summary.** Of the {len(verdicts)} orderings the paper reports that this run "
        f"measured, ours agree with {counts['agrees']}, disagree with {counts['disagrees']} "
        f"and tie on {counts['tie']}. Differences larger than two standard errors: "
        f"{'; '.join(clear) if clear else 'none'}."
    )
    learned = [r for k, r in result["rows"].items() if r.get("method") == "model"]
    if learned and not any(r["subsets"]["all"]["acc@0.25"] for r in learned):
        text += (
            f" No ladder model ({len(learned)} trained) places a box with IoU > 0.25 on any "
            "evaluated query at these budgets: the ladders do not test the paper's claims here."
        )
    return [text]


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.1f} min"


def model_lines(default: dict[str, Any], size: Any) -> list[str]:
    """Where the default model came from: recipe, stages, cache, first-run time."""
    model, test = default["model"], default["test"]
    stages = stages_text([
        {**s, "batch_size": s.get("batch_size") or model.get("batch_size", "?")}
        for s in model["stages"]
    ])  # fmt: skip
    if model["source"] == "standin":
        origin = (
            f"**Stand-in at size `{size.name}`**: not the default model ({model['reason']}); "
            f"the ladders' tiny `llmi3d` row takes its place (recipe `{model['recipe']}`, "
            f"stages {stages}, trained in {model['train_s']:.0f} s), so these numbers only "
            "check the pipeline."
        )
    else:
        how = (
            "reused from the demo's cache"
            if model["source"] == "cached"
            else f"not cached yet: trained by this run in **{_minutes(model['train_s'])}**, as "
            "the demo's first run does"
        )
        origin = (
            f"The model the demo serves: `ensure_default_model()`, recipe `{model['recipe']}` "
            f"(stages: {stages}), {how} (`{model['checkpoint']}`)."
        )
        first = model.get("first_run")
        if first:
            origin += (
                f" First run: training it took **{_minutes(first['seconds'])}** (finished "
                f"{first['finished']}; from the file times of its run directory, data "
                "generation included)."
            )
    gpu = default.get("gpu_model")
    if gpu:
        origin += (
            f" The GPU recipe's rows: `{gpu['recipe']}` ({gpu['images']} training scenes; "
            + " + ".join(f"{s['kind']} {s['max_steps']} x {s['batch_size']} in "
                         f"{_minutes(s['train_s'])}" for s in gpu["stages"])
            + f"; each stage's time is its own log's span, on the machine that trained it), from "
            f"`{gpu['checkpoint']}`, answering under its own rule."
        )  # fmt: skip
    kinds = test["kinds"]
    subset = (
        "all of them"
        if test["eval_images"] == test["images"]
        else f"the queries of {test['eval_images']} images spread evenly over the set"
    )
    return [
        origin,
        "",
        f"Held-out test set: `default_test_data()`, {test['images']} synthetic images of seed "
        f"{test['seed']} (no recipe trains on it; held-out categories "
        f"{', '.join(test['novel_categories']) or 'none'}), {test['queries']} queries; "
        f"evaluated: {subset}, **{test['eval_queries']}** queries ({kinds['single']} "
        f"single-target, {kinds['negative']} negative, {kinds['multi']} multi-target). Answers "
        f"as the node gives them (`predict_with_model` under the node's {_rule_text(test)}, "
        "up to 10 boxes, best first). The baselines are fitted "
        "on the model's own training split "
        f"({test['fit_queries']} queries). Percentages; exact oriented 3D IoU, Acc@k = IoU > k.",
    ]


def negatives_cost(rows: dict[str, dict[str, Any]]) -> dict[str, float] | None:
    """What negative queries cost the positive ones (issue 14), in grounding points, or None.

    "trained": the recipe trained without negatives and answering always, against the model as
    served; "rule": the served model answering always against as served (the answer rule alone,
    on the same weights). None without the no-negatives row.
    """
    if "default/no_negatives" not in rows:
        return None
    grounding = {key: rows[f"default/{key}"]["subsets"]["all"].get("grounding_acc")
                 for key in ("llmi3d", "llmi3d_best", "no_negatives")}  # fmt: skip
    if any(value is None for value in grounding.values()):
        return None
    return {
        **grounding,
        "trained": 100 * (grounding["no_negatives"] - grounding["llmi3d"]),
        "rule": 100 * (grounding["llmi3d_best"] - grounding["llmi3d"]),
    }


def negatives_cost_lines(default: dict[str, Any], rows: dict[str, dict[str, Any]]) -> list[str]:
    """The paragraph on what negative queries cost ([] without the no-negatives row)."""
    error = (default.get("no_negatives_model") or {}).get("error")
    if error:
        return [
            "What negative queries cost the positive ones (issue 14): the recipe trained without "
            f"them **FAILED**: `{error.strip().splitlines()[-1][:300]}`",
            "",
        ]
    cost = negatives_cost(rows)
    if cost is None:
        return []
    trained = (default.get("no_negatives_model") or {}).get("train_s")
    when = "" if trained is None else f" (its pointer stage trained here in {_minutes(trained)})"
    return [
        f"What negative queries cost the positive ones (issue 14: at most 5 points of "
        f"grounding). The same recipe trained without them{when}, on the same detector and crop "
        f"heads, always answering its best box, grounds {_pct(cost['no_negatives'])} % of the "
        f"single-target queries; as served, the default grounds {_pct(cost['llmi3d'])} %: "
        f"**{cost['trained']:.1f} points**. On the same weights, always answering against as "
        f"served (the answer rule alone): {cost['rule']:.1f} points.",
        "",
    ]


def _rule_text(test: dict[str, Any]) -> str:
    """The answer rule a run used, in words (runs before the rule existed recorded min_score)."""
    rule = test.get("answer_rule")
    if rule is None:
        return f"min_score {test.get('min_score', '?')}"
    return (
        f"answer rule (the best box when it scores at least min_score {rule['min_score']:g} and "
        f"at least {rule['min_ratio_to_nothing']:g} x the probability that nothing matches; "
        f"further boxes at least {rule['min_score_others']:g})"
    )


def default_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The default model's main table: overall, with the negative and multi-target columns."""
    lines = [
        "| method | Acc@0.25 | Acc@0.5 | mIoU | grounding | depth err (m) | not here "
        "| multi P / R (3D@0.25) | multi P / R (2D@0.5) | targets boxed | ECE | eval (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in DEFAULT_ROWS:
        if f"default/{key}" not in rows:  # results of a release without that row
            continue
        r = rows[f"default/{key}"]
        m = r["subsets"]["all"]
        if key in TRUE_CELL_ROWS:  # single-target queries only; its score is a constant 1
            rest = "n/a | n/a | n/a | n/a | n/a"
        else:
            ece = m.get("ece")
            rest = (
                f"{_pct(m.get('not_here_rate'))} "
                f"| {_pair(m.get('multi_precision@0.25'), m.get('multi_recall@0.25'))} "
                f"| {_pair(m.get('multi_precision_2d@0.5'), m.get('multi_recall_2d@0.5'))} "
                f"| {_pct(m.get('target_recall_2d@0.5'))} "
                f"| {'-' if ece is None else f'{ece:.3f}'}"
            )
        lines.append(
            f"| {r['label']} | {_pct(m['acc@0.25'])} | {_pct(m['acc@0.5'])} "
            f"| {_pct(m['mean_iou'])} | {_pct(m.get('grounding_acc'))} | {_m(m['depth_mae'])} "
            f"| {rest} | {r['eval_s']:.0f} |"
        )
    return lines


def default_type_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Per query type (single-target queries) and for the held-out categories."""
    lines = [
        "| subset (single-target queries) | method | Acc@0.25 | Acc@0.5 | mIoU | grounding "
        "| depth err (m) | targets boxed (all its queries) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    from llmi3d_core.eval_report import base_subset

    first = rows["default/llmi3d"]["subsets"]
    labelled = []
    for subset in DEFAULT_SUBSETS:
        labelled.append((subset, SUBSET_LABELS[subset]))
        if subset in WITH_BASE_ROWS:
            labelled.append((base_subset(subset), f"{SUBSET_LABELS[subset]}, base categories"))
    for subset, subset_label in labelled:
        if subset not in first or not first[subset].get("single_count"):
            continue
        for key, label in DEFAULT_ROWS.items():
            if key == "llmi3d_bf16" or f"default/{key}" not in rows:  # the main table has it
                continue
            m = rows[f"default/{key}"]["subsets"][subset]
            lines.append(
                f"| {subset_label} (n={int(m['single_count'])}) "
                f"| {label} | {_pct(m['acc@0.25'])} | {_pct(m['acc@0.5'])} "
                f"| {_pct(m['mean_iou'])} | {_pct(m.get('grounding_acc'))} "
                f"| {_m(m['depth_mae'])} "
                f"| {'n/a' if key in TRUE_CELL_ROWS else _pct(m.get('target_recall_2d@0.5'))} |"
            )
    return lines


# the rows of `default_size_depth_table` (the bf16 and mean-box rows say nothing more there)
SIZE_DEPTH_ROWS = ("llmi3d", "llmi3d_best", "llmi3d_floor", "true_cells", "backproject", "gpu",
                   "gpu_true_cells")  # fmt: skip


def default_size_depth_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """By the target's 2D size and depth (eval_report.SIZE_NAMES, DEPTH_NAMES): Acc@0.25 /
    grounding / targets boxed of single-target queries ([] for results without them)."""
    from llmi3d_core.eval_report import DEPTH_NAMES, SIZE_NAMES

    first = rows["default/llmi3d"]["subsets"]
    names = [n for n in (*SIZE_NAMES.values(), *DEPTH_NAMES.values()) if n in first]
    if not names:
        return []
    header = " | ".join(f"{name} (n={int(first[name]['single_count'])})" for name in names)
    lines = [f"| method | {header} |", "|---|" + "---|" * len(names)]
    for key in SIZE_DEPTH_ROWS:
        if f"default/{key}" not in rows:
            continue
        subsets = rows[f"default/{key}"]["subsets"]
        cells = []
        for name in names:
            m = subsets[name]
            boxed = "n/a" if key in TRUE_CELL_ROWS else _pct(m.get("target_recall_2d@0.5"))
            cells.append(f"{_pct(m['acc@0.25'])} / {_pct(m.get('grounding_acc'))} / {boxed}")
        lines.append(f"| {DEFAULT_ROWS[key]} | {' | '.join(cells)} |")
    return lines


def decoding_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The decoding ablations: as served (pointer) and at the true cell."""
    lines = [
        "| decoding | Acc@0.25 | Acc@0.5 | mIoU | grounding | depth err (m) "
        "| at the true cell: Acc@0.25 / mIoU / depth err (m) | eval (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in DECODINGS:
        row = rows[f"decoding/{key}"]
        seconds = "above" if row["eval_s"] is None else f"{row['eval_s']:.0f}"
        m, t = row["subsets"]["all"], row["true_cells"]["subsets"]["all"]
        lines.append(
            f"| {row['label']} | {_pct(m['acc@0.25'])} | {_pct(m['acc@0.5'])} "
            f"| {_pct(m['mean_iou'])} | {_pct(m.get('grounding_acc'))} | {_m(m['depth_mae'])} "
            f"| {_pct(t['acc@0.25'])} / {_pct(t['mean_iou'])} / {_m(t['depth_mae'])} "
            f"| {seconds} |"
        )
    return lines


DEFAULT_TITLE = "### Default model on its held-out test set"
DECODING_TITLE = "### Decoding ablations of the default model (same weights, at inference)"


def _failed(error: str) -> list[str]:
    return ["**FAILED**:", "", "```", error.strip(), "```", ""]


def default_lines(result: dict[str, Any], size: Any) -> list[str]:
    """The default model's subsections: its table, per query type, decoding ablations."""
    rows, default = result["rows"], result["default"]
    if "error" in default:
        return [DEFAULT_TITLE, "", *_failed(default["error"])]
    decoding = default["decoding"]
    defaults = ", ".join(f"{k}={v}" for k, v in decoding["default"].items())
    return [
        DEFAULT_TITLE,
        "",
        *model_lines(default, size),
        "",
        *default_table(rows),
        "",
        *negatives_cost_lines(default, rows),
        "Grounding: the first 2D box has IoU > 0.5 with the target's (the right object was "
        "chosen). Acc, mIoU, grounding and depth error: single-target queries, first box (an "
        "empty answer scores 0). Not here: negative queries answered with no box. Multi P / R: "
        "boxes of multi-target queries matched one to one to their targets. ECE: calibration of "
        "the score over every returned box. Targets boxed: the share of all targets (single and "
        "multi-target queries) that one of the returned boxes matches (2D IoU > 0.5); on the "
        "'rule of zeros' row, which returns every candidate, it is the most that any pointer "
        "could ground with this detector. The 'rule of zeros' row is the same pass with "
        "nothing turned down (up to 10 boxes, best first): how well the model localises when "
        "it is never allowed to say 'not here'; the first row keeps what the node's answer "
        "rule keeps. The upper-bound row reads the dense heads at each "
        "target's own cell (single-target queries only): the gap to LLMI3D is what pointing at "
        "the wrong object costs, the rest is box error. The upper bound of naming is the first "
        "row's pass (same weights, same answer rule) with every candidate whose 2D box matches "
        "an object (IoU > 0.5) given that object's category and colour, sure (0.98), where the "
        "detector has the word (held-out categories keep theirs): the gap to LLMI3D is what "
        "misnaming costs, in wrong objects and in right ones turned down. The baselines always "
        "answer one box, so they never say 'not here'.",
        "",
        "Per query type:",
        "",
        *default_type_table(rows),
        "",
        "A box prompt is a candidate of its own, with the prompt (corrected from a crop) as "
        "its 2D box (model/candidates.py), so LLMI3D's grounding of box prompts says that it "
        "answered with the object in the box, and can exceed the upper-bound row, whose 2D "
        "box is the dense heads'; its Acc@0.25 says how good the 3D box is.",
        "",
        "By the target's size (COCO's areas of its 2D box, px of the input image) and depth "
        "(Omni3D's ranges), single-target queries, Acc@0.25 / grounding / targets boxed:",
        "",
        *default_size_depth_table(rows),
        "",
        *_claim_lines(result["default_claims"], rows),
        "",
        DECODING_TITLE,
        "",
        f"`model.set_decoding(...)` on the trained weights, evaluated on "
        f"{decoding['queries']} queries of {decoding['images']} of the test images above "
        f"(spread evenly; the default row is the table's own results on them). Default decoding: "
        f"{defaults}. Decoding changes the candidates' depths, which the pointer reads, so the "
        "pointed object can change too; the true-cell columns show the boxes alone.",
        "",
        *decoding_table(rows),
        "",
        *_claim_lines(result["decoding_claims"], rows),
        "",
    ]


def render_accuracy(result: dict[str, Any], size: Any) -> list[str]:
    """Markdown of section 1."""
    data, rows = result["data"], result["rows"]
    lines = [
        "Verdict rule: Acc@0.25 of the single-target queries decides (mIoU on a tie); 'within "
        "noise' when the difference is smaller than two standard errors of the paired per-query "
        "difference. Claims starting with 'paper' are counted in the summary; 'ours' and "
        "'sanity' ones are our own checks.",
        "",
        *summary_lines(result),
        "",
        *default_lines(result, size),
    ]
    unseen = ", ".join(g for g, d in data["camera_groups"].items() if d == "target")
    seen = ", ".join(g for g, d in data["camera_groups"].items() if d == "source")
    q = data["queries"]
    lines += [
        f"### Ablation ladders ({_family_note(result['ablation_family'])})",
        "",
        f"IG3D-Synth rendered for this run with the family recipe's scene options: "
        f"{data['images']} images, seed {data['seed']}; {q[TRAIN_SPLIT]} training queries "
        f"({TRAIN_SPLIT}), {q[VAL_SPLIT]} validation ({VAL_SPLIT}; "
        f"{min(size.val_queries, q[VAL_SPLIT])} used to pick `best`), {q[TEST_SPLIT]} test "
        f"queries, of which **{data['eval_queries']}** (spread evenly over the split) are "
        f"evaluated for every row, each answered with the model's best box (rule of zeros, as "
        "the baselines always answer one: the ladder recipes train no pointer stage, so their "
        "scores are not calibrated). Training sees only the source cameras "
        f"({seen or 'none'}); the unseen cameras are {unseen or 'none'}. Novel categories "
        "(never training targets): "
        f"{', '.join(data['novel_categories']) or 'none'}. Training seed {size.seed}. Stage "
        "budgets of this size (steps x batch per stage; a batch is capped by the stage's "
        "training samples) are in each row.",
        "",
    ]
    for ladder in result["ladders"]:
        ladder_rows = [rows[n] for n in ladder["rows"]]
        failed = ladder.get("failed", {})
        lines += [f"**{ladder['title']}**", ""]
        why = []
        if ladder["skipped"]:
            why.append(
                f"not trained at size `{size.name}` (this size's time budget; its configs were "
                f"built and checked): {', '.join(ladder['skipped'])}"
            )
        why += [
            f"not trained at size `{size.name}`, its training **FAILED**: {key}: "
            f"`{error.strip().splitlines()[-1][:300]}`"
            for key, error in failed.items()
        ]
        if len(ladder_rows) < 2:
            lines += [*(f"- {w}" for w in why), ""]
            continue
        lines += _metrics_table(ladder_rows)
        lines += ["", *_claim_lines(ladder["claims"], rows), *(f"- {w}" for w in why)]
        if any(r["fallback_queries"] for r in ladder_rows):
            lines.append(
                "- 'unusable': queries whose output did not hold a box (the wrong count of "
                "numbers, or a singular rotation); they were scored with the mean-box prior."
            )
        lines.append("")
    ladder_all = [rows[n] for ladder in result["ladders"] for n in ladder["rows"]]
    if ladder_all:
        unique = list({id(r): r for r in ladder_all}.values())
        lines += ["Acc@0.25 / mIoU per test subset of the ladder rows:", ""]
        lines += _subset_table(unique)
    return lines


def headline(result: dict[str, Any]) -> list[str]:
    """The accuracy lines of BENCHMARKS.md's headline."""
    rows, default = result["rows"], result["default"]
    summary = "- " + summary_lines(result)[0].removeprefix("**Summary.** ")
    if "error" in default:
        return ["- Default model on its held-out test set: **FAILED** (see section 1)", summary]
    m = rows["default/llmi3d"]["subsets"]["all"]
    best = rows["default/llmi3d_best"]["subsets"]["all"]
    upper = rows["default/true_cells"]["subsets"]["all"]
    standin = default["model"]["source"] == "standin"
    who = "Stand-in for the default model (tiny, smoke size)" if standin else "Default model"
    test = default["test"]
    line = (
        f"- {who} on its held-out test set ({test['eval_queries']} queries): "
        f"**Acc@0.25 {_pct(m['acc@0.25'])} %**, grounding {_pct(m.get('grounding_acc'))} % "
        f"(always its best box: {_pct(best['acc@0.25'])} %, {_pct(best.get('grounding_acc'))} %); "
        f"heads at the true cell (upper bound of pointing) {_pct(upper['acc@0.25'])} %; "
        f"not here {_pct(m.get('not_here_rate'))} %, multi-target P / R (2D@0.5) "
        f"{_pair(m.get('multi_precision_2d@0.5'), m.get('multi_recall_2d@0.5'))} %; mean box "
        f"{_pct(rows['default/mean_box']['subsets']['all']['acc@0.25'])} %, back-projection "
        f"of the true 2D box {_pct(rows['default/backproject']['subsets']['all']['acc@0.25'])} %"
    )
    lines = [line]
    if "default/true_names" in rows:  # results of releases before it lack the row
        named = rows["default/true_names"]["subsets"]
        lines.append(
            f"- Upper bound of naming (each candidate named by the object it boxes, the node's "
            f"rule): grounding {_pct(named['all'].get('grounding_acc'))} %, captions "
            f"{_pct(named.get('caption', {}).get('grounding_acc'))} %, not here "
            f"{_pct(named['all'].get('not_here_rate'))} %"
        )
    cost = negatives_cost(rows)
    if cost is not None:
        lines.append(
            f"- What negative queries cost the positive ones: {cost['trained']:.1f} points of "
            f"grounding against the recipe trained without them ({_pct(cost['no_negatives'])} "
            f"%, always answering); the answer rule alone, on the same weights: "
            f"{cost['rule']:.1f} points"
        )
    if "default/gpu" in rows:
        gpu = rows["default/gpu"]["subsets"]["all"]
        gpu_upper = rows["default/gpu_true_cells"]["subsets"]["all"]
        lines.append(
            f"- GPU recipe `smol_synth_gpu` on the same set: **Acc@0.25 {_pct(gpu['acc@0.25'])} "
            f"%**, grounding {_pct(gpu.get('grounding_acc'))} %; heads at the true cell "
            f"{_pct(gpu_upper['acc@0.25'])} %; not here {_pct(gpu.get('not_here_rate'))} %, "
            f"multi-target P / R (2D@0.5) "
            f"{_pair(gpu.get('multi_precision_2d@0.5'), gpu.get('multi_recall_2d@0.5'))} %"
        )
    return [*lines, summary]


def main() -> int:
    from bench_sizes import SIZES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="smoke")
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    size = SIZES[args.size]
    result = measure_accuracy(size, args.workdir)
    print("\n".join(render_accuracy(result, size)))
    (args.workdir / "accuracy.json").write_text(
        json.dumps(dataclasses.asdict(size) | {"result": result}, default=str, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
