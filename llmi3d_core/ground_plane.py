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
section 1), along the ray alone: Acc@0.25 25.9 -> 38.5 %, Acc@0.5 8.2 -> 16.3 %, mean depth error
2.27 -> 1.89 m; with the 2D box's bottom edge (below): 42.1 %, 18.3 %, 1.66 m.

The distance then hangs on one image row, where the bottom face meets the floor: near the
horizon a pixel is a lot of metres. Given the camera's K and the object's 2D box (`SeenBottom`),
`place` reads that row twice: the projection of the bottom face's centre above, and the row that
puts the box's lowest corner on the 2D box's bottom edge (the crop heads correct that edge). It
stands the box at EDGE_WEIGHT of the way from the first to the second (the box scaled with its
distance, so its size in the image stays). With the true row instead the same boxes would reach
Acc@0.25 74 %: the row is what limits the floor.

The floor has to come from outside the image. Fitted from the model's own boxes it gains
nothing; measured 2026-12-04 on the default model's test answers (1,142 single-target queries,
its best box every time; Acc@0.25 25.3 % as given, 45.0 % on the true floor). The fit took each
image's candidate boxes (union of all its queries' answers), used the median of the heights
below the camera of their bottom faces, and chose the pitch that minimised their spread:
- height and pitch fitted: 20.8 % (pitch off by 5 degrees at the median, height x 1.4);
- height fitted, true pitch: 24.9 % (height within 8 % at the quartiles).
Each box's depth errs by about 18 % (log std). A floor fitted from those boxes carries the same
error, and a box moved onto it is placed no better than the model placed it.

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
from llmi3d_core.geometry import Box3D, box3d_corners, project

# s outside [1 / MAX_SCALE, MAX_SCALE]: the object is not on the floor (or the box is wrong);
# measured on the synthetic test split, the bound changes no answer there.
MAX_SCALE = 2.0
# the steepest camera whose roll from_camera_pose reads: at +-90 the roll is undefined
MAX_PITCH_DEG = 89.0
# how far `place` moves the floor row from the bottom face's projected centre towards the row
# the 2D box's bottom edge gives (module docstring). Chosen on the default model's validation
# split (2,520 queries, its best box every time, true floor; Acc@0.25 / Acc@0.5 / mIoU): 0 (the
# centre alone) 35.5 / 14.9 / 20.0, 0.3 38.3 / 16.7 / 21.1, 0.5 39.6 / 16.9 / 21.6, 0.7 41.1 /
# 16.8 / 22.0, 1 (the edge alone) 39.2 / 14.2 / 20.7; keeping the box's metric size instead of
# its size in the image: 38.1 / 16.2 / 21.3 at 0.7. With EDGE_MAX_RATIO as below: val 40.7 /
# 17.3 / 22.5; test 41.5 -> 44.9 / 17.0 -> 19.0 / 22.4 -> 24.4. Not a third reading from the dense
# heads' lower vertical keypoint (the row of the bottom face's centre they regress for the height
# depth), measured 2026-12-04 on the same split (2,012 single-target queries): blended into the
# row at 0.3 / 0.5 / 1, Acc@0.25 40.0 / 40.0 / 38.0 against 40.7; its median row error on grounded
# queries is no smaller (10+ m away: 4.1 against 2.0 px). With the true 2D box's bottom edge
# `place` reaches 45.4 %, with the true row 69.2 %: most of the gap is the edge-to-foot geometry.
EDGE_WEIGHT = 0.7
# ... only for a box whose lowest corner lies less than this fraction of its foot's distance below
# the horizon under its foot (in rows): for larger ones (near objects) the edge hurts. Chosen on
# the same validation split with EDGE_WEIGHT (0.5, 0.7, 1) by mean IoU over the boxes moved:
# 0.03 / 0.05 / 0.07 / 0.1 / 0.2 / none 20.4 / 21.3 / 21.7 / 21.5 / 21.2 / 20.4 % at 0.7 (the
# centre alone 18.9 %); 0.7 at 0.07 was best of all.
EDGE_MAX_RATIO = 0.07


@dataclass(frozen=True)
class SeenBottom:
    """Where an object's image ends below: its 2D box's bottom row and the camera that saw it.

    Attributes:
        K: (3, 3) intrinsics of the image.
        row_px: the 2D box's bottom edge (y2), pixels of that image.
    """

    K: np.ndarray
    row_px: float


def seen_bottom(K: np.ndarray, box2d: np.ndarray, image_height: int) -> SeenBottom | None:
    """The 2D box's bottom edge, or None when it is the image's own (the object is cut there)."""
    row = float(box2d[3])
    if not math.isfinite(row) or row >= image_height - 2:
        return None
    return SeenBottom(np.asarray(K, dtype=np.float64), row)


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

    def place(self, box: Box3D, seen: SeenBottom | None = None) -> Box3D:
        """The box moved onto the floor and stood upright there (module docstring).

        Without `seen`, along its viewing ray; with it, to the floor row blended from the 2D
        box's bottom edge. Unchanged when its bottom face is at or above the horizon, or when the
        move would scale it by more than `max_scale` either way.
        """
        down = self.down
        # the bottom face's centre once the box stands upright: centre + (H / 2) down
        below = float(down @ box.center) + box.dims_lwh[2] / 2  # m below the camera
        if below <= 0.0:
            return box
        scale = self.height_m / below
        if not 1.0 / self.max_scale <= scale <= self.max_scale:
            return box
        placed = Box3D(box.center * scale, box.dims_lwh * scale, upright(box.R, down))
        if seen is None:
            return placed
        moved = self._towards_edge(placed, seen)
        further = float(np.linalg.norm(moved.center) / np.linalg.norm(placed.center))
        if not 1.0 / self.max_scale <= scale * further <= self.max_scale:
            return placed
        return moved

    def _towards_edge(self, placed: Box3D, seen: SeenBottom) -> Box3D:
        """`placed` (on the floor) moved EDGE_WEIGHT of the way to the 2D box's bottom row.

        Along the column of its bottom face's centre, scaled with its distance; unchanged where
        the floor does not lie below the horizon in the image (a camera upside down) or no row
        puts its lowest corner on the edge.
        """
        down, K = self.down, seen.K
        bottom = placed.center + placed.dims_lwh[2] / 2 * down
        u, v_centre = (float(x) for x in project(bottom[None], K, validate=False)[0])
        # the viewing ray of pixel (u, v) is origin + v * step; it meets the floor where
        # down . ray > 0, i.e. below the horizon row v_horizon
        origin = np.linalg.solve(K, np.array([u, 0.0, 1.0]))
        step = np.linalg.solve(K, np.array([0.0, 1.0, 0.0]))
        rate = float(down @ step)
        if rate <= 1e-12:
            return placed
        v_horizon = -float(down @ origin) / rate

        def standing_at(row: float) -> Box3D:
            ray = origin + row * step
            foot = ray * (self.height_m / float(down @ ray))
            dims = placed.dims_lwh * float(np.linalg.norm(foot) / np.linalg.norm(bottom))
            return Box3D(foot - dims[2] / 2 * down, dims, placed.R)

        def lowest_row(row: float) -> float:
            candidate = standing_at(row)
            corners = box3d_corners(candidate.center, candidate.dims_lwh, candidate.R)
            if (corners[:, 2] <= 1e-6).any():
                return math.inf  # partly behind the camera: nearer than any edge row
            return float(project(corners, K, validate=False)[:, 1].max())

        if v_centre <= v_horizon:
            return placed
        # a footprint tall in the image against its distance below the horizon (a near object)
        # leaves the edge to its heading and size, which err more than the centre's row there
        if (lowest_row(v_centre) - v_centre) / (v_centre - v_horizon) >= EDGE_MAX_RATIO:
            return placed
        # lowest_row grows with the row of the foot, and the lowest corner is below the foot,
        # so the edge's row is bracketed by (just under the horizon, the edge itself)
        low, high = v_horizon + 1e-3, seen.row_px
        if high <= low or lowest_row(low) > seen.row_px:
            return placed
        for _ in range(40):  # bisection to well under a pixel
            middle = (low + high) / 2
            if lowest_row(middle) < seen.row_px:
                low = middle
            else:
                high = middle
        row = (1.0 - EDGE_WEIGHT) * v_centre + EDGE_WEIGHT * (low + high) / 2
        return standing_at(row)


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


__all__ = [
    "EDGE_MAX_RATIO",
    "EDGE_WEIGHT",
    "MAX_PITCH_DEG",
    "MAX_SCALE",
    "GroundPlane",
    "SeenBottom",
    "record_ground_plane",
    "seen_bottom",
    "upright",
]
