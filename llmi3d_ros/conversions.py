"""Pure conversions between ROS 2 messages and the numpy/torch-free values llmi3d_core takes.

No node state here: each function takes a message (or values) and returns values, raising
InvalidInputError with a message a robotics engineer can act on. cv_bridge is not used on purpose:
it is not installable from PyPI for ROS 2, and decoding the few encodings a camera publishes with
numpy lets each check name the field that is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

from llmi3d_core.errors import InvalidInputError
from llmi3d_core.inference import Prediction

# encoding -> (channels, numpy dtype, cv2 conversion to RGB or None when already RGB)
_ENCODINGS: dict[str, tuple[int, type, int | None]] = {
    "rgb8": (3, np.uint8, None),
    "bgr8": (3, np.uint8, cv2.COLOR_BGR2RGB),
    "rgba8": (4, np.uint8, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, np.uint8, cv2.COLOR_BGRA2RGB),
    "mono8": (1, np.uint8, cv2.COLOR_GRAY2RGB),
    "8UC1": (1, np.uint8, cv2.COLOR_GRAY2RGB),
    "8UC3": (3, np.uint8, cv2.COLOR_BGR2RGB),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


def stamp_to_ns(stamp: Time) -> int:
    """Return a builtin_interfaces/Time as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def image_to_rgb(msg: Image) -> np.ndarray:
    """Decode a sensor_msgs/Image into an HxWx3 uint8 RGB array (a copy).

    Raises:
        InvalidInputError: unsupported encoding, zero size, or a data/step length that does not
            match width, height and encoding.
    """
    if msg.encoding not in _ENCODINGS:
        raise InvalidInputError(
            f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(_ENCODINGS)}"
        )
    channels, dtype, to_rgb = _ENCODINGS[msg.encoding]
    height, width = int(msg.height), int(msg.width)
    if height == 0 or width == 0:
        raise InvalidInputError(f"image has zero size ({width}x{height})")
    row_bytes = width * channels * np.dtype(dtype).itemsize
    step = int(msg.step) if msg.step else row_bytes
    if step < row_bytes:
        raise InvalidInputError(
            f"image step {step} is smaller than width*channels ({row_bytes} bytes) for "
            f"{msg.encoding} {width}x{height}"
        )
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size != step * height:
        raise InvalidInputError(
            f"image data has {data.size} bytes, expected step*height = {step}*{height} = "
            f"{step * height} for {msg.encoding} {width}x{height}"
        )
    rows = data.reshape(height, step)[:, :row_bytes]
    array = rows.reshape(height, width, channels) if channels > 1 else rows.reshape(height, width)
    if to_rgb is None:
        return array.copy()  # writable and independent of the message buffer
    return cv2.cvtColor(np.ascontiguousarray(array), to_rgb)


def compressed_image_to_rgb(msg: CompressedImage) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (jpeg or png) into an HxWx3 uint8 RGB array.

    Raises:
        InvalidInputError: when the payload is empty or cannot be decoded.
    """
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size == 0:
        raise InvalidInputError(f"compressed image ({msg.format!r}) has no data")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidInputError(f"could not decode compressed image of format {msg.format!r}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rgb_to_image(rgb: np.ndarray, header: Header) -> Image:
    """Encode an HxWx3 uint8 RGB array as a sensor_msgs/Image (rgb8) with the given header."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    msg = Image(header=header, height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8")
    msg.is_bigendian = 0
    msg.step = rgb.shape[1] * 3
    msg.data = rgb.tobytes()
    return msg


def camera_info_to_k(msg: CameraInfo) -> np.ndarray:
    """Return the 3x3 intrinsic matrix K of a CameraInfo, checked for use in back-projection.

    Raises:
        InvalidInputError: when K is all zeros (an uncalibrated camera), has a non-positive or
            non-finite focal length or principal point, or the size is zero.
    """
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)):
        raise InvalidInputError(f"CameraInfo.k has non-finite values: {K.ravel().tolist()}")
    if not np.any(K):
        raise InvalidInputError("CameraInfo.k is all zeros: the camera is not calibrated")
    fx, fy = K[0, 0], K[1, 1]
    if fx <= 0 or fy <= 0:
        raise InvalidInputError(f"CameraInfo.k has non-positive focal length fx={fx}, fy={fy}")
    if msg.width == 0 or msg.height == 0:
        raise InvalidInputError(f"CameraInfo has zero size ({msg.width}x{msg.height})")
    return K


def scale_intrinsics(K: np.ndarray, from_wh: Sequence[int], to_wh: Sequence[int]) -> np.ndarray:
    """Scale K from an image of size from_wh=(W, H) to one of size to_wh (resized, not cropped)."""
    sx = to_wh[0] / from_wh[0]
    sy = to_wh[1] / from_wh[1]
    scaled = np.array(K, dtype=np.float64, copy=True)
    scaled[0, :] *= sx
    scaled[1, :] *= sy
    return scaled


def rotation_to_quaternion_xyzw(R: np.ndarray) -> tuple[float, float, float, float]:
    """Return the (x, y, z, w) quaternion of a 3x3 rotation matrix (scipy, re-orthonormalised)."""
    x, y, z, w = Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()
    return float(x), float(y), float(z), float(w)


def box_pose(center: np.ndarray, R: np.ndarray) -> Pose:
    """A box centre (3,) and rotation (3, 3) as a geometry_msgs/Pose (camera optical frame)."""
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in center)
    q = rotation_to_quaternion_xyzw(R)
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = q
    return pose


def box_detection(
    header: Header,
    detection_id: str,
    label: str,
    score: float,
    box: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> Detection3D:
    """One Detection3D for a box (center (3,), dims_lwh (3,), R (3, 3)) in metres.

    bbox.size is (L, H, W): the box's extents along its own x, y, z axes, which in our
    optical-frame convention are length, height and width. `detection_to_box` is the inverse.
    """
    center, dims_lwh, R = box
    detection = Detection3D(header=header, id=detection_id)
    hypothesis = ObjectHypothesisWithPose()
    hypothesis.hypothesis.class_id = label
    hypothesis.hypothesis.score = float(score)
    hypothesis.pose.pose = box_pose(center, R)
    detection.results.append(hypothesis)
    detection.bbox.center = box_pose(center, R)
    length, width, height = (float(v) for v in dims_lwh)
    detection.bbox.size.x, detection.bbox.size.y, detection.bbox.size.z = length, height, width
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


def detection_to_box(detection: Detection3D) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of `predictions_to_detections` for one detection.

    Returns:
        (center (3,), dims_lwh (3,), R (3, 3)) in the detection's frame, metres.
    """
    pose = detection.bbox.center
    center = np.array([pose.position.x, pose.position.y, pose.position.z], dtype=np.float64)
    q = pose.orientation
    R = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    size = detection.bbox.size
    dims_lwh = np.array([size.x, size.z, size.y], dtype=np.float64)  # size is (L, H, W)
    return center, dims_lwh, R


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
