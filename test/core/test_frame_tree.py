"""TF's frame tree without tf2_ros (llmi3d_core.frame_tree) and the floor a camera pose gives."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from llmi3d_core.errors import InvalidInputError
from llmi3d_core.frame_tree import HISTORY_S, FrameLookupError, FrameTree, RigidTransform
from llmi3d_core.ground_plane import GroundPlane
from llmi3d_core.messages import matrix_to_quaternion, transform_of

# camera_link (REP 103 body: x forward, y left, z up) -> its optical frame (x right, y down,
# z forward): the columns are the optical axes in camera_link coordinates
LINK_TO_OPTICAL = RigidTransform(
    np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), np.zeros(3)
)


def _random(rng: np.random.Generator) -> RigidTransform:
    return RigidTransform(Rotation.random(random_state=rng).as_matrix(), rng.normal(size=3))


def _apply(transform: RigidTransform, point: np.ndarray) -> np.ndarray:
    return transform.rotation @ point + transform.translation


def _camera_on_robot(height_m: float, pitch_deg: float, roll_deg: float) -> FrameTree:
    """base_footprint -> base_link -> camera_link (pitched, rolled) -> camera_optical."""
    tree = FrameTree()
    tree.set("base_footprint", "base_link", RigidTransform(np.eye(3), np.array([0.0, 0, 0.1])))
    # intrinsic roll about x, then pitch about y (positive: looking down), as a URDF's rpy
    tilt = Rotation.from_euler("ZYX", [0.0, pitch_deg, roll_deg], degrees=True).as_matrix()
    mount = RigidTransform(tilt, np.array([0.2, -0.05, height_m - 0.1]))
    tree.set("base_link", "camera_link", mount)
    tree.set("camera_link", "camera_optical", LINK_TO_OPTICAL)
    return tree


def test_a_chain_composes_like_applying_each_transform_in_turn():
    rng = np.random.default_rng(0)
    a, b, c = _random(rng), _random(rng), _random(rng)
    tree = FrameTree()
    tree.set("world", "a", a)
    tree.set("/a", "b", b)  # a leading slash is ignored, as tf2 does
    tree.set("b", "c", c)
    point = rng.normal(size=3)
    expected = _apply(a, _apply(b, _apply(c, point)))
    np.testing.assert_allclose(_apply(tree.lookup("world", "c"), point), expected)
    # the other way round is the inverse
    np.testing.assert_allclose(_apply(tree.lookup("c", "world"), expected), point, atol=1e-12)
    # between two branches, through their common ancestor
    d = _random(rng)
    tree.set("a", "d", d)
    np.testing.assert_allclose(
        _apply(tree.lookup("d", "c"), point),
        _apply(d.inverse(), _apply(b, _apply(c, point))),
        atol=1e-12,
    )
    assert tree.frames == ["a", "b", "c", "d", "world"]
    np.testing.assert_allclose(tree.lookup("b", "b").rotation, np.eye(3))


def test_a_newer_transform_of_an_edge_replaces_the_old():
    tree = FrameTree()
    tree.set("base", "camera", RigidTransform(np.eye(3), np.array([0.0, 0.0, 1.0])))
    tree.set("base", "camera", RigidTransform(np.eye(3), np.array([0.0, 0.0, 1.5])))
    np.testing.assert_allclose(tree.lookup("base", "camera").translation, [0.0, 0.0, 1.5])


def _lift(z: float) -> RigidTransform:
    return RigidTransform(np.eye(3), np.array([0.0, 0.0, z]))


def test_a_moving_edge_is_read_at_the_asked_time():
    """Each moving edge gives its sample nearest the asked time; static ones hold at every time."""
    second = 1_000_000_000
    tree = FrameTree()
    tree.set("head", "camera", _lift(0.1))  # static
    tree.set("base", "head", _lift(1.0), stamp_ns=10 * second)
    tree.set("base", "head", _lift(1.2), stamp_ns=11 * second)
    tree.set("base", "head", _lift(1.1), stamp_ns=int(10.5 * second))  # late, kept in order
    height = lambda stamp: tree.lookup("base", "camera", stamp).translation[2]  # noqa: E731
    assert height(10 * second) == pytest.approx(1.1)
    tree.set("base", "head", _lift(1.05), stamp_ns=10 * second)  # the same instant: replaced
    assert height(10 * second) == pytest.approx(1.15)
    assert height(int(10.2 * second)) == pytest.approx(1.15)
    assert height(int(10.9 * second)) == pytest.approx(1.3)
    assert height(None) == pytest.approx(1.3)  # the newest
    assert height(int(11.9 * second)) == pytest.approx(1.3)  # within MAX_GAP_S
    with pytest.raises(FrameLookupError, match=r"'base' -> 'head' is 1.50 s before the asked"):
        height(int(12.5 * second))
    with pytest.raises(FrameLookupError, match=r"is 2.00 s after the asked"):
        height(8 * second)
    # samples more than HISTORY_S older than the newest are dropped
    tree.set("base", "head", _lift(2.0), stamp_ns=int((12 + HISTORY_S) * second))
    with pytest.raises(FrameLookupError, match="after the asked"):
        height(10 * second)
    # an edge that turns static holds at every time again
    tree.set("base", "head", _lift(0.5))
    assert height(10 * second) == pytest.approx(0.6)


def test_lookups_that_cannot_be_made_say_why():
    tree = FrameTree()
    with pytest.raises(FrameLookupError, match=r"'base' is in no transform .*none yet"):
        tree.lookup("base", "camera")
    tree.set("base", "camera", RigidTransform.identity())
    tree.set("map", "odom", RigidTransform.identity())
    with pytest.raises(FrameLookupError, match=r"known frames: base, camera, map, odom"):
        tree.lookup("base_footprint", "camera")
    with pytest.raises(FrameLookupError, match="not connected"):
        tree.lookup("map", "camera")
    with pytest.raises(FrameLookupError, match="two different, non-empty frames"):
        tree.set("base", "", RigidTransform.identity())
    tree.set("camera", "map", RigidTransform.identity())
    tree.set("odom", "base", RigidTransform.identity())  # map -> odom -> base -> camera -> map
    with pytest.raises(FrameLookupError, match="loop"):
        tree.lookup("base", "camera")


def test_transform_of_reads_a_geometry_msgs_transform():
    rng = np.random.default_rng(1)
    pose = _random(rng)
    x, y, z, w = matrix_to_quaternion(pose.rotation)
    message = SimpleNamespace(
        translation=SimpleNamespace(x=pose.translation[0], y=pose.translation[1],
                                    z=pose.translation[2]),
        rotation=SimpleNamespace(x=x, y=y, z=z, w=w),
    )  # fmt: skip
    read = transform_of(message)
    np.testing.assert_allclose(read.rotation, pose.rotation, atol=1e-12)
    np.testing.assert_allclose(read.translation, pose.translation)
    message.rotation = SimpleNamespace(x=0.0, y=0.0, z=0.0, w=0.0)
    with pytest.raises(InvalidInputError, match="quaternion"):
        transform_of(message)
    message.rotation = SimpleNamespace(x=0.0, y=0.0, z=0.0, w=1.0)
    message.translation.x = math.nan
    with pytest.raises(InvalidInputError, match="translation"):
        transform_of(message)


@pytest.mark.parametrize(
    ("height_m", "pitch_deg", "roll_deg"),
    [(1.2, 0.0, 0.0), (0.6, 15.0, 0.0), (1.5, -5.0, 8.0), (2.0, 40.0, -20.0), (1.0, 10.0, 180.0)],
)
def test_the_floor_of_a_camera_pose_holds_the_floor_points(height_m, pitch_deg, roll_deg):
    """The oracle: points on base_footprint's z = 0, seen from the optical frame, lie on the
    GroundPlane from_camera_pose builds (down . X = height), and the angles come back."""
    tree = _camera_on_robot(height_m, pitch_deg, roll_deg)
    plane = GroundPlane.from_camera_pose(tree.lookup("base_footprint", "camera_optical"))
    assert plane.height_m == pytest.approx(height_m)
    assert plane.pitch_deg == pytest.approx(pitch_deg)
    assert abs(plane.roll_deg) == pytest.approx(abs(roll_deg))  # +-180 are one roll
    # camera_pose gives the pose back (this robot's heading is the camera's), but for where on
    # the floor the camera stands
    pose = plane.camera_pose()
    truth = tree.lookup("base_footprint", "camera_optical")
    np.testing.assert_allclose(pose.rotation, truth.rotation, atol=1e-9)
    assert pose.translation[2] == pytest.approx(truth.translation[2])
    to_camera = tree.lookup("camera_optical", "base_footprint")
    rng = np.random.default_rng(2)
    for x, y in rng.uniform(-5.0, 5.0, size=(20, 2)):
        on_floor = _apply(to_camera, np.array([x, y, 0.0]))
        assert float(plane.down @ on_floor) == pytest.approx(height_m, abs=1e-9)


def test_a_pose_below_the_floor_or_looking_straight_down_is_refused():
    below = _camera_on_robot(-0.3, 10.0, 0.0).lookup("base_footprint", "camera_optical")
    with pytest.raises(InvalidInputError, match="above"):
        GroundPlane.from_camera_pose(below)
    down = _camera_on_robot(1.0, 90.0, 0.0).lookup("base_footprint", "camera_optical")
    with pytest.raises(InvalidInputError, match="below the horizon"):
        GroundPlane.from_camera_pose(down)
