"""3D visual-grounding metrics: Acc@0.25, Acc@0.5, mean IoU and metric size / depth errors.

One prediction per query, compared with its ground-truth box (DESIGN.md, "Metrics"):

* Acc@k: the fraction of queries whose IoU is strictly greater than k (as Mono3DVG's evaluator,
  ``iou > 0.25``), for k in {0.25, 0.5}.
* mean IoU over queries.
* depth / length / width / height error: mean absolute error in metres. Depth is the Z of the
  box centre in the camera optical frame; length, width and height are the (L, W, H) sizes.

The IoU is the exact oriented 3D IoU by default (``iou="exact"``, as Omni3D's ``box3d_overlap``).
``iou="mono3dvg"`` reproduces Mono3DVG's axis-aligned, rotation-blind IoU and exists only to
compare with its published tables; always report which one a number uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llmi3d_core.errors import InvalidInputError
from llmi3d_core.geometry import (
    Box3D,
    FloatArray,
    box3d_corners,
    box3d_iou_batch,
    box3d_iou_mono3dvg,
)

__all__ = [
    "ACC_THRESHOLDS",
    "IOU_VARIANTS",
    "accuracy_at",
    "box_ious",
    "format_metrics",
    "grounding_metrics",
]

ACC_THRESHOLDS = (0.25, 0.5)


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
        ``{"depth_mae", "length_mae", "width_mae", "height_mae"}`` in metres and ``"count"``
        (the number of queries, an int).

    Raises:
        InvalidInputError: different lengths, no boxes, a non-Box3D item or an unknown variant.
    """
    ious = box_ious(pred_boxes, gt_boxes, iou=iou)
    pc, pd, _ = _stack(pred_boxes, "pred_boxes")
    gc, gd, _ = _stack(gt_boxes, "gt_boxes")
    size_err = np.abs(pd - gd).mean(axis=0)  # (3,) L, W, H
    metrics: dict[str, float] = {f"acc@{k}": accuracy_at(ious, k) for k in ACC_THRESHOLDS}
    metrics.update(
        mean_iou=float(ious.mean()),
        depth_mae=float(np.abs(pc[:, 2] - gc[:, 2]).mean()),
        length_mae=float(size_err[0]),
        width_mae=float(size_err[1]),
        height_mae=float(size_err[2]),
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
