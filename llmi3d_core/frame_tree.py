"""A robot's coordinate frames as TF publishes them: one transform per parent -> child edge.

ROS robots publish their frames on /tf and /tf_static (each message: a parent frame, a child
frame, and the child's pose in the parent). The node needs one lookup: the camera's pose in the
floor's frame (e.g. base_footprint), to place boxes on the floor (llmi3d_core.ground_plane).
tf2_ros does this and llmi3d_ros uses it when it is installed; it is not among the PyPI ROS 2
wheels this package installs, so this small tree is the fallback. It keeps the newest transform
of each edge (no interpolation at an image's stamp): right for frames fixed on the robot, as a
camera's usually are, and close for ones that move slowly against the frame rate.

Not thread-safe; its ROS owner holds a lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmi3d_core.errors import Llmi3dError


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
class FrameTree:
    """The newest transform of each TF edge, and lookups between any two connected frames."""

    # child frame -> (parent frame, the child's pose in the parent)
    _edges: dict[str, tuple[str, RigidTransform]] = field(default_factory=dict)

    def set(self, parent: str, child: str, transform: RigidTransform) -> None:
        """Record `child`'s pose in `parent` (replacing the child's previous edge, as TF does).

        Frame names are taken without a leading "/" (tf2 ignores it too).
        """
        parent, child = _name(parent), _name(child)
        if not parent or not child or parent == child:
            raise FrameLookupError(
                f"a transform needs two different, non-empty frames, got {parent!r} -> {child!r}"
            )
        self._edges[child] = (parent, transform)

    @property
    def frames(self) -> list[str]:
        """Every frame named by an edge, sorted."""
        names = set(self._edges) | {parent for parent, _ in self._edges.values()}
        return sorted(names)

    def lookup(self, target: str, source: str) -> RigidTransform:
        """The `source` frame's pose in `target`: x_target = result applied to x_source.

        Raises:
            FrameLookupError: either frame is unknown, or the two are not connected.
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
        source_up = self._to_root(source)  # frame -> its pose in that frame's ancestor
        target_up = self._to_root(target)
        common = next((frame for frame in source_up if frame in target_up), None)
        if common is None:
            raise FrameLookupError(
                f"frames {target!r} and {source!r} are not connected: their trees have roots "
                f"{next(reversed(target_up))!r} and {next(reversed(source_up))!r}"
            )
        return target_up[common].inverse() @ source_up[common]

    def _to_root(self, frame: str) -> dict[str, RigidTransform]:
        """`frame`'s pose in each of its ancestors, nearest first (itself first, as identity)."""
        poses = {frame: RigidTransform.identity()}
        pose, current = poses[frame], frame
        while current in self._edges:
            parent, transform = self._edges[current]
            if parent in poses:
                raise FrameLookupError(f"the transforms form a loop through frame {parent!r}")
            pose = transform @ pose
            poses[parent], current = pose, parent
        return poses


def _name(frame: str) -> str:
    return frame.strip().lstrip("/")


__all__ = ["FrameLookupError", "FrameTree", "RigidTransform"]
