"""3D visual-grounding metrics: Acc@k, IoU, errors; "not here", multi-target P/R, calibration.

Single-target queries: one prediction per query, compared with its ground-truth box (DESIGN.md,
"Metrics"; `grounding_metrics`):

* Acc@k: the fraction of queries whose IoU is strictly greater than k (as Mono3DVG's evaluator,
  ``iou > 0.25``), for k in {0.25, 0.5}.
* mean IoU over queries.
* depth / length / width / height error: mean absolute error in metres. Depth is the Z of the
  box centre in the camera optical frame; length, width and height are the (L, W, H) sizes.

The IoU is the exact oriented 3D IoU by default (``iou="exact"``, as Omni3D's ``box3d_overlap``).
``iou="mono3dvg"`` reproduces Mono3DVG's axis-aligned, rotation-blind IoU and exists only to
compare with its published tables; always report which one a number uses.

Queries with 0, 1 or several targets, each answered with a list of predictions (possibly empty:
"not here"; best first), are scored by `query_metrics`:

* Single-target queries keep the numbers above, computed from the FIRST prediction (list
  order; the matching below sorts by score instead, stably, so the two agree whenever the
  list is best first as `Predictor.predict_batch` promises); an empty
  answer is a miss (IoU 0, not grounded) and is left out of the depth / size error means
  (``empty_count`` says how many there were). ``grounding_acc``: the fraction whose first 2D box
  has IoU > 0.5 with the target's tight 2D box (the chosen object is the target).
* Negative queries (no target): ``not_here_rate``, the fraction answered with an empty list.
* Multi-target queries: predictions are matched one-to-one to targets greedily, best score first
  (each prediction takes the unmatched target it overlaps most, if the IoU is above the
  threshold), as COCO matches detections. Summed over the queries: precision = matched
  predictions / predictions, recall = matched targets / targets; by 3D IoU > 0.25
  (``multi_precision@0.25``, ``multi_recall@0.25``) and by 2D IoU > 0.5 with the tight 2D boxes
  (``multi_precision_2d@0.5``, ``multi_recall_2d@0.5``; the issue's target is stated so).
* ``ece``, the expected calibration error of the score, over every returned prediction of every
  query: a prediction is correct when the greedy 2D matching above (IoU > 0.5, best score first)
  gives it a target (so a second box on the same target, and any box of a negative query, is
  wrong); scores fall into 10 equal-width bins over [0, 1] (a score of 1 in the last), and
  ECE = sum over bins of (n_bin / n) * |accuracy_bin - mean score_bin|
  (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).
* ``target_recall_2d@0.5``, over every query with a target: the fraction of its targets that
  the same greedy 2D matching gives a prediction. Answered with every candidate (an AnswerRule
  of zeros) it is the share of targets the detector boxes well enough at all: the most that
  any pointer could ground with it.

A value that has nothing to average (no query of that kind, no prediction) is None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from llmi3d_core.arrays import FloatArray
from llmi3d_core.errors import InvalidInputError
from llmi3d_core.geometry import Box3D, box3d_corners
from llmi3d_core.iou import box2d_iou_matrix, box3d_iou_batch, box3d_iou_mono3dvg

__all__ = [
    "ACC_THRESHOLDS",
    "ECE_BINS",
    "GROUNDING_IOU_2D",
    "IOU_VARIANTS",
    "MULTI_IOU_3D",
    "ScoredBox",
    "accuracy_at",
    "box_ious",
    "expected_calibration_error",
    "format_metrics",
    "greedy_match",
    "grounding_metrics",
    "query_metrics",
]

ACC_THRESHOLDS = (0.25, 0.5)
GROUNDING_IOU_2D = 0.5  # 2D IoU above which the chosen object is the target
MULTI_IOU_3D = 0.25  # 3D IoU above which a multi-target prediction hits a target
ECE_BINS = 10
ERROR_KEYS = ("depth_mae", "length_mae", "width_mae", "height_mae", "rotation_err_deg")


def _stack(boxes: Sequence[Box3D], name: str) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Boxes -> centres (N, 3), dims_lwh (N, 3), rotations (N, 3, 3)."""
    for index, box in enumerate(boxes):
        if not isinstance(box, Box3D):
            raise InvalidInputError(
                f"{name}[{index}] must be a llmi3d_core.geometry.Box3D, got {type(box).__name__}"
            )
    centers = np.stack([box.center for box in boxes]).astype(np.float64)
    dims = np.stack([box.dims_lwh for box in boxes]).astype(np.float64)
    rotations = np.stack([box.R for box in boxes]).astype(np.float64)
    return centers, dims, rotations


# The rotation that turns a box 180 degrees about its own vertical (local y, height) axis: the
# turned box has the same corners, so a rotation error must not count the turn.
_HALF_TURN = np.diag([-1.0, 1.0, -1.0])


def rotation_errors_deg(pred_R: FloatArray, gt_R: FloatArray) -> FloatArray:
    """Geodesic angle (N,) in degrees between rotations (N, 3, 3), up to the box's half turn."""
    errors = []
    for twin in (np.eye(3), _HALF_TURN):
        relative = np.einsum("nji,njk->nik", pred_R, gt_R @ twin)  # pred^T @ gt
        cosine = (np.trace(relative, axis1=1, axis2=2) - 1.0) / 2.0
        errors.append(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
    return np.minimum(*errors)  # type: ignore[no-any-return]


def _exact_ious(pred: Sequence[Box3D], gt: Sequence[Box3D]) -> FloatArray:
    pc, pd, pr = _stack(pred, "pred_boxes")
    gc, gd, gr = _stack(gt, "gt_boxes")
    ious: FloatArray = box3d_iou_batch(box3d_corners(pc, pd, pr), box3d_corners(gc, gd, gr))
    return ious


def _mono3dvg_ious(pred: Sequence[Box3D], gt: Sequence[Box3D]) -> FloatArray:
    pc, pd, _ = _stack(pred, "pred_boxes")
    gc, gd, _ = _stack(gt, "gt_boxes")
    return np.asarray(box3d_iou_mono3dvg(pc, pd, gc, gd), dtype=np.float64).reshape(-1)


# IoU variants by name (a registry, so evaluation configs can name them).
IOU_VARIANTS: dict[str, Callable[[Sequence[Box3D], Sequence[Box3D]], FloatArray]] = {
    "exact": _exact_ious,
    "mono3dvg": _mono3dvg_ious,
}


def _check_pairs(pred_boxes: Sequence[Box3D], gt_boxes: Sequence[Box3D]) -> None:
    if len(pred_boxes) != len(gt_boxes):
        raise InvalidInputError(
            "pred_boxes and gt_boxes must have the same length (one prediction per query), got "
            f"{len(pred_boxes)} and {len(gt_boxes)}"
        )
    if len(pred_boxes) == 0:
        raise InvalidInputError("pred_boxes and gt_boxes are empty: metrics need >= 1 query")


def box_ious(
    pred_boxes: Sequence[Box3D], gt_boxes: Sequence[Box3D], *, iou: str = "exact"
) -> FloatArray:
    """IoU of each predicted box with its ground truth.

    Args:
        pred_boxes: N predicted boxes, one per query.
        gt_boxes: N ground-truth boxes, same order.
        iou: "exact" (oriented, default) or "mono3dvg" (Mono3DVG's axis-aligned variant).

    Returns:
        (N,) IoU in [0, 1].

    Raises:
        InvalidInputError: different lengths, no boxes, a non-Box3D item or an unknown variant.
    """
    if iou not in IOU_VARIANTS:
        raise InvalidInputError(f"unknown iou variant {iou!r}; available: {sorted(IOU_VARIANTS)}")
    _check_pairs(pred_boxes, gt_boxes)
    return IOU_VARIANTS[iou](pred_boxes, gt_boxes)


def accuracy_at(ious: FloatArray, threshold: float) -> float:
    """Fraction of IoUs strictly greater than `threshold` (Acc@threshold).

    Args:
        ious: (N,) IoU values, N >= 1.
        threshold: IoU threshold, e.g. 0.25 or 0.5.

    Returns:
        The fraction in [0, 1].

    Raises:
        InvalidInputError: empty or non-finite IoUs.
    """
    values = np.asarray(ious, dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.isfinite(values).all():
        raise InvalidInputError(f"ious must be a non-empty array of finite values, got {values}")
    return float(np.mean(values > threshold))


def grounding_metrics(
    pred_boxes: Sequence[Box3D], gt_boxes: Sequence[Box3D], *, iou: str = "exact"
) -> dict[str, float]:
    """The 3D grounding metrics of one evaluation run.

    Args:
        pred_boxes: N predicted boxes, one per query.
        gt_boxes: N ground-truth boxes, same order.
        iou: "exact" (oriented, default) or "mono3dvg" (Mono3DVG's axis-aligned variant).

    Returns:
        ``{"acc@0.25", "acc@0.5", "mean_iou"}`` as fractions in [0, 1],
        ``{"depth_mae", "length_mae", "width_mae", "height_mae"}`` in metres,
        ``"rotation_err_deg"`` (mean geodesic angle, a box and its 180-degree turn about its
        vertical axis being the same box) and ``"count"`` (the number of queries, an int).

    Raises:
        InvalidInputError: different lengths, no boxes, a non-Box3D item or an unknown variant.
    """
    ious = box_ious(pred_boxes, gt_boxes, iou=iou)
    pc, pd, pr = _stack(pred_boxes, "pred_boxes")
    gc, gd, gr = _stack(gt_boxes, "gt_boxes")
    size_err = np.abs(pd - gd).mean(axis=0)  # (3,) L, W, H
    metrics: dict[str, float] = {f"acc@{k}": accuracy_at(ious, k) for k in ACC_THRESHOLDS}
    metrics.update(
        mean_iou=float(ious.mean()),
        depth_mae=float(np.abs(pc[:, 2] - gc[:, 2]).mean()),
        length_mae=float(size_err[0]),
        width_mae=float(size_err[1]),
        height_mae=float(size_err[2]),
        rotation_err_deg=float(rotation_errors_deg(pr, gr).mean()),
        count=len(ious),
    )
    return metrics


def format_metrics(metrics: dict[str, float], *, iou: str = "exact") -> str:
    """One line for logs, naming the IoU variant: ``Acc@0.25 41.20% | ... (IoU: exact, n=500)``."""
    parts = [f"Acc@{k} {100 * metrics[f'acc@{k}']:.2f}%" for k in ACC_THRESHOLDS]
    parts.append(f"mIoU {100 * metrics['mean_iou']:.2f}%")
    parts += [f"{name} {metrics[f'{name}_mae']:.3f} m" for name in ("depth", "length", "width")]
    parts.append(f"height {metrics['height_mae']:.3f} m")
    return " | ".join(parts) + f" (IoU: {iou}, n={int(metrics['count'])})"


# --------------------------------------------------------------------------------------------
# 0, 1 or several targets; lists of predictions
# --------------------------------------------------------------------------------------------


class Scored(Protocol):
    """What `query_metrics` reads of a prediction or a target (targets' scores are unused)."""

    @property
    def box(self) -> Box3D:
        """The 3D box."""
        ...

    @property
    def box2d(self) -> FloatArray:
        """(4,) [x1, y1, x2, y2] px."""
        ...

    @property
    def score(self) -> float:
        """Confidence in [0, 1]."""
        ...


@dataclass(frozen=True)
class ScoredBox:
    """A 3D box with its 2D box (px) and a score: a prediction, or a target (score unused).

    Attributes:
        box: the 3D box, camera frame.
        box2d: (4,) [x1, y1, x2, y2] px of the image; for a target, its tight 2D box.
        score: confidence in [0, 1].
    """

    box: Box3D
    box2d: FloatArray
    score: float = 1.0


def _box3d_iou_matrix(pred: Sequence[Box3D], gt: Sequence[Box3D], iou: str) -> FloatArray:
    """(P, T) 3D IoU of every prediction with every target, by variant `iou`."""
    if not pred or not gt:
        return np.zeros((len(pred), len(gt)))
    pairs_p = [p for p in pred for _ in gt]
    pairs_t = [t for _ in pred for t in gt]
    return IOU_VARIANTS[iou](pairs_p, pairs_t).reshape(len(pred), len(gt))


def greedy_match(ious: npt.ArrayLike, threshold: float) -> npt.NDArray[np.intp]:
    """Match predictions to targets one-to-one, in row order (rows sorted best score first).

    Each prediction in turn takes the not-yet-matched target with the highest IoU, if that IoU
    is strictly above `threshold` (COCO's matching).

    Args:
        ious: (P, T) IoU of prediction p with target t.
        threshold: IoU that a match must exceed.

    Returns:
        (P,) the matched target of each prediction, -1 where none.

    Raises:
        InvalidInputError: when `ious` is not 2-dimensional.
    """
    matrix = np.asarray(ious, dtype=np.float64)  # (P, T)
    if matrix.ndim != 2:
        raise InvalidInputError(f"ious must be a (P, T) matrix, got shape {matrix.shape}")
    taken = np.zeros(matrix.shape[1], dtype=bool)
    matched = np.full(matrix.shape[0], -1, dtype=np.intp)
    for row in range(matrix.shape[0]):
        candidates = np.where(taken, -np.inf, matrix[row])  # (T,)
        if candidates.size and candidates.max() > threshold:
            best = int(np.argmax(candidates))
            matched[row] = best
            taken[best] = True
    return matched


def expected_calibration_error(
    scores: npt.ArrayLike, correct: npt.ArrayLike, bins: int = ECE_BINS
) -> float:
    """Expected calibration error with equal-width bins (module docstring).

    Args:
        scores: (N,) confidences in [0, 1], N >= 1.
        correct: (N,) whether each prediction was right.
        bins: number of equal-width bins over [0, 1].

    Returns:
        ECE in [0, 1].

    Raises:
        InvalidInputError: no scores, lengths differ, or a score outside [0, 1].
    """
    conf = np.asarray(scores, dtype=np.float64).reshape(-1)
    hit = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.size == 0 or conf.size != hit.size:
        raise InvalidInputError(
            f"ECE needs as many scores as correctness flags, >= 1; got {conf.size} and {hit.size}"
        )
    if not np.isfinite(conf).all() or conf.min() < 0.0 or conf.max() > 1.0:
        raise InvalidInputError(f"scores must be in [0, 1], got min {conf.min()}, max {conf.max()}")
    index = np.minimum((conf * bins).astype(int), bins - 1)  # (N,) a score of 1 -> last bin
    total = 0.0
    for b in range(bins):
        member = index == b
        if member.any():
            total += member.mean() * abs(float(hit[member].mean() - conf[member].mean()))
    return float(total)


def _ranked(predictions: Sequence[Scored]) -> list[Scored]:
    """Predictions best score first (stable: equal scores keep their order)."""
    return sorted(predictions, key=lambda p: -float(p.score))


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def query_metrics(
    predictions: Sequence[Sequence[Scored]],
    targets: Sequence[Sequence[Scored]],
    *,
    iou: str = "exact",
) -> dict[str, float | int | None]:
    """Every metric of a set of queries with 0, 1 or several targets (module docstring).

    Args:
        predictions: per query, its predictions (best first; [] means "not here").
        targets: per query, its targets (box2d: the tight 2D box); [] for a negative query.
        iou: the 3D IoU variant, "exact" or "mono3dvg".

    Returns:
        Counts: ``count`` (queries), ``single_count``, ``empty_count`` (single-target queries
        answered with nothing), ``negative_count``, ``multi_count``, ``multi_targets``,
        ``multi_predictions``, ``predictions`` (all returned predictions).
        Single-target: ``acc@0.25``, ``acc@0.5``, ``mean_iou``, ``grounding_acc``,
        ``depth_mae``, ``length_mae``, ``width_mae``, ``height_mae``, ``rotation_err_deg``.
        Negative: ``not_here_rate``. Multi-target: ``multi_precision@0.25``,
        ``multi_recall@0.25``, ``multi_precision_2d@0.5``, ``multi_recall_2d@0.5``.
        All: ``ece``, ``target_recall_2d@0.5``. Fractions in [0, 1], errors in metres, None
        where undefined.

    Raises:
        InvalidInputError: lengths differ, no queries, an unknown IoU variant or a bad score.
    """
    if iou not in IOU_VARIANTS:
        raise InvalidInputError(f"unknown iou variant {iou!r}; available: {sorted(IOU_VARIANTS)}")
    if len(predictions) != len(targets):
        raise InvalidInputError(
            "predictions and targets must have one entry per query, got "
            f"{len(predictions)} and {len(targets)}"
        )
    if not predictions:
        raise InvalidInputError("no queries: metrics need >= 1 query")
    queries = list(zip(predictions, targets, strict=True))
    out: dict[str, float | int | None] = {"count": len(predictions)}
    out |= _single_target_metrics([(p, t[0]) for p, t in queries if len(t) == 1], iou)
    out |= _negative_metrics([p for p, t in queries if not t])
    out |= _multi_target_metrics([(p, t) for p, t in queries if len(t) > 1], iou)
    out |= _matching_metrics(queries)
    return out


def _single_target_metrics(
    single: Sequence[tuple[Sequence[Scored], Scored]], iou: str
) -> dict[str, float | int | None]:
    """Single-target queries, scored by their first prediction (as before lists existed)."""
    answered = [(p[0], t) for p, t in single if p]
    first_ious = np.zeros(len(single))  # (S,) an empty answer scores 0
    grounded = np.zeros(len(single), dtype=bool)  # (S,)
    if answered:
        values = box_ious([p.box for p, _ in answered], [t.box for _, t in answered], iou=iou)
        flat_2d = [box2d_iou_matrix(p.box2d, t.box2d)[0, 0] > GROUNDING_IOU_2D for p, t in answered]
        slots = [k for k, (p, _) in enumerate(single) if p]
        first_ious[slots] = values
        grounded[slots] = flat_2d
    out: dict[str, float | int | None] = {}
    for k in ACC_THRESHOLDS:
        out[f"acc@{k}"] = accuracy_at(first_ious, k) if single else None
    out["mean_iou"] = float(first_ious.mean()) if single else None
    out["grounding_acc"] = float(grounded.mean()) if single else None
    if answered:
        errors = grounding_metrics([p.box for p, _ in answered], [t.box for _, t in answered])
        for name in ERROR_KEYS:
            out[name] = errors[name]
    else:
        out |= dict.fromkeys(ERROR_KEYS)
    out["single_count"] = len(single)
    out["empty_count"] = len(single) - len(answered)
    return out


def _negative_metrics(negatives: Sequence[Sequence[Scored]]) -> dict[str, float | int | None]:
    """Negative queries: how many were answered "not here" (an empty list)."""
    return {
        "negative_count": len(negatives),
        "not_here_rate": _ratio(sum(not p for p in negatives), len(negatives)),
    }


def _multi_target_metrics(
    multi: Sequence[tuple[Sequence[Scored], Sequence[Scored]]], iou: str
) -> dict[str, float | int | None]:
    """Multi-target queries: greedy one-to-one matching, by 3D and by 2D IoU, summed."""
    hits_3d = hits_2d = 0
    for preds, targs in multi:
        ranked = _ranked(preds)
        ious_3d = _box3d_iou_matrix([p.box for p in ranked], [t.box for t in targs], iou)
        hits_3d += int((greedy_match(ious_3d, MULTI_IOU_3D) >= 0).sum())
        ious_2d = box2d_iou_matrix([p.box2d for p in ranked], [t.box2d for t in targs])
        hits_2d += int((greedy_match(ious_2d, GROUNDING_IOU_2D) >= 0).sum())
    multi_targets = sum(len(t) for _, t in multi)
    multi_predictions = sum(len(p) for p, _ in multi)
    return {
        "multi_count": len(multi),
        "multi_targets": multi_targets,
        "multi_predictions": multi_predictions,
        f"multi_precision@{MULTI_IOU_3D}": _ratio(hits_3d, multi_predictions),
        f"multi_recall@{MULTI_IOU_3D}": _ratio(hits_3d, multi_targets),
        f"multi_precision_2d@{GROUNDING_IOU_2D}": _ratio(hits_2d, multi_predictions),
        f"multi_recall_2d@{GROUNDING_IOU_2D}": _ratio(hits_2d, multi_targets),
    }


def _matching_metrics(
    queries: Sequence[tuple[Sequence[Scored], Sequence[Scored]]],
) -> dict[str, float | int | None]:
    """Predictions matched to targets by 2D IoU: the ECE of all of them, the targets matched."""
    scores: list[float] = []
    correct: list[bool] = []
    for preds, targs in queries:
        ranked = _ranked(preds)
        ious_2d = box2d_iou_matrix([p.box2d for p in ranked], [t.box2d for t in targs])
        matched = greedy_match(ious_2d, GROUNDING_IOU_2D)
        scores += [float(p.score) for p in ranked]
        correct += (matched >= 0).tolist()
    targets = sum(len(t) for _, t in queries)
    return {
        "predictions": len(scores),
        "ece": expected_calibration_error(scores, correct) if scores else None,
        f"target_recall_2d@{GROUNDING_IOU_2D}": _ratio(sum(correct), targets),
    }
