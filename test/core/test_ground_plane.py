"""Boxes stood on a calibrated camera's floor (llmi3d_core.ground_plane)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset
from llmi3d_core.errors import InvalidInputError
from llmi3d_core.eval_predict import predict_with_model
from llmi3d_core.geometry import Box3D, project
from llmi3d_core.ground_plane import (
    EDGE_WEIGHT,
    GroundPlane,
    SeenBottom,
    record_ground_plane,
    seen_bottom,
    upright,
)
from llmi3d_core.inference import Predictor
from llmi3d_core.model import LLMI3D, get_preset

K_VGA = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])


def _yaw(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _pitch(degrees: float) -> np.ndarray:
    """Level frame -> camera frame of a camera pitched down by `degrees` (as the generator)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _standing(height_m: float, pitch_deg: float, x: float, z: float, dims, yaw: float) -> Box3D:
    """A box standing on the floor of a camera `height_m` up, pitched down `pitch_deg`."""
    level_to_cam = _pitch(pitch_deg)
    centre_level = np.array([x, height_m - dims[2] / 2, z])  # level frame: y down, floor y = h
    return Box3D(level_to_cam @ centre_level, np.asarray(dims, float), level_to_cam @ _yaw(yaw))


def _corners_2d(box: Box3D) -> np.ndarray:
    return project(box.corners(), K_VGA)


@pytest.mark.parametrize("scale", [0.6, 0.9, 1.0, 1.3, 1.9])
@pytest.mark.parametrize("pitch", [-3.0, 0.0, 12.0])
def test_a_box_moved_along_its_ray_is_put_back_on_the_floor(scale, pitch):
    plane = GroundPlane(1.4, pitch)
    truth = _standing(1.4, pitch, x=0.8, z=6.0, dims=(0.9, 0.5, 1.1), yaw=0.7)
    # what a monocular model gets wrong: the distance along the ray (and with it the size)
    seen = Box3D(truth.center * scale, truth.dims_lwh * scale, truth.R)
    placed = plane.place(seen)
    np.testing.assert_allclose(placed.center, truth.center, atol=1e-9)
    np.testing.assert_allclose(placed.dims_lwh, truth.dims_lwh, atol=1e-9)
    np.testing.assert_allclose(placed.R, truth.R, atol=1e-9)
    # the image of the box does not change: the model read it from the image
    np.testing.assert_allclose(_corners_2d(placed), _corners_2d(seen), atol=1e-6)


def _edge(box: Box3D, shift_px: float = 0.0) -> SeenBottom:
    """The bottom edge of a box's tight 2D box (its lowest projected corner), shifted down."""
    return SeenBottom(K_VGA, float(_corners_2d(box)[:, 1].max()) + shift_px)


@pytest.mark.parametrize("scale", [0.7, 1.0, 1.4])
@pytest.mark.parametrize(("z", "yaw"), [(12.0, 0.3), (20.0, -1.2), (9.0, 2.0)])
def test_the_true_bottom_edge_puts_a_far_box_back_where_it_stands(scale, z, yaw):
    """With the true 2D box, both rows `place` blends are the truth's, so the box lands there."""
    plane = GroundPlane(1.4, 4.0)
    truth = _standing(1.4, 4.0, x=1.0, z=z, dims=(1.8, 0.8, 1.2), yaw=yaw)
    model = Box3D(truth.center * scale, truth.dims_lwh * scale, truth.R)
    placed = plane.place(model, _edge(truth))
    np.testing.assert_allclose(placed.center, truth.center, atol=1e-6)
    np.testing.assert_allclose(placed.dims_lwh, truth.dims_lwh, atol=1e-6)


def test_the_bottom_edge_moves_a_far_box_part_of_the_way():
    """An edge 2 px lower than the box's own lowest corner: the box comes nearer, EDGE_WEIGHT of
    the way in rows, and stays the same size in the image."""
    plane = GroundPlane(1.4, 4.0)
    truth = _standing(1.4, 4.0, x=1.0, z=15.0, dims=(1.8, 0.8, 1.2), yaw=0.3)
    lower = plane.place(truth, _edge(truth, 2.0))
    assert lower.center[2] < truth.center[2]

    def foot(box: Box3D) -> np.ndarray:  # the bottom face's centre
        return box.center + box.dims_lwh[2] / 2 * plane.down

    rows = project(np.stack([foot(lower), foot(truth)]), K_VGA)[:, 1]
    # rows of the foot against rows of the lowest corner: nearly 1:1 for a far box
    assert float(rows[0] - rows[1]) == pytest.approx(EDGE_WEIGHT * 2.0, rel=0.1)
    np.testing.assert_allclose(
        lower.dims_lwh / np.linalg.norm(foot(lower)),
        truth.dims_lwh / np.linalg.norm(foot(truth)),
        rtol=1e-9,
    )
    higher = plane.place(truth, _edge(truth, -2.0))
    assert higher.center[2] > truth.center[2]


def test_the_bottom_edge_is_not_used_where_it_would_hurt():
    plane = GroundPlane(1.4, 4.0)
    # a near box: its footprint spans many rows against its distance below the horizon
    near = _standing(1.4, 4.0, x=0.3, z=2.5, dims=(1.0, 0.8, 0.9), yaw=0.5)
    assert plane.place(near, _edge(near, 5.0)).center == pytest.approx(near.center)
    # an upside-down camera: the floor is above the horizon in the image
    flipped = GroundPlane(1.4, 4.0, 180.0)
    far = Box3D(flipped.down * 1.4 * 10 - 0.6 * flipped.down, np.array([1.8, 0.8, 1.2]), np.eye(3))
    np.testing.assert_allclose(
        flipped.place(far, SeenBottom(K_VGA, 300.0)).center, flipped.place(far).center
    )
    # an edge on the image's border is the border's, not the object's
    assert seen_bottom(K_VGA, np.array([10.0, 20.0, 50.0, 478.5]), 480) is None
    assert seen_bottom(K_VGA, np.array([10.0, 20.0, 50.0, 400.0]), 480) == SeenBottom(K_VGA, 400.0)


def test_a_tilted_box_is_stood_upright_with_its_heading_kept():
    plane = GroundPlane(1.2, 8.0)
    truth = _standing(1.2, 8.0, x=-0.5, z=4.0, dims=(0.6, 0.6, 0.8), yaw=-1.1)
    tilt = np.array(
        [[1.0, 0.0, 0.0], [0.0, math.cos(0.1), -math.sin(0.1)], [0.0, math.sin(0.1), math.cos(0.1)]]
    )
    R = upright(truth.R @ tilt, plane.down)
    np.testing.assert_allclose(R, truth.R, atol=1e-9)
    assert np.linalg.det(R) == pytest.approx(1.0)
    # a box lying on its length axis keeps its heading from its width axis
    lying = truth.R @ np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    R = upright(lying, plane.down)
    np.testing.assert_allclose(R[:, 1], plane.down, atol=1e-9)
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-9)
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_boxes_that_cannot_stand_on_the_floor_are_left_alone():
    plane = GroundPlane(1.2, 0.0)
    # its bottom above the horizon: nothing along its ray reaches the floor
    above = Box3D(np.array([0.0, -1.0, 5.0]), np.array([0.5, 0.5, 0.5]), np.eye(3))
    assert plane.place(above) is above
    # a cup on a 0.75 m table: the floor is 2.7x as far below; not on the floor, so kept
    cup = Box3D(np.array([0.1, 1.2 - 0.75 - 0.05, 2.0]), np.array([0.1, 0.1, 0.1]), np.eye(3))
    assert plane.place(cup) is cup
    # its bottom 2.5x as far below as the floor: the floor would pull it to 40 % of its
    # distance; kept too
    sunk = Box3D(np.array([0.0, 2.8, 8.0]), np.array([0.4, 0.4, 0.4]), np.eye(3))
    assert plane.place(sunk) is sunk
    # exactly at the bound: moved
    edge = Box3D(np.array([0.0, 0.4, 8.0]), np.array([0.4, 0.4, 0.4]), np.eye(3))
    np.testing.assert_allclose(plane.place(edge).center, [0.0, 0.8, 16.0])


def test_down_follows_pitch_and_roll():
    np.testing.assert_allclose(GroundPlane(1.0).down, [0.0, 1.0, 0.0], atol=1e-12)
    # looking down, the floor's normal leans forward (+z); the generator's convention
    np.testing.assert_allclose(GroundPlane(1.0, 30.0).down, _pitch(30.0) @ [0.0, 1.0, 0.0])
    # rolled so that the image's right side (+x) faces the floor
    assert GroundPlane(1.0, 0.0, 10.0).down[0] > 0
    assert np.linalg.norm(GroundPlane(1.0, 20.0, -15.0).down) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height_m": 0.0}, "height_m"),
        ({"height_m": -1.0}, "height_m"),
        ({"height_m": float("nan")}, "height_m"),
        ({"height_m": True}, "height_m"),
        ({"height_m": 1.0, "pitch_deg": 95.0}, "pitch_deg"),
        ({"height_m": 1.0, "roll_deg": "3"}, "roll_deg"),
        ({"height_m": 1.0, "roll_deg": 181.0}, "roll_deg"),
        ({"height_m": 1.0, "max_scale": 1.0}, "max_scale"),
    ],
)
def test_bad_planes_are_rejected(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        GroundPlane(**kwargs)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("ground") / "ds"
    config = SynthConfig(num_images=6, seed=5, split_fractions=(0.0, 0.0, 1.0))
    return generate_dataset(config, out, progress=False)


def test_the_synthetic_records_plane_holds_every_object_in_place(synth_root):
    """The oracle: each true box, moved along its ray, goes back where it was."""
    dataset = read_dataset(synth_root)
    moved = 0
    for record in dataset.images:
        plane = record_ground_plane(record.extra)
        assert plane is not None
        for obj in record.objects:
            truth = Box3D(obj.center_cam, obj.dims_lwh, obj.R_cam)
            seen = Box3D(truth.center * 1.25, truth.dims_lwh * 1.25, truth.R)
            placed = plane.place(seen)
            np.testing.assert_allclose(placed.center, truth.center, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(placed.dims_lwh, truth.dims_lwh, rtol=1e-5)
            moved += 1
    assert moved >= 6
    assert record_ground_plane({}) is None


@pytest.fixture
def predictor() -> Predictor:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return Predictor(LLMI3D(get_preset("tiny")), answer_policy="ground")


def test_the_predictor_stands_its_boxes_on_the_given_floor(predictor):
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    plane = GroundPlane(1.5, 5.0, max_scale=1e6)  # a random-init model's boxes are far off
    plain = predictor.predict(image, K_VGA, "find the lamp", max_results=4)
    placed = predictor.predict(image, K_VGA, "find the lamp", max_results=4, ground_plane=plane)
    assert len(placed) == len(plain) >= 2
    on_floor = 0
    for before, after in zip(plain, placed, strict=True):
        box = Box3D(after.center, after.dims, after.rotation)
        bottom = box.center + box.dims_lwh[2] / 2 * box.R[:, 1]
        if not np.allclose(after.center, before.center):
            assert plane.down @ bottom == pytest.approx(1.5)
            on_floor += 1
        # its 2D outputs and its score are the model's
        np.testing.assert_array_equal(after.box2d, before.box2d)
        np.testing.assert_allclose(after.center_uv, before.center_uv)
        assert after.score == before.score
    assert on_floor >= 1
    with pytest.raises(InvalidInputError, match="ground_planes"):
        predictor.answer_batch([image], [K_VGA], ["find the lamp"], ground_planes=[plane, plane])


def test_evaluating_with_the_ground_plane_needs_it_in_the_records(synth_root, tmp_path, predictor):
    dataset = read_dataset(synth_root)
    queries = dataset.queries[:2]
    results = predict_with_model(predictor, dataset, queries, progress=False, ground_plane=True)
    assert len(results) == 2
    record = dataset.image(queries[0].image_id)
    record.extra.pop("camera_height_m")
    with pytest.raises(InvalidInputError, match="camera_height_m"):
        predict_with_model(predictor, dataset, queries[:1], progress=False, ground_plane=True)
