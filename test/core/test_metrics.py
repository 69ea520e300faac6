"""Tests of llmi3d_core.metrics: hand-computed grounding metrics, both IoU variants, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from llmi3d_core.errors import InvalidInputError
from llmi3d_core.geometry import Box3D
from llmi3d_core.iou import box2d_iou_matrix
from llmi3d_core.metrics import (
    IOU_VARIANTS,
    ScoredBox,
    accuracy_at,
    box_ious,
    expected_calibration_error,
    format_metrics,
    greedy_match,
    grounding_metrics,
    query_metrics,
    rotation_errors_deg,
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
        "height_mae", "rotation_err_deg", "count",
    }  # fmt: skip


def test_rotation_error_forgives_the_half_turn_about_the_vertical_axis():
    """A box turned 180 degrees about its height axis is the same box: 0 degrees, not 180."""
    turn = Rotation.from_rotvec([[0.0, np.pi, 0.0], [0.0, np.pi / 2, 0.0], [0.3, 0.0, 0.0]])
    turn = turn.as_matrix()
    gt = np.repeat(np.eye(3)[None], 3, axis=0)
    np.testing.assert_allclose(rotation_errors_deg(turn, gt), [0.0, 90.0, np.degrees(0.3)],
                               atol=1e-6)  # fmt: skip


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


# ------------------------------------------------------------------------------------------
# 0, 1 or several targets, lists of predictions
# ------------------------------------------------------------------------------------------


def scored(center, dims_lwh, box2d, score: float = 1.0) -> ScoredBox:
    return ScoredBox(box(center, dims_lwh), np.asarray(box2d, float), score)


# Two targets side by side (2D boxes far apart), and one far away.
LEFT = scored([-2, 0, 10], [1, 1, 1], [100, 100, 200, 200])
RIGHT = scored([2, 0, 10], [1, 1, 1], [400, 100, 500, 200])


def test_box2d_iou_matrix_hand_values():
    ious = box2d_iou_matrix([[0, 0, 2, 2], [10, 10, 11, 11]], [[1, 1, 3, 3], [0, 0, 2, 2]])
    np.testing.assert_allclose(ious, [[1 / 7, 1.0], [0.0, 0.0]])
    assert box2d_iou_matrix([0, 0, 2, 2], []).shape == (1, 0)
    assert box2d_iou_matrix([], [[0, 0, 1, 1]]).shape == (0, 1)
    assert box2d_iou_matrix([0, 0, 0, 5], [0, 0, 0, 5])[0, 0] == 0.0  # empty union
    with pytest.raises(InvalidInputError, match=r"boxes_a must be finite .* got shape \(3,\)"):
        box2d_iou_matrix([0, 0, 1], [[0, 0, 1, 1]])
    with pytest.raises(InvalidInputError, match="boxes_b must be finite"):
        box2d_iou_matrix([0, 0, 1, 1], [[0, 0, np.nan, 1]])


def test_greedy_match_is_one_to_one_in_row_order():
    # the first prediction takes its best target, the second the one left over
    np.testing.assert_array_equal(greedy_match([[0.6, 0.9], [0.8, 0.1]], 0.5), [1, 0])
    # a duplicate on a taken target matches nothing
    np.testing.assert_array_equal(greedy_match([[0.9, 0.0], [0.8, 0.0]], 0.5), [0, -1])
    # the threshold is strict, like Acc@k
    np.testing.assert_array_equal(greedy_match([[0.5]], 0.5), [-1])
    assert greedy_match(np.zeros((0, 3)), 0.5).shape == (0,)
    assert greedy_match(np.zeros((2, 0)), 0.5).tolist() == [-1, -1]
    with pytest.raises(InvalidInputError, match=r"\(P, T\) matrix"):
        greedy_match([0.9, 0.1], 0.5)


def test_expected_calibration_error_hand_values():
    # bin [0.9, 1]: 2 predictions, 1 right, mean score 0.95; bin [0.1, 0.2): 1 wrong at 0.15
    assert expected_calibration_error([0.95, 0.95, 0.15], [1, 0, 0]) == pytest.approx(
        2 / 3 * 0.45 + 1 / 3 * 0.15
    )
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0  # 1.0 is in the last bin
    assert expected_calibration_error([0.0, 1.0], [False, True]) == 0.0
    assert expected_calibration_error([0.7] * 10, [1] * 7 + [0] * 3) == pytest.approx(0.0)
    with pytest.raises(InvalidInputError, match=r"scores must be in \[0, 1\]"):
        expected_calibration_error([1.2], [True])
    with pytest.raises(InvalidInputError, match="as many scores as correctness flags"):
        expected_calibration_error([0.5], [True, False])
    with pytest.raises(InvalidInputError, match=">= 1"):
        expected_calibration_error([], [])


def test_single_target_queries_use_the_first_prediction_and_empty_is_a_miss():
    far = scored([0, 0, 30], [1, 1, 1], [290, 290, 310, 310], 0.2)
    predictions = [
        [LEFT, far],  # right first answer (IoU 1), a second box that does not count
        [],  # "not here" for a target that is there: a miss, no depth error
        [far, RIGHT],  # wrong first answer; the right box second does not rescue it
    ]
    targets = [[LEFT], [LEFT], [RIGHT]]
    m = query_metrics(predictions, targets)
    assert (m["count"], m["single_count"], m["empty_count"]) == (3, 3, 1)
    assert m["acc@0.25"] == pytest.approx(1 / 3) and m["acc@0.5"] == pytest.approx(1 / 3)
    assert m["mean_iou"] == pytest.approx(1 / 3)  # (1 + 0 + 0) / 3
    assert m["grounding_acc"] == pytest.approx(1 / 3)
    # errors over the 2 answered queries: depth 0 and |30 - 10| = 20
    assert m["depth_mae"] == pytest.approx(10.0)
    assert m["length_mae"] == 0.0
    assert (m["negative_count"], m["not_here_rate"]) == (0, None)
    assert (m["multi_count"], m["multi_precision@0.25"], m["multi_recall@0.25"]) == (0, None, None)
    # ECE over 4 predictions; right: LEFT (1.0) and RIGHT (1.0); wrong: far twice (0.2)
    assert m["predictions"] == 4
    assert m["ece"] == pytest.approx(0.5 * 0.0 + 0.5 * 0.2)


def test_grounding_acc_reads_the_2d_box_only():
    shifted = scored([-2, 0, 14], [1, 1, 1], [100, 100, 200, 200])  # right object, wrong depth
    m = query_metrics([[shifted]], [[LEFT]])
    assert m["grounding_acc"] == 1.0 and m["acc@0.25"] == 0.0


def test_all_negative_queries():
    predictions = [[], [], [scored([0, 0, 5], [1, 1, 1], [0, 0, 50, 50], 0.9)], []]
    m = query_metrics(predictions, [[], [], [], []])
    assert (m["count"], m["negative_count"], m["single_count"]) == (4, 4, 0)
    assert m["not_here_rate"] == pytest.approx(3 / 4)
    for key in ("acc@0.25", "acc@0.5", "mean_iou", "grounding_acc", "depth_mae", "height_mae"):
        assert m[key] is None, key
    assert m["ece"] == pytest.approx(0.9)  # one prediction, wrong, at 0.9
    all_right = query_metrics([[], []], [[], []])
    assert all_right["not_here_rate"] == 1.0
    assert all_right["ece"] is None and all_right["predictions"] == 0


def test_multi_target_precision_and_recall():
    near_left_2d = scored([-2, 0, 13], [1, 1, 1], [105, 100, 205, 200], 0.8)  # 2D hit, 3D miss
    predictions = [
        [LEFT, RIGHT],  # both found
        [near_left_2d],  # one of two, in 2D only
    ]
    targets = [[LEFT, RIGHT], [LEFT, RIGHT]]
    m = query_metrics(predictions, targets)
    assert (m["multi_count"], m["multi_targets"], m["multi_predictions"]) == (2, 4, 3)
    assert m["multi_precision@0.25"] == pytest.approx(2 / 3)
    assert m["multi_recall@0.25"] == pytest.approx(2 / 4)
    assert m["multi_precision_2d@0.5"] == pytest.approx(3 / 3)
    assert m["multi_recall_2d@0.5"] == pytest.approx(3 / 4)
    assert m["single_count"] == 0 and m["acc@0.25"] is None
    # scores 1, 1 (right), 0.8 (right in 2D): calibration error 0.2 on a third of them
    assert m["ece"] == pytest.approx(1 / 3 * 0.2)


def test_duplicate_predictions_on_one_target_count_once():
    dup = scored([-2, 0, 10], [1, 1, 1], [100, 100, 200, 200], 0.9)
    m = query_metrics([[LEFT, dup]], [[LEFT, RIGHT]])
    assert m["multi_precision@0.25"] == pytest.approx(1 / 2)
    assert m["multi_recall@0.25"] == pytest.approx(1 / 2)
    assert m["multi_precision_2d@0.5"] == pytest.approx(1 / 2)
    # the duplicate is a wrong prediction for calibration: bins 1.0 (right), 0.9 (wrong)
    assert m["ece"] == pytest.approx(0.5 * 0.0 + 0.5 * 0.9)
    # a single-target query with a duplicate: the first answer counts, the second is wrong
    single = query_metrics([[LEFT, dup]], [[LEFT]])
    assert single["acc@0.5"] == 1.0 and single["ece"] == pytest.approx(0.45)


def test_target_recall_counts_every_target_a_prediction_matches():
    """Over single and multi-target queries alike; a duplicate matches nothing more; a target
    found only by a later prediction still counts (the ceiling of pointing)."""
    dup = scored([-2, 0, 10], [1, 1, 1], [100, 100, 200, 200], 0.9)
    m = query_metrics(
        [[RIGHT, LEFT], [LEFT, dup], [], [RIGHT]],  # found second; one of two; missed; negative
        [[LEFT], [LEFT, RIGHT], [RIGHT], []],
    )
    assert m["target_recall_2d@0.5"] == pytest.approx(2 / 4)
    assert m["grounding_acc"] == pytest.approx(0.0)  # the first boxes are wrong or missing
    assert query_metrics([[]], [[]])["target_recall_2d@0.5"] is None  # no target at all


def test_matching_goes_best_score_first():
    # a low-score box listed first must not take the target from a high-score one
    weak = scored([-2, 0, 10], [1, 1, 1], [100, 100, 200, 200], 0.1)
    strong = scored([-2, 0, 10.2], [1, 1, 1], [102, 100, 202, 200], 0.9)
    m = query_metrics([[weak, strong]], [[LEFT, RIGHT]])
    # strong matches LEFT and is right; weak is the duplicate: ECE = 0.5 * 0.1 + 0.5 * 0.1
    assert m["ece"] == pytest.approx(0.1)
    assert m["multi_recall@0.25"] == pytest.approx(1 / 2)


def test_query_metrics_mono3dvg_variant_and_mixed_kinds():
    rotated = ScoredBox(box([-2, 0, 10], [1, 1, 1], yaw_deg=30), LEFT.box2d, 1.0)
    m = query_metrics([[rotated], [], [LEFT, RIGHT]], [[LEFT], [], [LEFT, RIGHT]], iou="mono3dvg")
    assert m["mean_iou"] == pytest.approx(1.0)  # yaw ignored
    assert (m["single_count"], m["negative_count"], m["multi_count"]) == (1, 1, 1)
    assert m["not_here_rate"] == 1.0 and m["multi_recall@0.25"] == 1.0
    assert m["ece"] == 0.0


@pytest.mark.parametrize(
    ("predictions", "targets", "kwargs", "match"),
    [
        ([], [], {}, "no queries"),
        ([[]], [], {}, r"one entry per query, got 1 and 0"),
        ([[LEFT]], [[LEFT]], {"iou": "bev"}, "unknown iou variant 'bev'"),
        ([[ScoredBox(LEFT.box, LEFT.box2d, 1.5)]], [[]], {}, r"scores must be in \[0, 1\]"),
    ],
)
def test_query_metrics_errors(predictions, targets, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        query_metrics(predictions, targets, **kwargs)
