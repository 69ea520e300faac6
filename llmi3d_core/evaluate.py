"""Evaluate a checkpoint or a baseline on a dataset split: `llmi3d eval`.

    llmi3d eval --checkpoint runs/smol_synth/best --data data/synth --split test
    llmi3d eval --checkpoint runs/smol_synth/best --data data/synth --split test --iou mono3dvg
    llmi3d eval --baseline mean-box --data data/synth --split test        # fitted on "train"
    llmi3d eval --baseline backproject --data data/synth --split test:novel

Each query gets a list of predictions, best first (the model's real inference path,
`Predictor.predict_batch`, answers questions itself; an empty list means "not here"; the
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
from llmi3d_core.data.images import load_rgb
from llmi3d_core.errors import InvalidInputError
from llmi3d_core.geometry import Box3D
from llmi3d_core.metrics import IOU_VARIANTS, ScoredBox, box_ious, query_metrics
from llmi3d_core.prediction import DEFAULT_MIN_SCORE

__all__ = [
    "IOU_DESCRIPTIONS",
    "Answer",
    "QueryResult",
    "add_arguments",
    "evaluate_results",
    "first_ious",
    "markdown_table",
    "predict_with_baseline",
    "predict_with_model",
    "projected_box2d",
    "query_subsets",
    "run",
    "write_gallery",
]

MAX_RESULTS = 10  # answers kept per query ("all the chairs" needs several)
DEFAULT_CHECKPOINT = "default"  # --checkpoint default: the embedded default model
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
GT_COLOR = (255, 255, 255)
MIN_DIM_M = 1e-3  # predicted sizes are clamped to this so that a box can be scored
NEAR_PLANE_M = 0.05  # box edges are cut here before projecting a 2D box


@dataclass
class Answer:
    """One returned prediction of a query.

    Attributes:
        box: the predicted 3D box.
        box2d: (4,) [x1, y1, x2, y2] px of the image (the model's 2D box; for a baseline the
            projection of its 3D box).
        score: confidence in [0, 1].
        label: the predicted object phrase (or a baseline's label).
        answer: the generated answer text ('' when none).
    """

    box: Box3D
    box2d: np.ndarray
    score: float
    label: str
    answer: str = ""


@dataclass
class QueryResult:
    """One evaluated query: its targets and its answers (best first; [] is "not here").

    The properties keep the single-target view that callers written before lists existed use
    (`pred`, `gt`, `label`, `score`, `answer`): the first answer and the one target.

    Attributes:
        query: the query record.
        targets: one ScoredBox a target (its 3D box and tight 2D box), [] for a negative query.
        answers: the predictions, best first.
    """

    query: QueryRecord
    targets: list[ScoredBox]
    answers: list[Answer]

    @property
    def kind(self) -> str:
        """The query's kind by its number of targets: "single", "negative" or "multi"."""
        count = len(self.targets)
        return "single" if count == 1 else "negative" if count == 0 else "multi"

    @property
    def gt(self) -> Box3D:
        """The target box of a single-target query.

        Raises:
            InvalidInputError: for a negative or multi-target query.
        """
        if len(self.targets) != 1:
            raise InvalidInputError(
                f"query {self.query.query_id!r} has {len(self.targets)} targets; .gt is for "
                "single-target queries, use .targets"
            )
        return self.targets[0].box

    @property
    def pred(self) -> Box3D | None:
        """The first predicted box, None when the answer is "not here"."""
        return self.answers[0].box if self.answers else None

    @property
    def label(self) -> str:
        """The first answer's label ('' when none)."""
        return self.answers[0].label if self.answers else ""

    @property
    def score(self) -> float:
        """The first answer's score (0 when none)."""
        return self.answers[0].score if self.answers else 0.0

    @property
    def answer(self) -> str:
        """The first answer's generated text ('' when none)."""
        return self.answers[0].answer if self.answers else ""


def target_box(dataset: Dataset, query: QueryRecord) -> Box3D:
    """The ground-truth Box3D of a single-target query's target object."""
    obj = dataset.target(query)
    return Box3D(obj.center_cam, obj.dims_lwh, obj.R_cam)


def target_boxes(dataset: Dataset, query: QueryRecord) -> list[ScoredBox]:
    """Every target of a query as (3D box, tight 2D box), [] for a negative query."""
    return [
        ScoredBox(Box3D(o.center_cam, o.dims_lwh, o.R_cam), np.asarray(o.bbox2D_tight, float))
        for o in dataset.targets(query)
    ]


def projected_box2d(box: Box3D, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """The 2D box [x1, y1, x2, y2] px of a 3D box's projection, clipped to the image.

    Edges are cut at a near plane first, so a box reaching behind the camera still gives the
    box of its visible part; a box wholly behind the camera gives a zero-area box.
    """
    from llmi3d_core.visualize import BOX3D_EDGES

    corners = box.corners()  # (8, 3)
    points = []
    for i, j in BOX3D_EDGES:
        p, q = corners[i], corners[j]
        if p[2] < NEAR_PLANE_M and q[2] < NEAR_PLANE_M:
            continue
        if p[2] < NEAR_PLANE_M or q[2] < NEAR_PLANE_M:
            cut = p + (NEAR_PLANE_M - p[2]) / (q[2] - p[2]) * (q - p)
            p, q = (cut, q) if p[2] < NEAR_PLANE_M else (p, cut)
        points += [p, q]
    if not points:
        return np.zeros(4)
    uvw = np.stack(points) @ np.asarray(K, dtype=np.float64).T  # (M, 3)
    uv = uvw[:, :2] / uvw[:, 2:3]  # (M, 2)
    lo = np.clip(uv.min(axis=0), -0.5, [width - 0.5, height - 0.5])
    hi = np.clip(uv.max(axis=0), -0.5, [width - 0.5, height - 0.5])
    return np.concatenate([lo, hi])


# --------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------


def predict_with_baseline(
    baseline: Any, dataset: Dataset, queries: Sequence[QueryRecord]
) -> list[QueryResult]:
    """Run a fitted baseline (llmi3d_core.baselines) on every query: one box each, score 1.

    The baselines never answer "not here"; their 2D box is the projection of their 3D box.
    """
    results = []
    for query in queries:
        box, label = baseline.predict(dataset, query)
        image = dataset.image(query.image_id)
        box2d = projected_box2d(box, image.K, image.width, image.height)
        answers = [Answer(box, box2d, 1.0, label)]
        results.append(QueryResult(query, target_boxes(dataset, query), answers))
    return results


def _answer(prediction: Any, K: np.ndarray, width: int, height: int) -> Answer:
    """An Answer from a prediction.Prediction (sizes clamped so that the box can be scored)."""
    box = Box3D(prediction.center, np.maximum(prediction.dims, MIN_DIM_M), prediction.rotation)
    box2d = getattr(prediction, "box2d", None)
    if box2d is None:
        box2d = projected_box2d(box, K, width, height)
    return Answer(
        box,
        np.asarray(box2d, dtype=np.float64),
        float(prediction.score),
        prediction.label,
        prediction.answer,
    )


def predict_with_model(
    predictor: Any,
    dataset: Dataset,
    queries: Sequence[QueryRecord],
    *,
    progress: bool = True,
    max_results: int = MAX_RESULTS,
    min_score: float | None = None,
) -> list[QueryResult]:
    """Run a `Predictor` on every query, the queries of one image in one batch (one encoding).

    Every prediction the predictor returns for a query is kept, in its order (best first); an
    empty list is the answer "not here". Prompts are passed in pixels of the image, as the ROS
    node would. `min_score` None takes the node's default (prediction.DEFAULT_MIN_SCORE).
    """
    from tqdm import tqdm

    by_image: dict[str, list[QueryRecord]] = {}
    for query in queries:
        by_image.setdefault(query.image_id, []).append(query)
    results: dict[str, QueryResult] = {}
    with tqdm(total=len(queries), disable=not progress, desc="eval", unit="query") as bar:
        for image_id, group in by_image.items():
            image = load_rgb(dataset.image_path(image_id))
            record = dataset.image(image_id)
            predictions = predictor.predict_batch(
                [image] * len(group),
                [record.K] * len(group),
                [q.text for q in group],
                [q.box_prompt for q in group],
                [q.point_prompt for q in group],
                max_results=max_results,
                min_score=DEFAULT_MIN_SCORE if min_score is None else min_score,
            )
            for query, listed in zip(group, predictions, strict=True):
                answers = [_answer(p, record.K, record.width, record.height) for p in listed]
                results[query.query_id] = QueryResult(query, target_boxes(dataset, query), answers)
            bar.update(len(group))
    return [results[q.query_id] for q in queries]


def predict_at_true_cells(
    predictor: Any,
    dataset: Dataset,
    queries: Sequence[QueryRecord],
    *,
    progress: bool = True,
) -> list[QueryResult]:
    """The upper bound of pointing: the dense heads read at each target's own cell.

    Every single-target query is answered by the heads at the cell holding its target's
    projected centre, with score 1: what a perfect pointer would reach with this detector. The
    gap to `predict_with_model` is the cost of pointing at the wrong object. Negative and
    multi-target queries get no answer.
    """
    import torch
    from tqdm import tqdm

    from llmi3d_core.geometry import project
    from llmi3d_core.model.decode import decode_boxes
    from llmi3d_core.model.inputs import prepare_inputs

    model = predictor.model
    by_image: dict[str, list[QueryRecord]] = {}
    for query in queries:
        by_image.setdefault(query.image_id, []).append(query)
    results: dict[str, QueryResult] = {}
    with (
        tqdm(total=len(queries), disable=not progress, desc="eval (true cells)") as bar,
        torch.no_grad(),
    ):
        for image_id, group in by_image.items():
            record = dataset.image(image_id)
            inputs = prepare_inputs(load_rgb(dataset.image_path(image_id)), record.K, model.config)
            K = torch.as_tensor(inputs.K, dtype=torch.float32, device=model.device)[None]
            size = torch.as_tensor(inputs.letterbox.canvas_size, dtype=torch.float32)[None]
            features = model.image_side(inputs.image_hr[None], K, size)
            grid = model._grid(features.hr_map, features.image_size)
            for query in group:
                answers = []
                if len(query.target_object_ids) == 1:
                    target = dataset.targets(query)[0]
                    centre = project(target.center_cam, inputs.K)
                    cell = grid.cell_of(torch.as_tensor(centre, dtype=torch.float32)[None, None])
                    cands = model.candidates(
                        features.hr_map, features.dense, features.K, features.image_size, cell
                    )
                    outputs = {k: v[:, 0].float() for k, v in cands.outputs.items()}
                    boxes = decode_boxes(outputs, features.K, features.image_size, model.config)
                    box = Box3D(
                        boxes["center"][0].double().cpu().numpy(),
                        np.maximum(boxes["dims"][0].double().cpu().numpy(), MIN_DIM_M),
                        boxes["R"][0].double().cpu().numpy(),
                    )
                    box2d = inputs.letterbox.boxes_to_image(
                        boxes["box2d_px"][0].double().cpu().numpy()
                    )
                    answers.append(Answer(box, box2d, 1.0, target.category_name, ""))
                results[query.query_id] = QueryResult(query, target_boxes(dataset, query), answers)
                bar.update(1)
    return [results[q.query_id] for q in queries]


# --------------------------------------------------------------------------------------------
# Metrics per subset, table
# --------------------------------------------------------------------------------------------


def query_subsets(results: Sequence[QueryResult], dataset: Dataset) -> dict[str, list[int]]:
    """Subset name -> indices into `results`, in table order (empty subsets left out).

    Subsets: "all"; each query type, of single-target queries only (so that these rows keep
    their meaning when a split also has negative and multi-target queries); "negative" and
    "multi-target"; "novel categories" / "base categories" when the split has novel
    queries; "camera: <domain>" for each camera domain of dataset.json and
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
        {"iou": variant, "iou_description": text, "subsets": {name: query_metrics dict}};
        each subset has "count" (its queries), the single-target keys "acc@0.25", "acc@0.5",
        "mean_iou", "grounding_acc", "depth_mae", "length_mae", "width_mae", "height_mae",
        "single_count", "empty_count", the negative keys "negative_count", "not_here_rate",
        the multi-target keys "multi_count", "multi_targets", "multi_predictions",
        "multi_precision@0.25", "multi_recall@0.25", "multi_precision_2d@0.5",
        "multi_recall_2d@0.5", and "predictions", "ece" (see llmi3d_core.metrics); None where
        a subset has nothing to average.

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
    header += " ECE |"
    columns += 1
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
    notes += ". ECE: calibration of the score over every returned box."
    if negatives:
        notes += " Not here: negative queries answered with no box."
    if multi:
        notes += " Multi P / R: boxes of multi-target queries matched one to one to targets."
    lines.append(notes)
    return "\n".join(lines)


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
    import cv2

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
    """One gallery picture: target boxes in white, every prediction in its label colour.

    The banner gives the query, then how it went: IoU and depth of the first box for a
    single-target query, the counts for a multi-target one, and "not here" for an empty answer.
    """
    from llmi3d_core.visualize import draw_boxes, label_color_u8

    truth = [(t.box.corners(), "") for t in result.targets]
    drawn = draw_boxes(image, truth, K, colors=[GT_COLOR] * len(truth))
    for answer in result.answers:
        text = f"{textwrap.shorten(answer.label, 28, placeholder='...')} {answer.score:.2f}"
        drawn = draw_boxes(
            drawn, [(answer.box.corners(), text)], K, colors=[label_color_u8(answer.label)]
        )
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
    import cv2

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
    from llmi3d_core.data.splits import select_queries

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
    parser.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="answers scoring below it are left out (an empty answer is 'not here'); default: "
        "the node's min_score default",
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
    from llmi3d_core.data.reader import read_dataset
    from llmi3d_core.data.splits import select_queries

    set_threads(args.threads)
    if args.checkpoint is not None and str(args.checkpoint) == DEFAULT_CHECKPOINT:
        from llmi3d_core.default_model import default_test_data, ensure_default_model

        args.checkpoint = ensure_default_model()
        if args.data is None:
            args.data = default_test_data(progress=not args.no_progress)
    if args.data is None:
        raise InvalidInputError("--data DIR is required (only --checkpoint default has one)")
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
        predict = partial(
            predict_with_model,
            predictor,
            progress=not args.no_progress,
            max_results=args.max_results,
            min_score=args.min_score,
        )
        if args.true_cells:
            predict = partial(predict_at_true_cells, predictor, progress=not args.no_progress)
        name = args.checkpoint.resolve().name
        source = {"name": f"LLMI3D {name}", "checkpoint": str(args.checkpoint)}
        if args.true_cells:
            source["name"] += " (heads at the true cell)"
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
