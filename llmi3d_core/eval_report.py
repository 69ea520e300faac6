"""The report of an evaluation and the files `llmi3d eval` writes besides report.json.

Metrics of every subset of the queries (`evaluate_results`, the report), the markdown table of
them (table.md), one JSON line a query (predictions.jsonl) and the gallery of drawn results
(gallery/*.png).
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from llmi3d_core.data.format import Dataset
from llmi3d_core.data.images import load_rgb
from llmi3d_core.errors import InvalidInputError
from llmi3d_core.eval_predict import QueryResult
from llmi3d_core.geometry import Box3D
from llmi3d_core.iou import box2d_area
from llmi3d_core.metrics import IOU_VARIANTS, box_ious, query_metrics
from llmi3d_core.visualize import draw_boxes, label_color_u8

__all__ = [
    "IOU_DESCRIPTIONS",
    "base_subset",
    "evaluate_results",
    "first_ious",
    "markdown_table",
    "query_subsets",
    "write_gallery",
    "write_predictions",
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
KIND_NAMES = {"negative": "negative", "multi": "multi-target"}
# Single-target queries by their target's size and distance, in the standard buckets: COCO's 2D
# box areas in pixels of the input image (small < 32^2, medium < 96^2, large) and Omni3D's depth
# ranges of AP3D-N / M / F (near < 10 m, medium < 35 m, far); a value on a bound goes to the
# upper bucket (COCO and Omni3D count it in both). On the default model the detector boxes 64 %
# of small test targets against 91 % of large ones, always answering: these rows show where a
# model loses its targets.
SIZE_BUCKETS = (("small", 32.0**2), ("medium", 96.0**2), ("large", float("inf")))
DEPTH_BUCKETS = (("near", 10.0), ("medium", 35.0), ("far", float("inf")))
SIZE_NAMES = {
    "small": "2D size: small (< 32² px)",
    "medium": "2D size: medium (32²-96² px)",
    "large": "2D size: large (≥ 96² px)",
}
DEPTH_NAMES = {
    "near": "depth: near (< 10 m)",
    "medium": "depth: medium (10-35 m)",
    "far": "depth: far (≥ 35 m)",
}
GT_COLOR = (255, 255, 255)


# --------------------------------------------------------------------------------------------
# Metrics per subset (report.json)
# --------------------------------------------------------------------------------------------


def bucket(value: float, buckets: Sequence[tuple[str, float]]) -> str:
    """The name of the first of `buckets` (name, upper bound) whose bound exceeds `value`."""
    return next(name for name, upper in buckets if value < upper)


def base_subset(type_name: str) -> str:
    """The subset of a query type's single-target queries whose target's category was trained."""
    return f"{type_name}, base categories"


def query_subsets(results: Sequence[QueryResult], dataset: Dataset) -> dict[str, list[int]]:
    """Subset name -> indices into `results`, in table order (empty subsets left out).

    Subsets: "all"; each query type, of single-target queries only (so that these rows keep
    their meaning when a split also has negative and multi-target queries); "negative" and
    "multi-target"; single-target queries by their target's 2D size and depth (SIZE_NAMES,
    DEPTH_NAMES); "novel categories" / "base categories" when the split has novel
    queries, and then each query type's row of base categories only (`base_subset`);
    "camera: <domain>" for each camera domain of dataset.json and
    "camera group: <name>" for each camera group, when there is more than one. "all", the
    category and the camera subsets hold every kind of query.
    """
    subsets: dict[str, list[int]] = {"all": list(range(len(results)))}
    for type_key, name in TYPE_NAMES.items():
        subsets[name] = [
            i for i, r in enumerate(results) if r.query.type == type_key and r.kind == "single"
        ]
    for kind, name in KIND_NAMES.items():
        subsets[name] = [i for i, r in enumerate(results) if r.kind == kind]
    single = [i for i, r in enumerate(results) if r.kind == "single"]
    sizes = {i: bucket(box2d_area(results[i].targets[0].box2d), SIZE_BUCKETS) for i in single}
    for key, name in SIZE_NAMES.items():
        subsets[name] = [i for i in single if sizes[i] == key]
    depths = {i: bucket(float(results[i].targets[0].box.center[2]), DEPTH_BUCKETS) for i in single}
    for key, name in DEPTH_NAMES.items():
        subsets[name] = [i for i in single if depths[i] == key]
    if any(r.query.novel_category for r in results):
        subsets["novel categories"] = [i for i, r in enumerate(results) if r.query.novel_category]
        subsets["base categories"] = [
            i for i, r in enumerate(results) if not r.query.novel_category
        ]
        for name in TYPE_NAMES.values():  # what naming can reach: no query of an unseen name
            subsets[base_subset(name)] = [
                i for i in subsets[name] if not results[i].query.novel_category
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
        {"iou": variant, "iou_description": text, "subsets": {name: query_metrics dict}};
        each subset has "count" (its queries), the single-target keys "acc@0.25", "acc@0.5",
        "mean_iou", "grounding_acc", "depth_mae", "length_mae", "width_mae", "height_mae",
        "single_count", "empty_count", the negative keys "negative_count", "not_here_rate",
        the multi-target keys "multi_count", "multi_targets", "multi_predictions",
        "multi_precision@0.25", "multi_recall@0.25", "multi_precision_2d@0.5",
        "multi_recall_2d@0.5", and "predictions", "ece", "target_recall_2d@0.5" (see
        llmi3d_core.metrics); None where a subset has nothing to average.

    Raises:
        InvalidInputError: no results, or an unknown IoU variant.
    """
    if iou not in IOU_VARIANTS:
        raise InvalidInputError(f"unknown iou variant {iou!r}; available: {sorted(IOU_VARIANTS)}")
    if not results:
        raise InvalidInputError("no queries to evaluate (is the split empty?)")
    subsets = {}
    for name, indices in query_subsets(results, dataset).items():
        subsets[name] = query_metrics(
            [results[i].answers for i in indices], [results[i].targets for i in indices], iou=iou
        )
    return {"iou": iou, "iou_description": IOU_DESCRIPTIONS[iou], "subsets": subsets}


def first_ious(results: Sequence[QueryResult], *, iou: str = "exact") -> list[float | None]:
    """Per query, the 3D IoU of its first box with its single target.

    0 for a single-target query answered with no box; None for negative and multi-target ones.
    """
    out: list[float | None] = [None] * len(results)
    scored = [k for k, r in enumerate(results) if r.kind == "single" and r.answers]
    for k, r in enumerate(results):
        if r.kind == "single" and not r.answers:
            out[k] = 0.0
    if scored:
        values = box_ious(
            [results[k].answers[0].box for k in scored],
            [results[k].targets[0].box for k in scored],
            iou=iou,
        )
        for k, value in zip(scored, values, strict=True):
            out[k] = float(value)
    return out


# --------------------------------------------------------------------------------------------
# table.md and predictions.jsonl
# --------------------------------------------------------------------------------------------


def _pct(value: float | int | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _degrees(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _metres(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(report: dict[str, Any], title: str = "") -> str:
    """The report as a markdown table, with the IoU variant and the metric notes under it.

    The "not here" and multi-target columns appear only when some subset has such queries.
    """
    subsets = report["subsets"]
    negatives = any(m.get("negative_count") for m in subsets.values())
    multi = any(m.get("multi_count") for m in subsets.values())
    header = (
        "| subset | n | Acc@0.25 | Acc@0.5 | mIoU | grounding | depth err (m) | L err (m) "
        "| W err (m) | H err (m) | rot err (deg) |"
    )
    columns = 11
    if negatives:
        header += " not here |"
        columns += 1
    if multi:
        header += " multi P / R (3D@0.25) | multi P / R (2D@0.5) |"
        columns += 2
    header += " targets boxed | ECE |"
    columns += 2
    lines = [f"**{title}**", ""] if title else []
    lines += [header, "|" + "---|" * columns]
    for name, m in subsets.items():
        row = (
            f"| {name} | {int(m['count'])} | {_pct(m['acc@0.25'])} | {_pct(m['acc@0.5'])} "
            f"| {_pct(m['mean_iou'])} | {_pct(m.get('grounding_acc'))} "
            f"| {_metres(m['depth_mae'])} | {_metres(m['length_mae'])} "
            f"| {_metres(m['width_mae'])} | {_metres(m['height_mae'])} "
            f"| {_degrees(m.get('rotation_err_deg'))} |"
        )
        if negatives:
            row += f" {_pct(m.get('not_here_rate'))} |"
        if multi:
            for suffix in ("@0.25", "_2d@0.5"):
                precision = m.get(f"multi_precision{suffix}")
                recall = m.get(f"multi_recall{suffix}")
                row += (
                    " - |" if precision is None and recall is None
                    else f" {_pct(precision)} / {_pct(recall)} |"
                )  # fmt: skip
        row += f" {_pct(m.get('target_recall_2d@0.5'))} |"
        ece = m.get("ece")
        row += " - |" if ece is None else f" {ece:.3f} |"
        lines.append(row)
    lines += ["", f"IoU: {report['iou']} = {report['iou_description']}."]
    notes = (
        "Acc, mIoU, grounding (2D IoU > 0.5 with the target) and the errors: single-target "
        "queries, first box"
    )
    empty = int(subsets.get("all", {}).get("empty_count") or 0)
    if empty:
        notes += f" ({empty} answered with no box: IoU 0, left out of the errors)"
    notes += (
        ". Targets boxed: targets of all queries that a returned box matches (2D IoU > 0.5)."
        " ECE: calibration of the score over every returned box."
    )
    if negatives:
        notes += " Not here: negative queries answered with no box."
    if multi:
        notes += " Multi P / R: boxes of multi-target queries matched one to one to targets."
    lines.append(notes)
    return "\n".join(lines)


def _box_json(box: Box3D) -> dict[str, Any]:
    return {
        "center": np.round(box.center, 4).tolist(),
        "dims_lwh": np.round(box.dims_lwh, 4).tolist(),
        "R": np.round(box.R, 5).tolist(),
    }


def write_predictions(
    results: Sequence[QueryResult], ious: Sequence[float | None], path: Path
) -> None:
    """predictions.jsonl: one line a query.

    Keys: query_id, type, kind ("single", "negative", "multi"), iou (first box, single-target
    queries; else null), label / answer / score / pred of the first answer (null when none),
    gt (the single target, else null), and the lists "predictions" (every answer: label,
    score, box2d and its 3D box) and "targets" (object_id, box2d, 3D box).
    """
    with open(path, "w", encoding="utf-8") as handle:
        for result, value in zip(results, ious, strict=True):
            first = result.answers[0] if result.answers else None
            record = {
                "query_id": result.query.query_id,
                "type": result.query.type,
                "kind": result.kind,
                "iou": None if value is None else round(float(value), 5),
                "label": first.label if first else None,
                "answer": first.answer if first else None,
                "score": round(float(first.score), 5) if first else None,
                "pred": _box_json(first.box) if first else None,
                "gt": _box_json(result.targets[0].box) if result.kind == "single" else None,
                "predictions": [
                    {
                        "label": a.label,
                        "score": round(float(a.score), 5),
                        "box2d": np.round(a.box2d, 2).tolist(),
                        **_box_json(a.box),
                    }
                    for a in result.answers
                ],
                "targets": [
                    {
                        "object_id": object_id,
                        "box2d": np.round(t.box2d, 2).tolist(),
                        **_box_json(t.box),
                    }
                    for object_id, t in zip(
                        result.query.target_object_ids, result.targets, strict=True
                    )
                ],
            }
            handle.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------


def _gallery_key(result: QueryResult) -> str:
    """Query type for single-target queries, else the kind: what the gallery spreads over."""
    return result.query.type if result.kind == "single" else result.kind


def pick_gallery(results: Sequence[QueryResult], count: int) -> list[int]:
    """Up to `count` indices spread over query types and kinds (round robin, evenly spaced)."""
    by_type: dict[str, list[int]] = {}
    for index, result in enumerate(results):
        by_type.setdefault(_gallery_key(result), []).append(index)
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
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.5
    line_h = 18
    banner = np.full((line_h * len(lines) + 8, image.shape[1], 3), 32, dtype=np.uint8)
    for row, text in enumerate(lines):
        origin = (6, line_h * (row + 1))
        cv2.putText(banner, text, origin, font, scale, (235, 235, 235), 1, cv2.LINE_AA)
    return np.concatenate([banner, image], axis=0)


def render_result(
    result: QueryResult, image: np.ndarray, K: np.ndarray, iou_value: float | None
) -> np.ndarray:
    """One gallery picture: target boxes in white, the predictions in their label colours.

    A single-target query is scored by its first box, so only that one is drawn (under
    `--answer-all` the others would bury the picture). The banner gives the query, then how it
    went: IoU and depth of the first box for a single-target query, the counts for a
    multi-target one, and "not here" for an empty answer.
    """
    truth = [(t.box.corners(), "") for t in result.targets]
    drawn = draw_boxes(image, truth, K, colors=[GT_COLOR] * len(truth))
    shown = result.answers[:1] if result.kind == "single" else result.answers
    boxes = [
        (a.box.corners(), f"{textwrap.shorten(a.label, 28, placeholder='...')} {a.score:.2f}")
        for a in shown
    ]
    # one call: later labels move off earlier ones
    drawn = draw_boxes(drawn, boxes, K, colors=[label_color_u8(a.label) for a in shown])
    width_chars = max(40, image.shape[1] // 8)
    kind = TYPE_NAMES.get(result.query.type, result.query.type)
    if result.kind != "single":
        kind += f", {KIND_NAMES[result.kind]}"
    lines = textwrap.wrap(f"[{kind}] {result.query.text}", width_chars)[:3]
    predicted = (
        "predicted: not here (no box)" if not result.answers
        else f"predicted: {len(result.answers)} box(es)"
    )  # fmt: skip
    if result.kind == "negative":
        stats = f"truth: not here (no {result.query.answer}) | {predicted}"
    elif result.kind == "multi":
        stats = f"white: {len(result.targets)} targets ({result.query.answer}) | {predicted}"
    elif result.answers:
        first = result.answers[0].box
        stats = f"IoU {iou_value or 0.0:.2f} | depth: truth {result.targets[0].box.center[2]:.2f} m"
        stats += f", predicted {first.center[2]:.2f} m | white: truth ({result.query.answer})"
    else:
        stats = f"{predicted} | white: truth ({result.query.answer})"
    if len(shown) < len(result.answers):
        stats += f" | {len(result.answers) - len(shown)} more box(es) not drawn"
    if result.answer:
        stats += f" | answer: {result.answer}"
    return _banner(drawn, [*lines, stats])


def write_gallery(
    results: Sequence[QueryResult],
    ious: Sequence[float | None],
    dataset: Dataset,
    out_dir: Path,
    count: int = 12,
) -> list[Path]:
    """Write up to `count` PNGs (see `render_result`) to out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, index in enumerate(pick_gallery(results, count)):
        result = results[index]
        image = load_rgb(dataset.image_path(result.query.image_id))
        K = dataset.image(result.query.image_id).K
        picture = render_result(result, image, K, ious[index])
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", result.query.query_id)
        path = out_dir / f"{rank:03d}_{safe}.png"
        cv2.imwrite(str(path), np.ascontiguousarray(picture[:, :, ::-1]))
        paths.append(path)
    return paths
