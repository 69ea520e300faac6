"""Tests of llmi3d_core.metrics: hand-computed grounding metrics, both IoU variants, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from llmi3d_core.errors import InvalidInputError
from llmi3d_core.geometry import Box3D
from llmi3d_core.metrics import (
    IOU_VARIANTS,
    accuracy_at,
    box_ious,
    format_metrics,
    grounding_metrics,
)


def box(center, dims_lwh, yaw_deg: float = 0.0) -> Box3D:
    R = Rotation.from_euler("y", yaw_deg, degrees=True).as_matrix()
    return Box3D(np.asarray(center, float), np.asarray(dims_lwh, float), R)


@pytest.fixture
def pairs():
    """Three queries with hand-computed exact IoUs 1, 1/3 and 0."""
    gt = [box([0, 0, 10], [2, 2, 2]), box([1, 0, 20], [4, 2, 1]), box([0, 0, 5], [1, 1, 1])]
    pred = [
        box([0, 0, 10], [2, 2, 2]),  # identical -> 1
        box([3, 0, 20], [4, 2, 1]),  # shifted by L/2 along its length -> 1/3
        box([0, 0, 8], [1.5, 0.5, 2.0]),  # far away -> 0
    ]
    return pred, gt


def test_grounding_metrics_hand_values(pairs):
    pred, gt = pairs
    m = grounding_metrics(pred, gt)
    assert m["count"] == 3
    assert m["acc@0.25"] == pytest.approx(2 / 3)
    assert m["acc@0.5"] == pytest.approx(1 / 3)
    assert m["mean_iou"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m["depth_mae"] == pytest.approx((0 + 0 + 3) / 3)
    assert m["length_mae"] == pytest.approx(0.5 / 3)
    assert m["width_mae"] == pytest.approx(0.5 / 3)
    assert m["height_mae"] == pytest.approx(1.0 / 3)
    assert set(m) == {
        "acc@0.25", "acc@0.5", "mean_iou", "depth_mae", "length_mae", "width_mae",
        "height_mae", "count",
    }  # fmt: skip


def test_accuracy_threshold_is_strict():
    assert accuracy_at(np.array([0.5, 0.25, 0.2500001]), 0.25) == pytest.approx(2 / 3)
    assert accuracy_at(np.array([0.5]), 0.5) == 0.0
    with pytest.raises(InvalidInputError, match="non-empty array of finite values"):
        accuracy_at(np.array([]), 0.5)
    with pytest.raises(InvalidInputError, match="finite"):
        accuracy_at(np.array([np.nan]), 0.5)


def test_mono3dvg_variant_ignores_rotation_and_swaps_axes():
    gt = [box([0, 0, 10], [4, 2, 1])]  # extents x=1 (H), y=2 (W), z=4 (L) for Mono3DVG
    pred = [box([0, 0, 10], [4, 2, 1], yaw_deg=90)]
    assert box_ious(pred, gt, iou="mono3dvg")[0] == pytest.approx(1.0)  # yaw ignored
    exact = box_ious(pred, gt)[0]
    assert exact == pytest.approx(1 / 3)  # 2 x 1 x 2 overlap of two 4 x 1 x 2 boxes at 90 deg
    shifted = [box([0, 0, 10.5], [4, 2, 1])]
    assert box_ious(shifted, gt, iou="mono3dvg")[0] == pytest.approx(7 / 9)  # z extent L = 4
    assert box_ious(shifted, gt, iou="exact")[0] == pytest.approx(0.6)  # z extent W = 2 for us
    m = grounding_metrics(pred, gt, iou="mono3dvg")
    assert m["acc@0.5"] == 1.0 and m["mean_iou"] == pytest.approx(1.0)
    assert sorted(IOU_VARIANTS) == ["exact", "mono3dvg"]


def test_format_metrics_names_the_variant(pairs):
    line = format_metrics(grounding_metrics(*pairs), iou="exact")
    assert "Acc@0.25 66.67%" in line and "Acc@0.5 33.33%" in line
    assert line.endswith("(IoU: exact, n=3)")


def test_many_random_queries_are_consistent():
    rng = np.random.default_rng(5)
    gt, pred = [], []
    for _ in range(200):
        center = rng.uniform([-3, -1, 4], [3, 1, 30])
        dims = rng.uniform(0.3, 4.0, 3)
        gt.append(box(center, dims, rng.uniform(-180, 180)))
        pred.append(
            box(
                center + rng.normal(0, 0.3, 3),
                dims * rng.uniform(0.8, 1.2, 3),
                rng.uniform(-180, 180),
            )
        )
    m = grounding_metrics(pred, gt)
    ious = box_ious(pred, gt)
    assert m["count"] == 200
    assert m["acc@0.5"] <= m["acc@0.25"] <= 1.0
    assert m["mean_iou"] == pytest.approx(ious.mean())
    assert m["acc@0.25"] == pytest.approx((ious > 0.25).mean())


@pytest.mark.parametrize(
    ("pred", "gt", "kwargs", "match"),
    [
        ([], [], {}, "empty"),
        ([box([0, 0, 5], [1, 1, 1])], [], {}, r"same length .* got 1 and 0"),
        (
            [(0, 0, 5)],
            [box([0, 0, 5], [1, 1, 1])],
            {},
            r"pred_boxes\[0\] must be a .*Box3D, got tuple",
        ),
        (
            [box([0, 0, 5], [1, 1, 1])],
            [box([0, 0, 5], [1, 1, 1])],
            {"iou": "bev"},
            r"unknown iou variant 'bev'",
        ),
    ],
)
def test_metric_errors(pred, gt, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        grounding_metrics(pred, gt, **kwargs)
