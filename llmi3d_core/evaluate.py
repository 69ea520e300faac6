"""Evaluate a checkpoint or a baseline on a dataset split: `llmi3d eval`.

    llmi3d eval --checkpoint runs/smol_synth/best --data data/synth --split test
    llmi3d eval --checkpoint runs/smol_synth/best --data data/synth --split test --iou mono3dvg
    llmi3d eval --baseline mean-box --data data/synth --split test        # fitted on "train"
    llmi3d eval --baseline backproject --data data/synth --split test:novel

One prediction per query (the model's real inference path, `Predictor`, answers questions
itself), scored against the query's target box with llmi3d_core.metrics:

    Acc@0.25, Acc@0.5   fraction of queries with 3D IoU > 0.25 / 0.5 (strict)
    mIoU                mean 3D IoU
    depth, L, W, H      mean absolute error in metres (Z of the centre; box sizes)

for the whole split and per subset: query type (caption, question, box prompt, point prompt),
novel / base categories and camera domain (DatasetInfo.camera_groups "domain", and each camera
group). The IoU is named in the table: "exact" is the oriented 3D IoU (Omni3D's box3d_overlap),
"mono3dvg" the axis-aligned, yaw-blind variant of Mono3DVG's evaluator.

Outputs in --out (default: CHECKPOINT/eval/<split> or runs/eval/<baseline>/<split>):

    report.json         metrics of every subset + what was evaluated
    table.md            the markdown table (also printed)
    predictions.jsonl   one line a query: id, type, IoU, predicted and ground-truth boxes
    gallery/*.png       images with the ground-truth box (white) and the prediction (colour)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmi3d_core.data.format import Dataset, QueryRecord
from llmi3d_core.errors import InvalidInputError
from llmi3d_core.geometry import Box3D
from llmi3d_core.metrics import IOU_VARIANTS, box_ious, grounding_metrics

__all__ = [
    "IOU_DESCRIPTIONS",
    "QueryResult",
    "add_arguments",
    "evaluate_results",
    "markdown_table",
    "predict_with_baseline",
    "predict_with_model",
    "query_subsets",
    "run",
    "write_gallery",
]

IOU_DESCRIPTIONS = {
    "exact": "exact oriented 3D IoU (as Omni3D's box3d_overlap)",
    "mono3dvg": "Mono3DVG's axis-aligned, yaw-blind 3D IoU (only to compare with its tables)",
}
TYPE_NAMES = {
    "caption": "caption",
    "question": "question",
    "box_prompt": "box prompt",
    "point_prompt": "point prompt",
}
GT_COLOR = (255, 255, 255)
MIN_DIM_M = 1e-3  # predicted sizes are clamped to this so that a box can be scored


@dataclass
class QueryResult:
    """One evaluated query.

    Attributes:
        query: the query record.
        gt: its target box.
        pred: the predicted box.
        label: the predicted object phrase (or a baseline's label).
        score: the prediction's confidence in [0, 1].
        answer: the generated answer text ('' when none).
    """

    query: QueryRecord
    gt: Box3D
    pred: Box3D
    label: str
    score: float = 1.0
    answer: str = ""


def target_box(dataset: Dataset, query: QueryRecord) -> Box3D:
    """The ground-truth Box3D of a query's target object."""
    obj = dataset.target(query)
    return Box3D(obj.center_cam, obj.dims_lwh, obj.R_cam)


def load_rgb(path: Path) -> np.ndarray:
    """Read a picture as (H, W, 3) uint8 RGB.

    Raises:
        InvalidInputError: when OpenCV cannot read it.
    """
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InvalidInputError(f"could not read image {path}")
    return np.ascontiguousarray(image[:, :, ::-1])


# --------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------


def predict_with_baseline(
    baseline: Any, dataset: Dataset, queries: Sequence[QueryRecord]
) -> list[QueryResult]:
    """Run a fitted baseline (llmi3d_core.baselines) on every query."""
    results = []
    for query in queries:
        box, label = baseline.predict(dataset, query)
        results.append(QueryResult(query, target_box(dataset, query), box, label))
    return results


def predict_with_model(
    predictor: Any,
    dataset: Dataset,
    queries: Sequence[QueryRecord],
    *,
    progress: bool = True,
) -> list[QueryResult]:
    """Run a `Predictor` on every query, the queries of one image in one batch (one encoding).

    Prompts are passed in pixels of the image, as the ROS node would.
    """
    from tqdm import tqdm

    by_image: dict[str, list[QueryRecord]] = {}
    for query in queries:
        by_image.setdefault(query.image_id, []).append(query)
    results: dict[str, QueryResult] = {}
    with tqdm(total=len(queries), disable=not progress, desc="eval", unit="query") as bar:
        for image_id, group in by_image.items():
            image = load_rgb(dataset.image_path(image_id))
            K = dataset.image(image_id).K
            predictions = predictor.predict_batch(
                [image] * len(group),
                [K] * len(group),
                [q.text for q in group],
                [q.box_prompt for q in group],
                [q.point_prompt for q in group],
            )
            for query, (pred, *_) in zip(group, predictions, strict=True):
                box = Box3D(pred.center, np.maximum(pred.dims, MIN_DIM_M), pred.rotation)
                results[query.query_id] = QueryResult(
                    query, target_box(dataset, query), box, pred.label, pred.score, pred.answer
                )
            bar.update(len(group))
    return [results[q.query_id] for q in queries]


# --------------------------------------------------------------------------------------------
# Metrics per subset, table
# --------------------------------------------------------------------------------------------


def query_subsets(results: Sequence[QueryResult], dataset: Dataset) -> dict[str, list[int]]:
    """Subset name -> indices into `results`, in table order (empty subsets left out).

    Subsets: "all"; each query type; "novel categories" / "base categories" when the split has
    novel targets; "camera: <domain>" for each camera domain of dataset.json and
    "camera group: <name>" for each camera group, when there is more than one.
    """
    subsets: dict[str, list[int]] = {"all": list(range(len(results)))}
    for type_key, name in TYPE_NAMES.items():
        subsets[name] = [i for i, r in enumerate(results) if r.query.type == type_key]
    if any(r.query.novel_category for r in results):
        subsets["novel categories"] = [i for i, r in enumerate(results) if r.query.novel_category]
        subsets["base categories"] = [
            i for i, r in enumerate(results) if not r.query.novel_category
        ]
    groups = dataset.info.camera_groups
    domain_of = {g: str(d.get("domain")) for g, d in groups.items() if "domain" in d}
    domains = sorted({domain_of.get(r.query.camera_group, "") for r in results} - {""})
    if len(domains) > 1:
        for domain in domains:
            subsets[f"camera: {domain}"] = [
                i for i, r in enumerate(results) if domain_of.get(r.query.camera_group) == domain
            ]
    names = sorted({r.query.camera_group for r in results})
    if len(names) > 1:
        for name in names:
            subsets[f"camera group: {name}"] = [
                i for i, r in enumerate(results) if r.query.camera_group == name
            ]
    return {name: indices for name, indices in subsets.items() if indices}


def evaluate_results(
    results: Sequence[QueryResult], dataset: Dataset, *, iou: str = "exact"
) -> dict[str, Any]:
    """Metrics of every subset.

    Returns:
        {"iou": variant, "iou_description": text, "subsets": {name: grounding_metrics dict}}

    Raises:
        InvalidInputError: no results, or an unknown IoU variant.
    """
    if iou not in IOU_VARIANTS:
        raise InvalidInputError(f"unknown iou variant {iou!r}; available: {sorted(IOU_VARIANTS)}")
    if not results:
        raise InvalidInputError("no queries to evaluate (is the split empty?)")
    subsets = {}
    for name, indices in query_subsets(results, dataset).items():
        pred = [results[i].pred for i in indices]
        gt = [results[i].gt for i in indices]
        subsets[name] = grounding_metrics(pred, gt, iou=iou)
    return {"iou": iou, "iou_description": IOU_DESCRIPTIONS[iou], "subsets": subsets}


def markdown_table(report: dict[str, Any], title: str = "") -> str:
    """The report as a markdown table, with the IoU variant stated under it."""
    header = (
        "| subset | n | Acc@0.25 | Acc@0.5 | mIoU | depth err (m) | L err (m) | W err (m) "
        "| H err (m) |"
    )
    lines = [f"**{title}**", ""] if title else []
    lines += [header, "|" + "---|" * 9]
    for name, m in report["subsets"].items():
        lines.append(
            f"| {name} | {int(m['count'])} | {100 * m['acc@0.25']:.1f}% "
            f"| {100 * m['acc@0.5']:.1f}% | {100 * m['mean_iou']:.1f}% "
            f"| {m['depth_mae']:.3f} | {m['length_mae']:.3f} "
            f"| {m['width_mae']:.3f} | {m['height_mae']:.3f} |"
        )
    lines += ["", f"IoU: {report['iou']} = {report['iou_description']}."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------


def pick_gallery(results: Sequence[QueryResult], count: int) -> list[int]:
    """Up to `count` indices spread over query types (round robin, evenly spaced in each)."""
    by_type: dict[str, list[int]] = {}
    for index, result in enumerate(results):
        by_type.setdefault(result.query.type, []).append(index)
    per_type = {t: idx for t, idx in by_type.items()}
    chosen: list[int] = []
    quota = max(1, -(-count // max(1, len(per_type))))  # ceil
    for indices in per_type.values():
        take = min(quota, len(indices))
        positions = ((np.arange(take) + 0.5) * len(indices) / take).astype(int)  # centred
        chosen += [indices[p] for p in dict.fromkeys(positions.tolist())]
    return sorted(chosen)[:count]


def _banner(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """Stack a dark text banner above `image` (RGB uint8)."""
    import cv2

    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.5
    line_h = 18
    banner = np.full((line_h * len(lines) + 8, image.shape[1], 3), 32, dtype=np.uint8)
    for row, text in enumerate(lines):
        origin = (6, line_h * (row + 1))
        cv2.putText(banner, text, origin, font, scale, (235, 235, 235), 1, cv2.LINE_AA)
    return np.concatenate([banner, image], axis=0)


def render_result(
    result: QueryResult, image: np.ndarray, K: np.ndarray, iou_value: float
) -> np.ndarray:
    """One gallery picture: GT box in white, prediction in its label colour, query on top."""
    from llmi3d_core.visualize import draw_boxes, label_color_u8

    drawn = draw_boxes(image, [(result.gt.corners(), "")], K, colors=[GT_COLOR])
    pred_label = f"{textwrap.shorten(result.label, 28, placeholder='...')} {result.score:.2f}"
    drawn = draw_boxes(
        drawn, [(result.pred.corners(), pred_label)], K, colors=[label_color_u8(result.label)]
    )
    width_chars = max(40, image.shape[1] // 8)
    text = f"[{TYPE_NAMES.get(result.query.type, result.query.type)}] {result.query.text}"
    lines = textwrap.wrap(text, width_chars)[:3]
    stats = f"IoU {iou_value:.2f} | depth: truth {result.gt.center[2]:.2f} m, predicted "
    stats += f"{result.pred.center[2]:.2f} m | white: truth ({result.query.answer})"
    if result.answer:
        stats += f" | answer: {result.answer}"
    return _banner(drawn, [*lines, stats])


def write_gallery(
    results: Sequence[QueryResult],
    ious: np.ndarray,
    dataset: Dataset,
    out_dir: Path,
    count: int = 12,
) -> list[Path]:
    """Write up to `count` PNGs (see `render_result`) to out_dir; return their paths."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, index in enumerate(pick_gallery(results, count)):
        result = results[index]
        image = load_rgb(dataset.image_path(result.query.image_id))
        K = dataset.image(result.query.image_id).K
        picture = render_result(result, image, K, float(ious[index]))
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", result.query.query_id)
        path = out_dir / f"{rank:03d}_{safe}.png"
        cv2.imwrite(str(path), np.ascontiguousarray(picture[:, :, ::-1]))
        paths.append(path)
    return paths


def _box_json(box: Box3D) -> dict[str, Any]:
    return {
        "center": np.round(box.center, 4).tolist(),
        "dims_lwh": np.round(box.dims_lwh, 4).tolist(),
        "R": np.round(box.R, 5).tolist(),
    }


def write_predictions(results: Sequence[QueryResult], ious: np.ndarray, path: Path) -> None:
    """predictions.jsonl: one line a query."""
    with open(path, "w", encoding="utf-8") as handle:
        for result, value in zip(results, ious, strict=True):
            record = {
                "query_id": result.query.query_id,
                "type": result.query.type,
                "iou": round(float(value), 5),
                "label": result.label,
                "answer": result.answer,
                "score": round(float(result.score), 5),
                "pred": _box_json(result.pred),
                "gt": _box_json(result.gt),
            }
            handle.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------------
# Whole evaluation and CLI
# --------------------------------------------------------------------------------------------


def load_predictor(checkpoint: Path, device: str = "cpu", dtype: str | None = None) -> Any:
    """A Predictor for a model checkpoint.

    The run seed stored in the checkpoint is set before the model is rebuilt, so that parts
    that checkpoints reference instead of storing (the randomly initialised "tiny" LLM) come
    out as in training.
    """
    import torch

    from llmi3d_core.inference import Predictor
    from llmi3d_core.model.checkpoint import load_checkpoint, read_checkpoint_meta

    _, extra = read_checkpoint_meta(checkpoint)
    torch.manual_seed(int(extra.get("seed", 0)))
    return Predictor(load_checkpoint(checkpoint), device=device, dtype=dtype, cache_size=2)


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
        dataset: the dataset read with format.read_dataset.
        split: split spec (format.select_queries grammar), e.g. "test", "test:novel".
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
    from llmi3d_core.data.format import select_queries

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
    ious = box_ious([r.pred for r in results], [r.gt for r in results], iou=iou)
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
    what.add_argument("--checkpoint", type=Path, help="checkpoint directory (e.g. runs/x/best)")
    what.add_argument(
        "--baseline",
        help="evaluate a non-learned baseline instead: mean-box or backproject",
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset directory")
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
        help="dtype the model runs in: float32 (default), or bfloat16 / float16 with --device cuda",
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
    import os

    import torch

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


def run(args: argparse.Namespace) -> int:
    """Run `llmi3d eval`."""
    from functools import partial

    from llmi3d_core.baselines import (
        fit_baseline,
        is_baseline_dir,
        load_baseline,
        normalize_baseline_name,
    )
    from llmi3d_core.data.format import read_dataset, select_queries

    set_threads(args.threads)
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
        predict = partial(predict_with_model, predictor, progress=not args.no_progress)
        name = args.checkpoint.resolve().name
        source = {"name": f"LLMI3D {name}", "checkpoint": str(args.checkpoint)}
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
