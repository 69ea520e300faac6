"""Pair images with CameraInfo by header stamp, keeping only the newest pair (a queue of one).

message_filters is not installable from PyPI for ROS 2, and a robot node needs only this much of it:
an image is paired with the CameraInfo whose stamp is nearest, if that is within `slop_ns`
(`llmi3d_core.messages.nearest_stamp`, which the bag converter uses too). Pure Python on integer
nanoseconds, so it is tested without DDS.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from llmi3d_core.messages import nearest_stamp

ImageT = TypeVar("ImageT")
InfoT = TypeVar("InfoT")


@dataclass(frozen=True)
class Pair(Generic[ImageT, InfoT]):
    """An image and the CameraInfo paired with it; `sequence` counts pairs made so far."""

    image: ImageT
    info: InfoT
    stamp_ns: int
    sequence: int


class StampPairer(Generic[ImageT, InfoT]):
    """Approximate-time pairing of two streams, newest image wins.

    CameraInfo messages are kept in a short history (`info_history`); images wait (at most one,
    the newest) until a CameraInfo within `slop_ns` arrives.
    """

    def __init__(self, slop_ns: int, info_history: int = 30) -> None:
        if slop_ns < 0:
            raise ValueError(f"slop_ns must be >= 0, got {slop_ns}")
        self.slop_ns = slop_ns
        self._infos: deque[tuple[int, InfoT]] = deque(maxlen=info_history)
        self._pending: tuple[int, ImageT] | None = None
        self._latest: Pair[ImageT, InfoT] | None = None
        self._sequence = 0

    @property
    def latest(self) -> Pair[ImageT, InfoT] | None:
        """The newest pair made, or None before the first one."""
        return self._latest

    @property
    def has_info(self) -> bool:
        """Whether any CameraInfo has arrived."""
        return bool(self._infos)

    def add_info(self, stamp_ns: int, info: InfoT) -> Pair[ImageT, InfoT] | None:
        """Record a CameraInfo; return a new pair if it completes the waiting image."""
        self._infos.append((stamp_ns, info))
        if self._pending is not None:
            return self._try_pair(*self._pending)
        return None

    def add_image(self, stamp_ns: int, image: ImageT) -> Pair[ImageT, InfoT] | None:
        """Record an image; return the new pair if a CameraInfo matches, else keep it waiting."""
        if self._latest is not None and stamp_ns < self._latest.stamp_ns:
            return None  # older than what we already answer on: drop
        self._pending = (stamp_ns, image)
        return self._try_pair(stamp_ns, image)

    def _try_pair(self, stamp_ns: int, image: ImageT) -> Pair[ImageT, InfoT] | None:
        infos = sorted(self._infos, key=lambda item: item[0])  # arrival order may differ
        index = nearest_stamp([stamp for stamp, _ in infos], stamp_ns, self.slop_ns)
        if index is None:
            return None
        self._sequence += 1
        self._pending = None
        info = infos[index][1]
        self._latest = Pair(image=image, info=info, stamp_ns=stamp_ns, sequence=self._sequence)
        return self._latest

    def clear(self) -> None:
        """Forget everything (on deactivate)."""
        self._infos.clear()
        self._pending = None
        self._latest = None
