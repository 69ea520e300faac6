"""The floor under the camera from TF: the camera's pose in a floor frame, as a GroundPlane.

With the node's `floor_frame` set (a frame on the ground with z up, e.g. base_footprint), each
query looks up the image's frame (its header.frame_id, the camera's optical frame) in it at the
image's stamp; the camera's height, pitch and roll follow (GroundPlane.from_camera_pose), so a
robot whose URDF is published by robot_state_publisher needs no calibration numbers, and a camera
on a pan-tilt head is followed as it moves.

tf2_ros does the listening and the lookups when it is installed (a ROS 2 installation). It is
not among the PyPI ROS 2 wheels this package installs, so otherwise this module subscribes to
/tf and /tf_static itself and keeps their transforms in llmi3d_core.frame_tree.FrameTree (the
package builds tf2_msgs/TFMessage where the system has none).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from tf2_msgs.msg import TFMessage

from llmi3d_core.errors import InvalidInputError
from llmi3d_core.frame_tree import FrameLookupError, FrameTree, RigidTransform
from llmi3d_core.ground_plane import GroundPlane
from llmi3d_core.messages import stamp_to_ns, transform_of

try:  # a ROS 2 installation has it; the PyPI wheels do not (module docstring)
    import tf2_ros
except ImportError:
    tf2_ros = None

# /tf best effort (tf2_ros's listener asks reliable): a stream of poses, where a lost one is
# replaced by the next within a frame, while a reliable reader holds every later pose back until a
# lost one is resent. Measured in the demo next to 1600x900 images at 5 Hz on a 2-core CPU: a
# reliable /tf once delivered nothing for 5 s. /tf_static reliable and latched, as tf2_ros's.
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
TF_STATIC_QOS = QoSProfile(
    depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
# a listener this young may not have heard the robot's transforms yet: lookups wait this long
STARTUP_S = 2.0
STARTUP_WAIT_S = 1.0
# later, how long tf2_ros waits for the transform at an image's stamp (TF may trail the image)
TF2_WAIT_S = 0.1


class TfFloor:
    """Listens to TF on `node` and answers where the floor is under a camera frame."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._created_s = time.monotonic()
        self._subscriptions: list[Any] = []
        self._tree = FrameTree()
        self._changed = threading.Condition()
        if tf2_ros is not None:
            self._buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self._buffer, node)
            return
        group = MutuallyExclusiveCallbackGroup()
        self._subscriptions = [
            node.create_subscription(TFMessage, "/tf", self._on_tf, TF_QOS, callback_group=group),
            node.create_subscription(
                TFMessage, "/tf_static", self._on_tf_static, TF_STATIC_QOS, callback_group=group
            ),
        ]

    @property
    def uses_tf2_ros(self) -> bool:
        """Whether tf2_ros listens (else our own /tf and /tf_static subscriptions)."""
        return tf2_ros is not None

    def ground_plane(self, floor_frame: str, camera_frame: str, stamp_ns: int) -> GroundPlane:
        """The floor z = 0 of `floor_frame` seen from `camera_frame` (an optical frame).

        At `stamp_ns`, the image's stamp (0: an unstamped image, the newest transforms).

        Raises:
            FrameLookupError: TF has no transform between the two frames (at that time).
            InvalidInputError: the camera is not above that floor, or looks straight down.
        """
        if not camera_frame.strip():
            raise FrameLookupError("the image has no header.frame_id to look up in TF")
        young = time.monotonic() - self._created_s < STARTUP_S
        pose = self._lookup(floor_frame, camera_frame, stamp_ns or None, young)
        return GroundPlane.from_camera_pose(pose)

    def destroy(self) -> None:
        """Stop listening."""
        if tf2_ros is not None:
            unregister = getattr(self._listener, "unregister", None)  # tf2_ros >= Humble
            if unregister is not None:
                unregister()
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []

    def _lookup(
        self, target: str, source: str, stamp_ns: int | None, young: bool
    ) -> RigidTransform:
        if tf2_ros is not None:
            when = Time() if stamp_ns is None else Time(nanoseconds=stamp_ns)
            wait_s = STARTUP_WAIT_S if young else TF2_WAIT_S
            try:
                stamped = self._buffer.lookup_transform(
                    target, source, when, timeout=Duration(seconds=wait_s)
                )
            except tf2_ros.TransformException as err:
                reason = f"no transform from {source!r} to {target!r}: {err}"
                raise FrameLookupError(reason) from err
            return transform_of(stamped.transform)
        deadline = time.monotonic() + (STARTUP_WAIT_S if young else 0.0)
        with self._changed:
            while True:
                try:
                    return self._tree.lookup(target, source, stamp_ns)
                except FrameLookupError:
                    left = deadline - time.monotonic()
                    if left <= 0.0:
                        raise
                    self._changed.wait(left)

    def _on_tf(self, msg: TFMessage) -> None:
        self._take(msg, static=False)

    def _on_tf_static(self, msg: TFMessage) -> None:
        self._take(msg, static=True)

    def _take(self, msg: TFMessage, static: bool) -> None:
        with self._changed:
            for stamped in msg.transforms:
                try:
                    transform = transform_of(stamped.transform)
                    stamp_ns = None if static else stamp_to_ns(stamped.header.stamp)
                    self._tree.set(
                        stamped.header.frame_id, stamped.child_frame_id, transform, stamp_ns
                    )
                except (InvalidInputError, FrameLookupError) as err:
                    self._node.get_logger().warning(
                        f"ignoring a TF transform {stamped.header.frame_id!r} -> "
                        f"{stamped.child_frame_id!r}: {err}",
                        throttle_duration_sec=10.0,
                    )
            self._changed.notify_all()
