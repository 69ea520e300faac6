"""The floor under a calibrated camera, and boxes moved along their viewing rays to stand on it.

A monocular box is placed in depth from its apparent size and its category's usual size, so an
instance larger than usual comes out too near, and a smaller one too far. A robot with a fixed
camera knows where the floor is: the camera's height above it and its pitch (and roll), from its
URDF or a one-off calibration. An object standing on that floor has its bottom face on the plane,
which fixes its distance along the viewing ray without any size prior:

    n = (sin r cos p, cos r cos p, sin p)     the "down" direction in the optical frame
                                               (REP 103: x right, y down, z forward)
    b = centre + (H / 2) n                     the centre of its bottom face, standing upright
    s = h / (n . b)                            the scale along the ray that puts b on n . X = h

The box's centre and its dimensions are both scaled by s (so its projection, which the model
read from the image, does not change), and it is stood upright on the plane (its local y, the
height axis, along n; its heading kept). Measured on the default model's synthetic test split
with the scenes' true camera height and pitch, answers as the node gives them (BENCHMARKS.md,
section 1): Acc@0.25 25.9 -> 38.5 %, Acc@0.5 8.2 -> 16.3 %, mean depth error 2.27 -> 1.89 m.

Not every object stands on the floor (a cup on a table, a screen on a wall). A box that would
move by more than `max_scale` either way is left as the model gave it: a cup on a 0.75 m table
seen from a 1.2 m camera would need s = 2.7. The synthetic scenes put every object on the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llmi3d_core.errors import InvalidInputError
from llmi3d_core.frame_tree import RigidTransform
from llmi3d_core.geometry import Box3D

# s outside [1 / MAX_SCALE, MAX_SCALE]: the object is not on the floor (or the box is wrong);
# measured on the synthetic test split, the bound changes no answer there.
MAX_SCALE = 2.0
# the steepest camera whose roll from_camera_pose reads: at +-90 the roll is undefined
MAX_PITCH_DEG = 89.0


@dataclass(frozen=True)
class GroundPlane:
    """Where the floor is relative to a camera (all objects asked about stand on it).

    Attributes:
        height_m: the optical centre's height above the floor, m (> 0).
        pitch_deg: tilt of the optical axis below the horizon, degrees (positive: looking down).
        roll_deg: rotation about the optical axis, degrees (positive: the image's right side, +x,
            tilted towards the floor; 180: a camera mounted upside down).
        max_scale: boxes that would move along their ray by more than this factor either way are
            left alone (module docstring).

    Raises:
        InvalidInputError: a value out of range or not a finite number.
    """

    height_m: float
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    max_scale: float = MAX_SCALE

    def __post_init__(self) -> None:
        limits = {
            "height_m": (0.0, math.inf),
            "pitch_deg": (-90.0, 90.0),
            "roll_deg": (-180.0, 180.0),
            "max_scale": (1.0, math.inf),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            is_number = isinstance(value, int | float) and not isinstance(value, bool)
            closed = name == "roll_deg"  # every roll is a camera's; +-180 are the same one
            finite = is_number and math.isfinite(value)
            inside = finite and (low <= value <= high if closed else low < value < high)
            if not inside:
                interval = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"
                raise InvalidInputError(
                    f"ground plane {name} must be a finite number in {interval}, got {value!r}"
                )
            object.__setattr__(self, name, float(value))

    @classmethod
    def from_camera_pose(
        cls, camera_in_floor: RigidTransform, max_scale: float = MAX_SCALE
    ) -> GroundPlane:
        """The floor z = 0 of a frame whose z points up, from the optical frame's pose in it.

        That frame is a robot's base_footprint (REP 120: on the ground under the robot, z up),
        and the pose is what TF gives for the camera's optical frame (REP 103: x right, y down,
        z forward) in it.

        Raises:
            InvalidInputError: the camera is not above z = 0, or looks straight up or down.
        """
        height = float(camera_in_floor.translation[2])
        if not (math.isfinite(height) and height > 0.0):
            raise InvalidInputError(
                f"the camera is {height:.3f} m above the floor frame's z = 0; it must be above "
                "it (is the floor frame on the ground, with z up, like base_footprint?)"
            )
        down = -np.asarray(camera_in_floor.rotation, dtype=np.float64)[2, :]  # R^T (0, 0, -1)
        pitch = math.degrees(math.asin(float(np.clip(down[2], -1.0, 1.0))))
        if abs(pitch) > MAX_PITCH_DEG:
            raise InvalidInputError(
                f"the camera's optical axis is {pitch:.1f} degrees below the horizon; the floor "
                f"is used up to {MAX_PITCH_DEG:g} degrees either way"
            )
        roll = math.degrees(math.atan2(float(down[0]), float(down[1])))
        return cls(height, pitch, roll, max_scale)

    def camera_pose(self) -> RigidTransform:
        """The optical frame's pose in a floor frame under the camera (from_camera_pose's inverse).

        The floor frame has z up, x along the camera's heading and its origin on the floor under
        the camera: what TF gives in base_footprint for a camera looking straight ahead.
        """
        pitch, roll = math.radians(self.pitch_deg), math.radians(self.roll_deg)
        cp, sp, cr, sr = math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
        # the body frame (x forward, y left, z up) pitched about y, then rolled about x ...
        tilt = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]]) @ np.array(
            [[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]]
        )
        # ... and its optical frame: x right = -y, y down = -z, z forward = x (REP 103)
        body_to_optical = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
        return RigidTransform(tilt @ body_to_optical, np.array([0.0, 0.0, self.height_m]))

    @property
    def down(self) -> np.ndarray:
        """(3,) unit "down" direction (the floor's normal, pointing into it), optical frame."""
        pitch, roll = math.radians(self.pitch_deg), math.radians(self.roll_deg)
        return np.array(
            [math.sin(roll) * math.cos(pitch), math.cos(roll) * math.cos(pitch), math.sin(pitch)]
        )

    def place(self, box: Box3D) -> Box3D:
        """The box moved along its viewing ray onto the floor and stood upright there.

        Unchanged when its bottom face is at or above the horizon, or when the move would scale
        it by more than `max_scale` either way.
        """
        down = self.down
        # the bottom face's centre once the box stands upright: centre + (H / 2) down
        below = float(down @ box.center) + box.dims_lwh[2] / 2  # m below the camera
        if below <= 0.0:
            return box
        scale = self.height_m / below
        if not 1.0 / self.max_scale <= scale <= self.max_scale:
            return box
        return Box3D(box.center * scale, box.dims_lwh * scale, upright(box.R, down))


def upright(R: np.ndarray, down: np.ndarray) -> np.ndarray:
    """The rotation R with its height axis (local y) turned onto `down`, its heading kept."""
    length = R[:, 0] - (R[:, 0] @ down) * down  # local x (L) projected onto the floor
    if np.linalg.norm(length) < 1e-6:  # x was vertical: take the heading from local z
        width = R[:, 2] - (R[:, 2] @ down) * down
        length = np.cross(down, width)
    length = length / np.linalg.norm(length)
    return np.stack([length, down, np.cross(length, down)], axis=1)


def record_ground_plane(extra: dict[str, object]) -> GroundPlane | None:
    """A dataset image's ground plane from its `extra`, or None when it has none.

    The synthetic generator writes camera_height_m and camera_pitch_deg.
    """
    if "camera_height_m" not in extra:
        return None
    return GroundPlane(
        float(extra["camera_height_m"]),  # type: ignore[arg-type]
        float(extra.get("camera_pitch_deg", 0.0)),  # type: ignore[arg-type]
        float(extra.get("camera_roll_deg", 0.0)),  # type: ignore[arg-type]
    )


__all__ = ["MAX_PITCH_DEG", "MAX_SCALE", "GroundPlane", "record_ground_plane", "upright"]
