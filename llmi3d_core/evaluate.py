"""Evaluate a checkpoint or a baseline on a dataset split: `llmi3d eval`.

    llmi3d eval --checkpoint runs/smol_synth/best --data data/synth --split test
    llmi3d eval --checkpoint runs/smol_synth/best --data data/synth --split test --iou mono3dvg
    llmi3d eval --baseline mean-box --data data/synth --split test        # fitted on "train"
    llmi3d eval --baseline backproject --data data/synth --split test:novel

Each query gets a list of predictions, best first (the model's real inference path,
`Predictor.answer_batch`, answers questions itself; an empty list means "not here"; the
baselines always give one box). A query has one target, none (a negative query) or several
(a multi-target query), and is scored with llmi3d_core.metrics.query_metrics:

    Acc@0.25, Acc@0.5   single-target queries: fraction whose FIRST box has 3D IoU > 0.25 / 0.5
    mIoU                mean 3D IoU of the first box (an empty answer counts 0)
    grounding           fraction whose first 2D box has IoU > 0.5 with the target's tight 2D box
    depth, L, W, H      mean absolute error in metres of the first box (Z of the centre; sizes),
                        over the single-target queries that got a box (empty_count: the others)
    not here            negative queries: fraction answered with no box
    multi P / R         multi-target queries: precision / recall of their boxes, matched one to
                        one (best score first), at 3D IoU > 0.25 and at 2D IoU > 0.5
    ECE                 expected calibration error of the score over every returned box

for the whole split and per subset: query type (caption, question, box prompt, point prompt:
single-target queries only, so these rows mean what they meant before negative and multi-target
queries existed), "negative" and "multi-target" (when the split has such queries), novel / base
categories and camera domain (DatasetInfo.camera_groups "domain", and each camera group); the
last ones hold every kind of query. The IoU is named in the table: "exact" is the oriented 3D
IoU (Omni3D's box3d_overlap), "mono3dvg" the axis-aligned, yaw-blind variant of Mono3DVG's
evaluator.

Outputs in --out (default: CHECKPOINT/eval/<split> or runs/eval/<baseline>/<split>):

    report.json         metrics of every subset + what was evaluated
    table.md            the markdown table (also printed)
    predictions.jsonl   one line a query: id, type, kind, IoU, every predicted and target box
    gallery/*.png       images with the target boxes (white) and every prediction (colour)

This module is the command and the whole run; eval_predict.py makes the predictions,
eval_report.py scores them per subset and writes the table, predictions.jsonl and the gallery.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

from llmi3d_core.baselines import (
    fit_baseline,
    is_baseline_dir,
    load_baseline,
    normalize_baseline_name,
)
from llmi3d_core.data.format import Dataset, QueryRecord
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.splits import select_queries
from llmi3d_core.default_model import default_test_data, ensure_default_model
from llmi3d_core.errors import InvalidInputError
from llmi3d_core.eval_predict import (
    MAX_RESULTS,
    QueryResult,
    load_predictor,
    predict_at_true_cells,
    predict_with_baseline,
    predict_with_model,
)
from llmi3d_core.eval_report import (
    IOU_DESCRIPTIONS,
    evaluate_results,
    first_ious,
    markdown_table,
    write_gallery,
    write_predictions,
)
from llmi3d_core.metrics import IOU_VARIANTS
from llmi3d_core.prediction import AnswerRule

__all__ = ["add_arguments", "run", "run_evaluation"]

DEFAULT_CHECKPOINT = "default"  # --checkpoint default: the embedded default model


def run_evaluation(
    dataset: Dataset,
    split: str,
    predict: Callable[[Dataset, list[QueryRecord]], list[QueryResult]],
    out_dir: Path,
    *,
    iou: str = "exact",
    gallery: int = 12,
    limit: int = 0,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict every query of `split`, score, and write report.json, table.md, the gallery.

    Args:
        dataset: the dataset read with reader.read_dataset.
        split: split spec (splits.select_queries grammar), e.g. "test", "test:novel".
        predict: (dataset, queries) -> results, e.g. a partial of `predict_with_model`.
        out_dir: where the outputs go (created).
        iou: "exact" or "mono3dvg".
        gallery: number of gallery PNGs (0: none).
        limit: evaluate only the first `limit` queries (0: all).
        source: what is evaluated (stored in report.json).

    Returns:
        The report dict (as written to report.json), with "table" (markdown).

    Raises:
        InvalidInputError: unknown split or IoU, or an empty split.
    """
    if iou not in IOU_VARIANTS:
        raise InvalidInputError(f"unknown iou variant {iou!r}; available: {sorted(IOU_VARIANTS)}")
    queries = select_queries(dataset, split)
    if limit:
        queries = queries[:limit]
    if not queries:
        raise InvalidInputError(f"split {split!r} of {dataset.root} has no queries")
    started = time.perf_counter()
    results = predict(dataset, queries)
    seconds = time.perf_counter() - started
    report = evaluate_results(results, dataset, iou=iou)
    ious = first_ious(results, iou=iou)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = (source or {}).get("name", "")
    report.update(
        data=str(dataset.root),
        split=split,
        source=source or {},
        predict_seconds=round(seconds, 3),
        queries_per_second=round(len(queries) / max(seconds, 1e-9), 3),
    )
    title = f"{name} on {dataset.root.name} / {split}" if name else f"{dataset.root.name} / {split}"
    report["table"] = markdown_table(report, title)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out_dir / "table.md").write_text(report["table"] + "\n", encoding="utf-8")
    write_predictions(results, ious, out_dir / "predictions.jsonl")
    if gallery:
        write_gallery(results, ious, dataset, out_dir / "gallery", gallery)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llmi3d eval`."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint directory (e.g. runs/x/best), or 'default': the embedded default model "
        "(trained and cached on first use, as the demo does)",
    )
    what.add_argument(
        "--baseline",
        help="evaluate a non-learned baseline instead: mean-box or backproject",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset directory; with --checkpoint default it may be left out: synthetic scenes "
        "of a seed the default recipe never trained on (made and cached on first use)",
    )
    parser.add_argument(
        "--split", default="test", help="split spec: test, val, test:novel, test@target, ..."
    )
    parser.add_argument(
        "--iou",
        choices=sorted(IOU_VARIANTS),
        default="exact",
        help="3D IoU behind Acc@k and mIoU: "
        + "; ".join(f"{k}: {v}" for k, v in IOU_DESCRIPTIONS.items())
        + " (default: exact)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    parser.add_argument("--gallery", type=int, default=12, help="gallery PNGs to draw (0: none)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N queries (0: all)")
    served = AnswerRule.SERVED
    rule = parser.add_argument_group(
        "answer rule",
        "which candidates a query gets (llmi3d_core.prediction.AnswerRule); default: the node's",
    )
    rule.add_argument(
        "--answer-all",
        action="store_true",
        help="every candidate, best first, never 'not here' (all three thresholds 0): how well "
        "the model localises when it must answer, like a baseline",
    )
    rule.add_argument(
        "--min-score",
        type=float,
        default=served.min_score,
        help="answers scoring below it are left out (an empty answer is 'not here'); default: "
        "the node's, %(default)s",
    )
    rule.add_argument(
        "--min-ratio-to-nothing",
        type=float,
        default=None,
        help="the best box is answered only when it scores at least this many times the "
        "probability that nothing matches; default: the node's, the model's own (fitted on its "
        f"validation split) or else {served.min_ratio_to_nothing}",
    )
    rule.add_argument(
        "--min-score-others",
        type=float,
        default=served.min_score_others,
        help="boxes after the best need at least this score; default: the node's, %(default)s",
    )
    parser.add_argument(
        "--max-results", type=int, default=MAX_RESULTS, help="answers kept per query"
    )
    parser.add_argument(
        "--true-cells",
        action="store_true",
        help="upper bound of pointing: read the heads at each target's own cell instead of "
        "where the model points (single-target queries only)",
    )
    parser.add_argument(
        "--ground-plane",
        action="store_true",
        help="stand every box on the floor given by each image's camera height and pitch "
        "(camera_height_m, camera_pitch_deg in the image record, as the synthetic generator "
        "writes them): what a robot with a calibrated camera gets (llmi3d_core.ground_plane)",
    )
    parser.add_argument("--fit-split", default="train", help="split a --baseline is fitted on")
    parser.add_argument(
        "--baseline-depth",
        choices=("category_mean", "height"),
        default="category_mean",
        help="backproject: depth from the category mean, or pinhole from the category height",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype",
        default=None,
        help="dtype the model runs in: float32 (default); bfloat16 (faster on a CPU with "
        "bfloat16 units, slightly less accurate: BENCHMARKS.md); float16 with --device cuda",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default 0: torch's default, one per core); on a small CPU "
        "shared with other jobs, 1 can be much faster",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def set_threads(threads: int) -> None:
    """Set torch's CPU threads (0: keep its default) and log how many it uses, on stderr.

    Threads that outnumber the free cores wait on each other: one `llmi3d eval` on a busy
    2-core machine took 8.3 s a query instead of 0.15 s. The log line makes that visible.

    Raises:
        InvalidInputError: a negative count.
    """
    if threads < 0:
        raise InvalidInputError(f"--threads must be >= 0 (0: torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)
    source = "--threads" if threads else "torch's default; set --threads"
    print(
        f"llmi3d eval: torch uses {torch.get_num_threads()} CPU thread(s) ({source}); "
        f"{os.cpu_count()} logical cores here",
        file=sys.stderr,
    )


def answer_rule(args: argparse.Namespace, fitted_ratio: float | None = None) -> AnswerRule:
    """The AnswerRule of the command line for a model with this fitted ratio (None: none).

    Raises:
        InvalidInputError: a threshold out of range, or --answer-all with a threshold.
    """
    if not args.answer_all:
        ratio = args.min_ratio_to_nothing
        if ratio is None:
            ratio = AnswerRule.served(fitted_ratio).min_ratio_to_nothing
        return AnswerRule(args.min_score, ratio, args.min_score_others)
    served = AnswerRule.SERVED
    given = [
        flag
        for flag, value, default in (
            ("--min-score", args.min_score, served.min_score),
            ("--min-ratio-to-nothing", args.min_ratio_to_nothing, None),
            ("--min-score-others", args.min_score_others, served.min_score_others),
        )
        if value != default
    ]
    if given:
        raise InvalidInputError(f"--answer-all sets every threshold to 0; drop {', '.join(given)}")
    return AnswerRule()


def run(args: argparse.Namespace) -> int:
    """Run `llmi3d eval`."""
    set_threads(args.threads)
    rule = answer_rule(args)  # bad thresholds fail before a model loads
    if args.checkpoint is not None and str(args.checkpoint) == DEFAULT_CHECKPOINT:
        args.checkpoint = ensure_default_model()
        if args.data is None:
            args.data = default_test_data(progress=not args.no_progress)
    if args.data is None:
        raise InvalidInputError("--data DIR is required (only --checkpoint default has one)")
    if args.ground_plane and (args.baseline is not None or args.true_cells):
        raise InvalidInputError("--ground-plane moves the model's answers: not with --baseline or "
                                "--true-cells")  # fmt: skip
    dataset = read_dataset(args.data)
    predict: Callable[[Dataset, list[QueryRecord]], list[QueryResult]]
    if args.baseline is not None:
        name = normalize_baseline_name(args.baseline)
        fit_queries = select_queries(dataset, args.fit_split)
        baseline = fit_baseline(name, dataset, fit_queries, depth=args.baseline_depth)
        predict = partial(predict_with_baseline, baseline)
        source = {"name": name, "baseline": name, "fit_split": args.fit_split}
        out = args.out or Path("runs") / "eval" / name / _safe(args.split)
    elif is_baseline_dir(args.checkpoint):
        baseline = load_baseline(args.checkpoint)
        predict = partial(predict_with_baseline, baseline)
        source = {"name": baseline.name, "checkpoint": str(args.checkpoint)}
        out = args.out or args.checkpoint / "eval" / _safe(args.split)
    else:
        predictor = load_predictor(args.checkpoint, args.device, args.dtype)
        rule = answer_rule(args, predictor.model.fitted_answer_ratio)
        predict = partial(
            predict_with_model,
            predictor,
            progress=not args.no_progress,
            max_results=args.max_results,
            rule=rule,
            ground_plane=args.ground_plane,
        )
        if args.true_cells:
            predict = partial(predict_at_true_cells, predictor, progress=not args.no_progress)
        name = args.checkpoint.resolve().name
        source = {"name": f"LLMI3D {name}", "checkpoint": str(args.checkpoint)}
        if args.true_cells:
            source["name"] += " (heads at the true cell)"
        elif args.ground_plane:
            source["name"] += " (camera's ground plane given)"
            source["ground_plane"] = "from the image records"
        if not args.true_cells:
            source["answer_rule"] = asdict(rule)
        out = args.out or args.checkpoint / "eval" / _safe(args.split)
    report = run_evaluation(
        dataset,
        args.split,
        predict,
        out,
        iou=args.iou,
        gallery=args.gallery,
        limit=args.limit,
        source=source,
    )
    print(report["table"])
    print(f"\nwrote {out}/report.json, table.md, predictions.jsonl, gallery/", file=sys.stderr)
    return 0
