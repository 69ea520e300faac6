"""Accuracy on IG3D-Synth: LLMI3D vs its baselines, and the ablation ladders of Tables X-XIII.

Used by run_benchmarks.py (section 1); run alone it does the same for one size and prints the
markdown:

    python benchmarks/bench_accuracy.py --size smoke
    python benchmarks/bench_accuracy.py --size reduced --workdir runs/bench_accuracy

Every model is trained with the training engineer's recipes in config/train/ through
`llmi3d_core.train.train` (what `llmi3d train` runs) and evaluated with `llmi3d_core.evaluate`
(what `llmi3d eval` runs: `load_predictor`, `predict_with_model`, `predict_with_baseline`,
`evaluate_results`). What this module adds:

* One dataset for all: IG3D-Synth rendered once (size.data_images, size.data_seed).
* Unseen cameras: every model and baseline is trained (and validated) on the "source" camera
  domain only (`data.train_split=train@source`, `val@source`), so the test queries of the
  "target" camera groups (vga_wide, nuscenes_like) come from cameras never seen in training.
  Novel categories are never targets in training (the generator's open-vocabulary split).
* Model families. The `smol` family is the recipe files as they are (smol_synth.yaml and the
  ablation/baseline files built on it). The `tiny` family is tiny_synth.yaml plus exactly the
  keys in which the ablation/baseline file differs from smol_synth.yaml (e.g.
  model.high_res.enabled=false), for sizes where the smol backbone is too slow to train a dozen
  times on a CPU. Steps and validation set size come from the benchmark size.
* One evaluation subset: size.eval_queries test queries spread evenly over the test split, the
  same queries for every method.
* Text3D output that does not parse into a box (ModelOutputError, or a singular rotation) is
  not a crash: that query gets the mean-box prior instead, and the table counts such queries.
* Verdicts: for every claim of the paper (e.g. "HR branch helps") the difference in Acc@0.25
  between the two rows, with the standard error of that paired difference, and whether our
  ordering agrees.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
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

# (better, worse, what the paper reports); None as `worse` marks a row shown without a claim
Claim = tuple[str, str, str]
MAIN_ROWS = ("llmi3d", "text3d", "backproject", "mean_box")
MAIN_CLAIMS: tuple[Claim, ...] = (
    ("llmi3d", "text3d", "paper: the 3D Query beats Text3D (box as text numbers)"),
    ("llmi3d", "backproject", "paper: LLMI3D beats 2D grounding + back-projection"),
    ("llmi3d", "mean_box", "not in the paper (sanity floor): beats the mean-box prior"),
)
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
            ("llmi3d", "text3d", "paper: the 3D Query beats text numbers"),
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


def variant_overrides(variant: Variant) -> list[str]:
    """key=value overrides that turn the reference recipe into `variant` (its recipe file).

    The keys are those in which the variant's file differs from smol_synth.yaml (apart from
    its name and out_dir); values are written as JSON, which the override parser reads as YAML.
    """
    from llmi3d_core.train_config import config_diff

    if variant.recipe is None:
        return []
    reference = _plain_config(DIFF_REFERENCE)
    changed = _plain_config(variant.recipe)
    keys = [k for k in config_diff(reference, changed) if k not in RUN_KEYS]
    return [f"{k}={json.dumps(v)}" for key in keys for k, v in _leaves(key, _lookup(changed, key))]


def _leaves(key: str, value: Any) -> list[tuple[str, Any]]:
    """("model.heads", {"readout": "text"}) -> [("model.heads.readout", "text")]."""
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaves(f"{key}.{k}", v)]
    return [(key, value)]


def run_overrides(size: Any, out_dir: Path, data_root: Path, steps: int) -> list[str]:
    """The benchmark's settings on top of any recipe: data, splits, budget, quiet output."""
    overrides = [
        f"out_dir={out_dir}",
        f"data.root={data_root}",
        f"data.train_split={TRAIN_SPLIT}",
        f"data.val_split={VAL_SPLIT}",
        f"data.val_queries={size.val_queries}",
        f"seed={size.seed}",
        "checkpoint_interval=0",
        "keep_checkpoints=1",
        "progress=false",
        "tensorboard=false",
        f"device={size.device}",
    ]
    if size.threads:
        overrides.append(f"threads={size.threads}")
    if steps:
        overrides += [f"max_steps={steps}", f"eval_interval={max(1, steps // 2)}"]
    return overrides


def build_config(size: Any, family: str, variant: Variant, steps: int, workdir: Path) -> Any:
    """The TrainConfig of one (family, variant) run of the benchmark."""
    from llmi3d_core.train_config import load_train_config

    recipe = FAMILY_RECIPES[family]
    out_dir = workdir / "runs" / f"{family}_{variant.key}"
    overrides = [
        *variant_overrides(variant),
        f"name={family}_{variant.key}",
        *run_overrides(size, out_dir, workdir / "data", steps),
    ]
    return load_train_config(CONFIG_DIR / f"{recipe}.yaml", overrides)


# --------------------------------------------------------------------------------------------
# Data, training, evaluation
# --------------------------------------------------------------------------------------------


def make_dataset(size: Any, root: Path) -> Any:
    """Render the benchmark's IG3D-Synth set once (reused when present); return it read."""
    from llmi3d_core.data.format import DATASET_JSON, read_dataset

    if not (root / DATASET_JSON).is_file():
        from llmi3d_core.data.synth import SynthConfig, generate_dataset

        config = SynthConfig(num_images=size.data_images, seed=size.data_seed)
        generate_dataset(config, root, overwrite=True, workers=2, progress=False)
    return read_dataset(root)


def eval_queries(dataset: Any, count: int) -> list[Any]:
    """`count` test queries spread evenly over the test split (all when count is 0)."""
    from llmi3d_core.data.format import select_queries

    queries = select_queries(dataset, TEST_SPLIT)
    if not count or len(queries) <= count:
        return queries
    picks = np.unique(np.linspace(0, len(queries) - 1, count).round().astype(int))
    return [queries[i] for i in picks]


def predict_model_robust(
    predictor: Any, fallback: Any, dataset: Any, queries: list[Any]
) -> tuple[list[Any], int]:
    """`predict_with_model` query by query; a query with an unusable output gets `fallback`.

    Unusable: the model's output does not parse into a box (ModelOutputError: Text3D text with
    the wrong count of numbers, or non-finite values), or it parses into a box that is not one
    (InvalidInputError from Box3D: e.g. a Text3D rotation of six zeros gives a singular matrix).
    One query at a time costs nothing extra: the Predictor caches the features of the last
    images, so the further queries on an image skip its encoding, as a batch would.

    Returns:
        (results in query order, number of queries answered by the fallback)
    """
    from llmi3d_core.errors import InvalidInputError, ModelOutputError
    from llmi3d_core.evaluate import predict_with_baseline, predict_with_model

    results: list[Any] = []
    failed = 0
    for query in queries:
        try:
            results += predict_with_model(predictor, dataset, [query], progress=False)
        except (ModelOutputError, InvalidInputError):
            failed += 1
            results += predict_with_baseline(fallback, dataset, [query])
    return results, failed


@dataclass
class Bench:
    """What every run of one accuracy section shares.

    Attributes:
        size: the run_benchmarks.BenchSize.
        workdir: runs/ and data/ go here.
        dataset: the IG3D-Synth set (format.Dataset).
        queries: the evaluated test queries.
        fallback: the mean-box prior (fitted on the training split) for unusable model output.
    """

    size: Any
    workdir: Path
    dataset: Any
    queries: list[Any]
    fallback: Any


def train_and_evaluate(bench: Bench, family: str, variant: Variant, steps: int) -> dict[str, Any]:
    """Train (or fit) one variant, evaluate it on the bench's queries.

    Returns:
        The row: what was trained (recipe, overrides, steps, batch, seconds), the metrics of
        every subset (evaluate_results) and the per-query IoUs (for the paired verdicts).
    """
    import torch

    from llmi3d_core.baselines import is_baseline_dir, load_baseline
    from llmi3d_core.evaluate import evaluate_results, load_predictor, predict_with_baseline
    from llmi3d_core.metrics import box_ious
    from llmi3d_core.train import train

    dataset, queries = bench.dataset, bench.queries
    config = build_config(bench.size, family, variant, steps, bench.workdir)
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
    report = evaluate_results(results, dataset)
    ious = box_ious([r.pred for r in results], [r.gt for r in results])
    return {
        "family": family,
        "variant": variant.key,
        "label": variant.label,
        "recipe": variant.recipe or FAMILY_RECIPES[family],
        "method": config.method,
        "overrides": variant_overrides(variant),
        "steps": config.max_steps if config.method == "model" else 0,
        "batch": config.batch_size * config.grad_accum,
        "train_s": train_s,
        "eval_s": eval_s,
        "fallback_queries": failed,
        "subsets": report["subsets"],
        "ious": [float(x) for x in ious],
    }


def measure_accuracy(size: Any, workdir: Path) -> dict[str, Any]:
    """Section 1: the main comparison and the ablation ladders for benchmark size `size`.

    Every variant's config is built (and so checked) even where `size.ablation_rows` leaves
    its training out.
    """
    from llmi3d_core.baselines import fit_baseline
    from llmi3d_core.data.format import select_queries

    for family in {size.main_family, size.ablation_family}:
        for variant in VARIANTS.values():
            build_config(size, family, variant, 1, workdir)
    dataset = make_dataset(size, workdir / "data")
    queries = eval_queries(dataset, size.eval_queries)
    fallback = fit_baseline("mean_box", dataset, select_queries(dataset, TRAIN_SPLIT))
    bench = Bench(size, workdir, dataset, queries, fallback)
    rows: dict[str, dict[str, Any]] = {}

    def row(family: str, key: str, steps: int) -> str:
        name = f"{family}/{key}"
        if name not in rows:
            print(f"[bench_accuracy] {name} ...", file=sys.stderr, flush=True)
            rows[name] = done = train_and_evaluate(bench, family, VARIANTS[key], steps)
            print(
                f"[bench_accuracy] {name}: train {done['train_s']:.0f} s, eval "
                f"{done['eval_s']:.0f} s, Acc@0.25 {done['subsets']['all']['acc@0.25']:.3f}",
                file=sys.stderr,
                flush=True,
            )
        return name

    main = [row(size.main_family, key, size.main_steps) for key in MAIN_ROWS]
    ladders = []
    for title, keys, claims in LADDERS:
        wanted = [k for k in keys if not size.ablation_rows or k in size.ablation_rows]
        names = [row(size.ablation_family, key, size.ablation_steps) for key in wanted]
        kept = tuple(c for c in claims if c[0] in wanted and c[1] in wanted)
        skipped = [k for k in keys if k not in wanted]
        ladders.append({"title": title, "rows": names, "claims": kept, "skipped": skipped})
    splits = {s: len(select_queries(dataset, s)) for s in (TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT)}
    return {
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
        "main": {"rows": main, "claims": MAIN_CLAIMS, "family": size.main_family},
        "ladders": ladders,
        "ablation_family": size.ablation_family,
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------
# Verdicts and markdown
# --------------------------------------------------------------------------------------------


def paired_se(better: np.ndarray, worse: np.ndarray) -> float:
    """Standard error of the mean of per-query differences (the pairing is accounted for)."""
    diff = np.asarray(better, dtype=float) - np.asarray(worse, dtype=float)
    return float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.inf


def verdict(better: dict[str, Any], worse: dict[str, Any]) -> dict[str, Any]:
    """Does our pair of rows order as the paper's claim (`better` above `worse`)?

    Acc@0.25 (hit = IoU > 0.25) decides; on a tie, mean IoU. "within noise" when the deciding
    difference is smaller than two standard errors of the paired per-query difference.
    """
    ious_a, ious_b = np.asarray(better["ious"]), np.asarray(worse["ious"])
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


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _family_note(family: str) -> str:
    if family == "tiny":
        return (
            "`tiny` family: tiny_synth.yaml (random-init 2-layer LM, byte tokenizer, small "
            "vision branches) + each ablation file's changes w.r.t. smol_synth.yaml, because "
            "the smol backbone is too slow to train this many times on this CPU"
        )
    return "`smol` family: the recipe files as they are (SmolLM2-135M backbone)"


def _metrics_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| method | recipe (+ changes) | steps x batch | Acc@0.25 | Acc@0.5 | mIoU | depth err (m) "
        "| L / W / H err (m) | train + eval (s) |",
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
        budget = f"{r['steps']} x {r['batch']}" if r["method"] == "model" else "fit"
        note = f" ({r['fallback_queries']} unusable)" if r["fallback_queries"] else ""
        lines.append(
            f"| {r['label']}{note} | {recipe} | {budget} | {_pct(m['acc@0.25'])} "
            f"| {_pct(m['acc@0.5'])} | {_pct(m['mean_iou'])} | {m['depth_mae']:.2f} "
            f"| {m['length_mae']:.2f} / {m['width_mae']:.2f} / {m['height_mae']:.2f} "
            f"| {r['train_s']:.0f} + {r['eval_s']:.0f} |"
        )
    return lines


SUBSET_LABELS = {
    "caption": "captions",
    "question": "questions",
    "novel categories": "novel categories",
    UNSEEN_SUBSET: "unseen cameras",
    "box prompt": "box prompt",
    "point prompt": "point prompt",
}


def _subset_table(rows: list[dict[str, Any]]) -> list[str]:
    names = [s for s in SUBSET_LABELS if s in rows[0]["subsets"]]
    counts = [int(rows[0]["subsets"][s]["count"]) for s in names]
    header = " | ".join(f"{SUBSET_LABELS[s]} (n={n})" for s, n in zip(names, counts, strict=True))
    lines = [f"| method | {header} |", "|---|" + "---|" * len(names)]
    for r in rows:
        cells = " | ".join(
            f"{_pct(r['subsets'][s]['acc@0.25'])} / {_pct(r['subsets'][s]['mean_iou'])}"
            for s in names
        )
        lines.append(f"| {r['label']} | {cells} |")
    return lines


def _claim_lines(claims: Any, rows: dict[str, dict[str, Any]], family: str) -> list[str]:
    lines = []
    for better, worse, text in claims:
        v = verdict(rows[f"{family}/{better}"], rows[f"{family}/{worse}"])
        noise = f" within noise: 2 SE = {200 * v['se']:.2f} points" if v["noisy"] else ""
        how = f", by {v['decided_by']}{',' if noise else ''}" if v["word"] != "tie" else ""
        lines.append(
            f"- {text}; ours: {100 * v['delta']:+.1f} points Acc@0.25, "
            f"{100 * v['miou_delta']:+.2f} points mIoU (**{v['word']}**{how}{noise})"
        )
    return lines


def all_verdicts(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(claim text, verdict) of every paper claim that was measured, main table first."""
    rows = result["rows"]
    pairs = [(result["main"]["claims"], result["main"]["family"])]
    pairs += [(ladder["claims"], result["ablation_family"]) for ladder in result["ladders"]]
    return [
        (text, verdict(rows[f"{family}/{better}"], rows[f"{family}/{worse}"]))
        for claims, family in pairs
        for better, worse, text in claims
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
    learned = [r for r in result["rows"].values() if r["method"] == "model"]
    hitting = [r for r in learned if r["subsets"]["all"]["acc@0.25"] > 0]
    best = max(result["rows"].values(), key=lambda r: r["subsets"]["all"]["acc@0.25"])
    text = (
        f"**Summary.** Of the {len(verdicts)} orderings the paper reports that this run "
        f"measured, ours agree with {counts['agrees']}, disagree with {counts['disagrees']} "
        f"and tie on {counts['tie']}. Differences larger than two standard errors: "
        f"{'; '.join(clear) if clear else 'none'}."
    )
    if not hitting:
        text += (
            f" No learned model ({len(learned)} trained) places a box with IoU > 0.25 on any "
            f'evaluated query at these budgets; the best row is "{best["label"]}" at '
            f"{100 * best['subsets']['all']['acc@0.25']:.1f}% Acc@0.25. The models are "
            "undertrained: these numbers do not test the paper's claims."
        )
    lines = [text]
    return lines


def render_accuracy(result: dict[str, Any], size: Any) -> list[str]:
    """Markdown of section 1."""
    data, rows = result["data"], result["rows"]
    unseen = ", ".join(g for g, d in data["camera_groups"].items() if d == "target")
    seen = ", ".join(g for g, d in data["camera_groups"].items() if d == "source")
    q = data["queries"]
    lines = [
        f"IG3D-Synth rendered for this run: {data['images']} images, seed {data['seed']}; "
        f"{q[TRAIN_SPLIT]} training queries ({TRAIN_SPLIT}), {q[VAL_SPLIT]} validation "
        f"({VAL_SPLIT}; {min(size.val_queries, q[VAL_SPLIT])} used to pick `best`), "
        f"{q[TEST_SPLIT]} test queries, "
        f"of which **{data['eval_queries']}** (spread evenly over the split) are evaluated for "
        f"every method. Training sees only the source cameras ({seen}); the unseen cameras are "
        f"{unseen}. Novel categories (never training targets): "
        f"{', '.join(data['novel_categories']) or 'none'}. Training seed {size.seed}. Each model "
        "is trained by `llmi3d_core.train.train` from its config/train recipe and evaluated by "
        "`llmi3d_core.evaluate` (exact oriented 3D IoU; Acc@k = IoU > k). Percentages.",
        "",
        "Verdict rule: Acc@0.25 decides (mIoU on a tie); 'within noise' when the difference is "
        "smaller than two standard errors of the paired per-query difference. With these small "
        "training budgets most differences are within noise: read the verdicts as a check of "
        "the pipeline, not as a replication.",
        "",
        *summary_lines(result),
        "",
        f"### Main comparison ({_family_note(result['main']['family'])})",
        "",
    ]
    main_rows = [rows[n] for n in result["main"]["rows"]]
    lines += _metrics_table(main_rows)
    lines += ["", "Acc@0.25 / mIoU per test subset:", ""]
    lines += _subset_table(main_rows)
    lines += ["", *_claim_lines(result["main"]["claims"], rows, result["main"]["family"])]
    if any(r["fallback_queries"] for r in main_rows):
        lines += [
            "",
            "'unusable': queries whose output did not hold a box (the wrong count of numbers, "
            "or a singular rotation); they were scored with the mean-box prior.",
        ]
    lines += [
        "",
        f"### Ablation ladders ({_family_note(result['ablation_family'])})",
        "",
    ]
    for ladder in result["ladders"]:
        ladder_rows = [rows[n] for n in ladder["rows"]]
        lines += [f"**{ladder['title']}**", ""]
        if len(ladder_rows) < 2:
            lines += [
                f"Not trained at size `{size.name}` (its configs were built and checked).",
                "",
            ]
            continue
        lines += _metrics_table(ladder_rows)
        lines += ["", *_claim_lines(ladder["claims"], rows, result["ablation_family"])]
        if ladder["skipped"]:
            lines.append(f"- not trained at size `{size.name}`: {', '.join(ladder['skipped'])}")
        lines.append("")
    return lines


def main() -> int:
    from run_benchmarks import SIZES

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
