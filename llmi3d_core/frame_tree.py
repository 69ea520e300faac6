"""A robot's coordinate frames as TF publishes them: one transform per parent -> child edge.

ROS robots publish their frames on /tf and /tf_static (each message: a parent frame, a child
frame, and the child's pose in the parent). The node needs one lookup: the camera's pose in the
floor's frame (e.g. base_footprint), to place boxes on the floor (llmi3d_core.ground_plane).
tf2_ros does this and llmi3d_ros uses it when it is installed; it is not among the PyPI ROS 2
wheels this package installs, so this small tree is the fallback. Static transforms (/tf_static)
hold at every time; a moving one (/tf) keeps its last HISTORY_S of stamped samples, and a lookup
at an image's stamp takes the sample of each edge nearest to it (tf2 interpolates between the two
around it; at the rates robots publish TF, 30-100 Hz, the nearest is within half a period).

Not thread-safe; its ROS owner holds a lock.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from llmi3d_core.errors import Llmi3dError

HISTORY_S = 10.0  # seconds of a moving edge's samples kept (tf2_ros's buffer keeps 10 s too)
MAX_GAP_S = 1.0  # a moving edge's sample further than this from the asked time is too old


class FrameLookupError(Llmi3dError):
    """No transform between two frames is known; the message says what is missing."""


@dataclass(frozen=True)
class RigidTransform:
    """A frame's pose in another: x_parent = rotation @ x_child + translation.

    Attributes:
        rotation: (3, 3) rotation matrix, child axes in parent coordinates.
        translation: (3,) the child frame's origin in the parent frame, m.
    """

    rotation: np.ndarray
    translation: np.ndarray

    @classmethod
    def identity(cls) -> RigidTransform:
        """The transform of a frame to itself."""
        return cls(np.eye(3), np.zeros(3))

    def __matmul__(self, other: RigidTransform) -> RigidTransform:
        """Compose: (a @ b) maps b's child frame into a's parent frame."""
        return RigidTransform(
            self.rotation @ other.rotation, self.rotation @ other.translation + self.translation
        )

    def inverse(self) -> RigidTransform:
        """The parent's pose in the child frame."""
        rotation_t = self.rotation.T
        return RigidTransform(rotation_t, -rotation_t @ self.translation)


@dataclass
class _Edge:
    """A child frame's parent and its poses there: one (stamp None) when static."""

    parent: str
    stamps_ns: list[int] | None  # sorted; None: static
    poses: list[RigidTransform]

    def pose_at(self, child: str, stamp_ns: int | None) -> RigidTransform:
        stamps = self.stamps_ns
        if stamps is None or stamp_ns is None:
            return self.poses[-1]
        index = bisect.bisect_left(stamps, stamp_ns)
        around = [i for i in (index - 1, index) if 0 <= i < len(stamps)]
        nearest = min(around, key=lambda i: abs(stamps[i] - stamp_ns))
        gap_s = (stamps[nearest] - stamp_ns) / 1e9
        if abs(gap_s) > MAX_GAP_S:
            when = "after" if gap_s > 0 else "before"
            raise FrameLookupError(
                f"the nearest transform {self.parent!r} -> {child!r} is {abs(gap_s):.2f} s "
                f"{when} the asked time (at most {MAX_GAP_S:g} s is used)"
            )
        return self.poses[nearest]


@dataclass
class FrameTree:
    """TF's edges (static, or moving with their recent samples) and lookups along them."""

    _edges: dict[str, _Edge] = field(default_factory=dict)  # by child frame

    def set(
        self, parent: str, child: str, transform: RigidTransform, stamp_ns: int | None = None
    ) -> None:
        """Record `child`'s pose in `parent` at `stamp_ns` (None: static, at every time).

        A new parent, or a static edge turning moving or back, replaces the child's edge, as TF
        does. Frame names are taken without a leading "/" (tf2 ignores it too).
        """
        parent, child = _name(parent), _name(child)
        if not parent or not child or parent == child:
            raise FrameLookupError(
                f"a transform needs two different, non-empty frames, got {parent!r} -> {child!r}"
            )
        edge = self._edges.get(child)
        static = stamp_ns is None
        if edge is None or edge.parent != parent or (edge.stamps_ns is None) != static:
            edge = self._edges[child] = _Edge(parent, None if static else [], [])
        if edge.stamps_ns is None or stamp_ns is None:
            edge.poses[:] = [transform]
            return
        index = bisect.bisect_left(edge.stamps_ns, stamp_ns)
        if index < len(edge.stamps_ns) and edge.stamps_ns[index] == stamp_ns:
            edge.poses[index] = transform  # a newer word on the same instant
        else:
            edge.stamps_ns.insert(index, stamp_ns)
            edge.poses.insert(index, transform)
        keep = bisect.bisect_left(edge.stamps_ns, edge.stamps_ns[-1] - int(HISTORY_S * 1e9))
        del edge.stamps_ns[:keep], edge.poses[:keep]

    @property
    def frames(self) -> list[str]:
        """Every frame named by an edge, sorted."""
        names = set(self._edges) | {edge.parent for edge in self._edges.values()}
        return sorted(names)

    def lookup(self, target: str, source: str, stamp_ns: int | None = None) -> RigidTransform:
        """The `source` frame's pose in `target`: x_target = result applied to x_source.

        At `stamp_ns` each moving edge gives its sample nearest that time (module docstring);
        None takes the newest of each.

        Raises:
            FrameLookupError: either frame is unknown, the two are not connected, or a moving
                edge between them has no sample within MAX_GAP_S of `stamp_ns`.
        """
        target, source = _name(target), _name(source)
        if target and target == source:
            return RigidTransform.identity()
        known = set(self.frames)
        for what, name in (("target", target), ("source", source)):
            if name not in known:
                listed = ", ".join(self.frames) or "none yet"
                raise FrameLookupError(
                    f"{what} frame {name!r} is in no transform received on /tf or /tf_static "
                    f"(known frames: {listed})"
                )
        source_up = self._to_root(source, stamp_ns)  # ancestor -> the frame's pose in it
        target_up = self._to_root(target, stamp_ns)
        common = next((frame for frame in source_up if frame in target_up), None)
        if common is None:
            raise FrameLookupError(
                f"frames {target!r} and {source!r} are not connected: their trees have roots "
                f"{next(reversed(target_up))!r} and {next(reversed(source_up))!r}"
            )
        return target_up[common].inverse() @ source_up[common]

    def _to_root(self, frame: str, stamp_ns: int | None) -> dict[str, RigidTransform]:
        """`frame`'s pose in each of its ancestors, nearest first (itself first, as identity)."""
        poses = {frame: RigidTransform.identity()}
        pose, current = poses[frame], frame
        while current in self._edges:
            edge = self._edges[current]
            if edge.parent in poses:
                raise FrameLookupError(f"the transforms form a loop through frame {edge.parent!r}")
            pose = edge.pose_at(current, stamp_ns) @ pose
            poses[edge.parent], current = pose, edge.parent
        return poses


def _name(frame: str) -> str:
    return frame.strip().lstrip("/")


__all__ = ["HISTORY_S", "MAX_GAP_S", "FrameLookupError", "FrameTree", "RigidTransform"]
