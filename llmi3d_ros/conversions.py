"""Building ROS 2 messages from llmi3d_core's values.

Reading messages (images, stamps, Detection3D boxes, quaternions) is llmi3d_core.messages, shared
with the bag converter; this module only adds what needs rclpy's message classes. No node state
here: each function takes values and returns a message, raising InvalidInputError with a message
a robotics engineer can act on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from geometry_msgs.msg import Pose, TransformStamped
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

from llmi3d_core.frame_tree import RigidTransform
from llmi3d_core.messages import dims_lwh_to_bbox_size, matrix_to_quaternion
from llmi3d_core.prediction import Prediction


def rgb_to_image(rgb: np.ndarray, header: Header) -> Image:
    """Encode an HxWx3 uint8 RGB array as a sensor_msgs/Image (rgb8) with the given header."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    msg = Image(header=header, height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8")
    msg.is_bigendian = 0
    msg.step = rgb.shape[1] * 3
    msg.data = rgb.tobytes()
    return msg


def box_pose(center: np.ndarray, R: np.ndarray) -> Pose:
    """A box centre (3,) and rotation (3, 3) as a geometry_msgs/Pose (camera optical frame)."""
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in center)
    q = matrix_to_quaternion(R)
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = q
    return pose


def transform_stamped(header: Header, child_frame: str, pose: RigidTransform) -> TransformStamped:
    """A TF transform: `child_frame`'s pose in header.frame_id (read by messages.transform_of)."""
    stamped = TransformStamped(header=header, child_frame_id=child_frame)
    t, q = stamped.transform.translation, stamped.transform.rotation
    t.x, t.y, t.z = (float(v) for v in pose.translation)
    q.x, q.y, q.z, q.w = matrix_to_quaternion(pose.rotation)
    return stamped


def box_detection(
    header: Header,
    detection_id: str,
    label: str,
    score: float,
    box: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> Detection3D:
    """One Detection3D for a box (center (3,), dims_lwh (3,), R (3, 3)) in metres.

    bbox.size is (L, H, W) (`messages.dims_lwh_to_bbox_size`); `messages.detection_box` is the
    inverse.
    """
    center, dims_lwh, R = box
    detection = Detection3D(header=header, id=detection_id)
    hypothesis = ObjectHypothesisWithPose()
    hypothesis.hypothesis.class_id = label
    hypothesis.hypothesis.score = float(score)
    hypothesis.pose.pose = box_pose(center, R)
    detection.results.append(hypothesis)
    detection.bbox.center = box_pose(center, R)
    size = dims_lwh_to_bbox_size(dims_lwh)
    detection.bbox.size.x, detection.bbox.size.y, detection.bbox.size.z = size
    return detection


def predictions_to_detections(
    predictions: Sequence[Prediction], header: Header, id_prefix: str = ""
) -> Detection3DArray:
    """Build a Detection3DArray whose header (stamp, frame_id) is the source image's header.

    Each detection has class_id = object phrase and score set (see `box_detection` for bbox).
    Ids are stable: `<id_prefix><rank>`, rank 0 being the best answer.
    """
    array = Detection3DArray(header=header)
    for rank, p in enumerate(predictions):
        box = (p.center, p.dims, p.rotation)
        array.detections.append(box_detection(header, f"{id_prefix}{rank}", p.label, p.score, box))
    return array


def camera_info_from_k(K: np.ndarray, width: int, height: int, header: Header) -> CameraInfo:
    """A CameraInfo for an undistorted pinhole camera with intrinsics K (P = [K | 0])."""
    info = CameraInfo(header=header, width=int(width), height=int(height))
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = [float(v) for v in np.asarray(K, dtype=np.float64).ravel()]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    P = np.zeros((3, 4))
    P[:, :3] = K
    info.p = [float(v) for v in P.ravel()]
    return info
