"""Letterboxing (llmi3d_core/letterbox.py): placement, round trips, K, prompts on KITTI images.

Every pixel quantity crosses the canvas boundary through one Letterbox; these tests check that a
point, a box and the intrinsics move together, so that a prompt given in pixels of a wide
1242 x 375 image still lands on its object in the model's canvas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmi3d_core import geometry
from llmi3d_core.data.dataset import GroundingDataset
from llmi3d_core.data.images import load_rgb
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset
from llmi3d_core.errors import InvalidInputError
from llmi3d_core.inference import Predictor
from llmi3d_core.letterbox import PAD_VALUE, Letterbox
from llmi3d_core.model import LLMI3D, get_preset
from llmi3d_core.model.inputs import prepare_inputs

KITTI_K = np.array([[721.5, 0.0, 609.6], [0.0, 721.5, 172.9], [0.0, 0.0, 1.0]])
SETTINGS = settings(max_examples=60, deadline=None)
sides = st.integers(8, 2000)
canvas_sides = st.sampled_from([32, 64, 96, 128, 256, 384, 512])


def test_kitti_strip_in_a_square_canvas_hand_values():
    box = Letterbox.fit(1242, 375, 256, 256)
    assert (box.new_w, box.new_h) == (256, 77)  # 375 * 256 / 1242 = 77.3
    assert (box.pad_x, box.pad_y) == (0, 89)  # (256 - 77) // 2
    np.testing.assert_allclose(box.scale, [256 / 1242, 77 / 375])
    # the image's pixel span [-0.5, w - 0.5] maps onto the scaled image inside the canvas
    corners = box.points_to_canvas(np.array([[-0.5, -0.5], [1241.5, 374.5]]))
    np.testing.assert_allclose(corners, [[-0.5, 88.5], [255.5, 165.5]])
    K = box.intrinsics(KITTI_K)
    sx, sy = 256 / 1242, 77 / 375
    expected = [
        [721.5 * sx, 0, 610.1 * sx - 0.5],
        [0, 721.5 * sy, 173.4 * sy - 0.5 + 89],
        [0, 0, 1],
    ]
    np.testing.assert_allclose(K, expected)
    same = Letterbox.fit(640, 480, 640, 480)
    assert same.scale.tolist() == [1.0, 1.0] and same.offset.tolist() == [0.0, 0.0]


def test_boxes_clipped_to_the_image_hand_values():
    """A box that leaves the image (regressed near its border) is cut at the image's edges."""
    box = Letterbox.fit(1242, 375, 256, 256)
    # in the canvas: x from before the left edge to inside, y from inside to the grey padding
    leaving = box.boxes_to_canvas(np.array([[-40.0, 100.0, 90.0, 420.0]]))
    np.testing.assert_allclose(box.boxes_to_image(leaving), [[-40.0, 100.0, 90.0, 420.0]])
    np.testing.assert_allclose(box.boxes_to_image(leaving, clip=True), [[-0.5, 100.0, 90.0, 374.5]])
    outside = box.boxes_to_canvas(np.array([[1300.0, 10.0, 1400.0, 20.0]]))  # right of it
    np.testing.assert_allclose(
        box.boxes_to_image(outside, clip=True), [[1241.5, 10.0, 1241.5, 20.0]]
    )  # empty: IoU 0 with everything (iou.box2d_iou_matrix)
    inside = np.array([[10.0, 20.0, 300.0, 200.0]])
    np.testing.assert_allclose(box.boxes_to_image(box.boxes_to_canvas(inside), clip=True), inside)


@SETTINGS
@given(w=sides, h=sides, cw=canvas_sides, ch=canvas_sides)
def test_round_trips_and_the_canvas_k(w, h, cw, ch):
    box = Letterbox.fit(w, h, cw, ch)
    assert box.new_w <= cw and box.new_h <= ch and box.pad_x >= 0 and box.pad_y >= 0
    assert box.new_w == cw or box.new_h == ch  # the largest placement
    if min(box.new_w, box.new_h) > 1:  # the aspect ratio is kept up to whole pixels
        assert abs(box.new_w / box.new_h - w / h) <= (w / h) * (1 / box.new_w + 1 / box.new_h)
    rng = np.random.default_rng(w * 7919 + h)
    points = rng.uniform(-0.5, [w - 0.5, h - 0.5], (20, 2))
    np.testing.assert_allclose(box.points_to_image(box.points_to_canvas(points)), points,
                               atol=1e-9)  # fmt: skip
    boxes = np.concatenate([points[:10], points[:10] + 3.0], axis=1)
    np.testing.assert_allclose(box.boxes_to_image(box.boxes_to_canvas(boxes)), boxes, atol=1e-9)
    np.testing.assert_allclose(box.rows_to_canvas(points[:, 1]), box.points_to_canvas(points)[:, 1])
    # a 3D point seen with the image's K, then mapped, is where the canvas K sees it
    K = np.array([[0.9 * w, 0.5, w / 2], [0.0, 0.9 * w, h / 2], [0.0, 0.0, 1.0]])
    xyz = np.column_stack([rng.uniform(-3, 3, (20, 2)), rng.uniform(2, 50, 20)])
    in_image = geometry.project(xyz, K)
    np.testing.assert_allclose(
        box.points_to_canvas(in_image), geometry.project(xyz, box.intrinsics(K)), atol=1e-7
    )


def test_apply_pastes_the_scaled_picture_on_grey():
    rgb = np.zeros((375, 1242, 3), np.uint8)
    rgb[:, :621] = 255  # left half white
    box = Letterbox.fit(1242, 375, 128, 96)
    canvas = box.apply(rgb)
    assert canvas.shape == (96, 128, 3) and canvas.dtype == np.uint8
    assert (canvas[: box.pad_y] == PAD_VALUE).all() and (
        canvas[box.pad_y + box.new_h :] == PAD_VALUE
    ).all()
    inside = canvas[box.pad_y : box.pad_y + box.new_h]
    assert (inside[:, :60] == 255).all() and (inside[:, 68:] == 0).all()
    with pytest.raises(
        InvalidInputError, match=r"letterbox for a 1242x375 image got a picture of 640x480"
    ):
        box.apply(np.zeros((480, 640, 3), np.uint8))
    with pytest.raises(InvalidInputError, match=r"letterbox needs sizes >= 1 px"):
        Letterbox.fit(0, 375, 128, 96)


def test_prepare_inputs_uses_the_letterbox():
    config = get_preset("tiny")
    rgb = np.random.default_rng(0).integers(0, 255, (375, 1242, 3), dtype=np.uint8)
    inputs = prepare_inputs(rgb, KITTI_K, config)
    height, width = config.high_res.image_size
    side = config.low_res.image_size
    assert inputs.image_hr.shape == (3, height, width) and inputs.image_lr.shape == (3, side, side)
    box = Letterbox.fit(1242, 375, width, height)
    assert inputs.letterbox == box
    np.testing.assert_allclose(inputs.K, box.intrinsics(KITTI_K))
    assert torch.equal(inputs.image_hr, torch.from_numpy(box.apply(rgb)).permute(2, 0, 1) / 255.0)


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory) -> Path:
    """A few KITTI-like (1242 x 375) synthetic images with box and point prompts."""
    config = SynthConfig(num_images=4, seed=5, camera_groups=("kitti_like",),
                         split_fractions=(1.0, 0.0, 0.0))  # fmt: skip
    return generate_dataset(config, tmp_path_factory.mktemp("kitti") / "ds", progress=False)


@pytest.mark.parametrize("preset", ["tiny", "smol"])
def test_prompts_land_on_their_object_in_the_canvas(kitti_root, preset):
    """A box and a point inside an object, mapped to the canvas, fall in its canvas box."""
    config = get_preset(preset)
    data = read_dataset(kitti_root)
    queries = GroundingDataset(kitti_root, "train", config, dataset=data)
    height, width = config.high_res.image_size
    size = np.array([width, height] * 2, dtype=np.float64)
    checked = {"box_prompt": 0, "point_prompt": 0, "object": 0}
    for index, query in enumerate(queries.queries):
        record = data.image(query.image_id)
        assert (record.width, record.height) == (1242, 375)
        box = Letterbox.fit(record.width, record.height, width, height)
        item = queries[index]
        target_box = item["box2d"].double().numpy() * size  # canvas px, from the dataset
        lo, hi = target_box[:2] - 1e-6, target_box[2:] + 1e-6
        if query.point_prompt is not None:
            point = box.points_to_canvas(np.asarray(query.point_prompt))
            assert (lo <= point).all() and (point <= hi).all(), (query.query_id, point, target_box)
            assert item["point_prompt"].double().numpy() * size[:2] == pytest.approx(
                point, abs=1e-3
            )
            checked["point_prompt"] += 1
        if query.box_prompt is not None:
            prompt = box.boxes_to_canvas(np.asarray(query.box_prompt))
            centre = (prompt[:2] + prompt[2:]) / 2
            assert (lo <= centre).all() and (centre <= hi).all(), (query.query_id, prompt)
            assert item["box_prompt"].double().numpy() * size == pytest.approx(prompt, abs=1e-3)
            checked["box_prompt"] += 1
        # every object: its own box and a point inside it land inside its canvas box
        for obj_index, obj in enumerate(record.objects):
            if not bool(item["obj_valid"][obj_index]):
                continue
            canvas_box = item["obj_box2d"][obj_index].double().numpy() * size
            mapped = box.boxes_to_canvas(obj.bbox2D_tight)
            np.testing.assert_allclose(mapped, canvas_box, atol=1e-3)
            inner = obj.bbox2D_tight[:2] + 0.3 * (obj.bbox2D_tight[2:] - obj.bbox2D_tight[:2])
            point = box.points_to_canvas(inner)
            assert (canvas_box[:2] <= point).all() and (point <= canvas_box[2:]).all()
            # and the projected 3D centre moves like a point
            centre = geometry.project(obj.center_cam, box.intrinsics(record.K))
            np.testing.assert_allclose(
                centre, item["obj_center_uv"][obj_index].double().numpy() * size[:2], atol=1e-3
            )
            checked["object"] += 1
    assert min(checked.values()) > 0, checked


def test_predictor_normalises_prompts_as_the_dataset_does(kitti_root):
    """The model sees a user's pixel prompts exactly where training put the dataset's."""
    torch.manual_seed(0)
    predictor = Predictor(LLMI3D(get_preset("tiny")), answer_policy="ground")
    seen = []
    locate = predictor.model.locate

    def spy(context, text, policy, box_prompt=None, point_prompt=None):
        seen.append((text, box_prompt, point_prompt))
        return locate(context, text, policy, box_prompt=box_prompt, point_prompt=point_prompt)

    predictor.model.locate = spy
    data = read_dataset(kitti_root)
    queries = GroundingDataset(kitti_root, "train", predictor.config, dataset=data)
    index = next(i for i, q in enumerate(queries.queries) if q.box_prompt is not None)
    query = queries.queries[index]
    record = data.image(query.image_id)
    rgb = load_rgb(data.root / record.file_name, record)
    predictor.predict(rgb, record.K, query.text, box2d=query.box_prompt)
    text, box_prompt, point_prompt = seen[-1]
    item = queries[index]
    assert point_prompt is None
    torch.testing.assert_close(box_prompt, item["box_prompt"], rtol=0, atol=1e-3)
    assert "(box: [" in text
