"""ROS message fields <-> numpy, for live rclpy messages and recorded rosbags messages alike.

Duck-typed on the field names of sensor_msgs/Image, CompressedImage, builtin_interfaces/Time,
geometry_msgs/Transform and vision_msgs/Detection3D, so that the node (rclpy objects) and the bag
converter (rosbags dataclasses) share one implementation and neither side imports ROS here.
Errors are InvalidInputError with a message that names the field that is wrong.

cv_bridge is not installable from PyPI for ROS 2; the colour conversions of every encoding come
from rosbags-image (a maintained cv_bridge equivalent), after our own checks of size, step and
data length, which it does not make (it ignores `step`, so padded rows would come out sheared).
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from rosbags.image import ImageError
from rosbags.image.image import convert_color, to_cvtype
from scipy.spatial.transform import Rotation

from llmi3d_core.errors import InvalidInputError
from llmi3d_core.frame_tree import RigidTransform

__all__ = [
    "COLOUR_ENCODINGS",
    "bbox_size_to_dims_lwh",
    "camera_info_k",
    "compressed_image_to_rgb",
    "detection_box",
    "dims_lwh_to_bbox_size",
    "image_to_rgb",
    "matrix_to_quaternion",
    "nearest_stamp",
    "quaternion_to_matrix",
    "scale_intrinsics",
    "stamp_to_ns",
    "transform_of",
]

# cv_bridge reads the generic OpenCV encodings of an 8-bit image as grey or BGR
_GENERIC_AS = {"8UC1": "mono8", "8UC3": "bgr8"}
# what a camera driver commonly publishes and image_to_rgb turns into RGB (for messages; the
# rosbags-image table has more, e.g. 16-bit and other Bayer patterns)
COLOUR_ENCODINGS = (
    "rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "8UC3", "mono16", "rgb16", "bgr16",
    "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8", "yuv422", "yuv422_yuy2",
)  # fmt: skip


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (sec, nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def nearest_stamp(stamps: Sequence[int], stamp: int, slop_ns: int) -> int | None:
    """Index of the element of sorted `stamps` nearest to `stamp` if within `slop_ns`, else None.

    Approximate-time pairing as message_filters does it (which is not installable from PyPI for
    ROS 2); on a tie the earlier stamp wins.
    """
    pos = bisect.bisect_left(stamps, stamp)
    candidates = [i for i in (pos - 1, pos) if 0 <= i < len(stamps)]
    if not candidates:
        return None
    best = min(candidates, key=lambda i: abs(stamps[i] - stamp))
    return best if abs(stamps[best] - stamp) <= slop_ns else None


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K of an image resized (not cropped) by factors (sx, sy) along x and y.

    Rows 0 and 1 scale, which is exact for the pixel-corner convention ROS uses for binning.
    """
    scaled = np.array(K, dtype=np.float64, copy=True)
    scaled[0, :] *= sx
    scaled[1, :] *= sy
    return scaled


def quaternion_to_matrix(q_xyzw: Any) -> np.ndarray:
    """(x, y, z, w) quaternion -> (3, 3) rotation matrix (normalised first).

    Raises:
        InvalidInputError: for a zero or non-finite quaternion (scipy would raise ValueError).
    """
    q = np.asarray(q_xyzw, dtype=np.float64).reshape(4)
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or norm < 1e-9:
        raise InvalidInputError(f"quaternion (x, y, z, w) must be non-zero and finite, got {q}")
    matrix: np.ndarray = Rotation.from_quat(q / norm).as_matrix()
    return matrix


def transform_of(msg: Any) -> RigidTransform:
    """A geometry_msgs/Transform (translation, rotation quaternion) as a RigidTransform.

    Raises:
        InvalidInputError: a non-finite translation, or a zero or non-finite quaternion.
    """
    t, q = msg.translation, msg.rotation
    translation = np.array([t.x, t.y, t.z], dtype=np.float64)
    if not np.isfinite(translation).all():
        raise InvalidInputError(f"transform translation must be finite, got {translation}")
    return RigidTransform(quaternion_to_matrix([q.x, q.y, q.z, q.w]), translation)


def matrix_to_quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    """(3, 3) rotation matrix -> (x, y, z, w) quaternion (scipy re-orthonormalises)."""
    x, y, z, w = Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()
    return float(x), float(y), float(z), float(w)


def dims_lwh_to_bbox_size(dims_lwh: Any) -> tuple[float, float, float]:
    """Box dimensions (L, W, H) -> vision_msgs BoundingBox3D.size (x, y, z).

    size holds the extents along the box's own x, y, z axes, which in our optical-frame box
    convention (x along the length, y down, z along the width) are (L, H, W).
    """
    length, width, height = (float(v) for v in dims_lwh)
    return length, height, width


def bbox_size_to_dims_lwh(size: Any) -> np.ndarray:
    """vision_msgs BoundingBox3D.size (a Vector3 or 3 numbers) -> (L, W, H); see above."""
    x, y, z = (size.x, size.y, size.z) if hasattr(size, "x") else size
    return np.array([x, z, y], dtype=np.float64)


def detection_box(detection: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A vision_msgs/Detection3D's box: (center (3,), dims_lwh (3,), R (3, 3)), metres.

    Raises:
        InvalidInputError: for a zero or non-finite orientation quaternion.
    """
    pose = detection.bbox.center
    center = np.array([pose.position.x, pose.position.y, pose.position.z], dtype=np.float64)
    q = pose.orientation
    R = quaternion_to_matrix([q.x, q.y, q.z, q.w])
    return center, bbox_size_to_dims_lwh(detection.bbox.size), R


def camera_info_k(msg: Any, *, require_size: bool = True) -> np.ndarray:
    """A sensor_msgs/CameraInfo's 3x3 intrinsics K, checked for use in back-projection.

    Args:
        msg: the CameraInfo.
        require_size: refuse width or height 0 (a recorded bag may leave them unknown).

    Raises:
        InvalidInputError: K all zeros (an uncalibrated camera), non-finite, a non-positive
            focal length, or a zero size when `require_size`.
    """
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)):
        raise InvalidInputError(f"CameraInfo.k has non-finite values: {K.ravel().tolist()}")
    if not np.any(K):
        raise InvalidInputError("CameraInfo.k is all zeros: the camera is not calibrated")
    fx, fy = K[0, 0], K[1, 1]
    if fx <= 0 or fy <= 0:
        raise InvalidInputError(
            f"CameraInfo.k has non-positive focal length fx={fx}, fy={fy}; an uncalibrated "
            "camera cannot give metric boxes"
        )
    if require_size and (msg.width == 0 or msg.height == 0):
        raise InvalidInputError(f"CameraInfo has zero size ({msg.width}x{msg.height})")
    return K


def image_to_rgb(msg: Any) -> np.ndarray:
    """A sensor_msgs/Image -> (H, W, 3) uint8 RGB array (a copy; padded rows are handled).

    Raises:
        InvalidInputError: an encoding that is not a colour image, zero size, or a step / data
            length that does not match width, height and encoding.
    """
    encoding = _GENERIC_AS.get(str(msg.encoding), str(msg.encoding))
    try:
        _, _, typestr, channels = to_cvtype(encoding)
    except ImageError:
        typestr, channels = "", 0
    if not typestr or encoding.startswith(("8U", "8S", "16U", "16S", "32", "64")):
        raise InvalidInputError(
            f"unsupported image encoding {msg.encoding!r}; colour encodings are supported, "
            f"e.g. {', '.join(COLOUR_ENCODINGS)}"
        )
    height, width = int(msg.height), int(msg.width)
    if height == 0 or width == 0:
        raise InvalidInputError(f"image has zero size ({width}x{height})")
    dtype = np.dtype(typestr)
    row_bytes = width * channels * dtype.itemsize
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
    rows = np.ascontiguousarray(data.reshape(height, step)[:, :row_bytes])
    pixels = rows.view(dtype)
    if dtype.itemsize > 1 and bool(msg.is_bigendian) != (sys.byteorder == "big"):
        pixels = pixels.byteswap()
    pixels = pixels.reshape((height, width, channels) if channels > 1 else (height, width))
    try:
        rgb = convert_color(pixels, encoding, "rgb8")
    except (ImageError, cv2.error) as err:
        raise InvalidInputError(f"cannot convert a {msg.encoding!r} image to rgb8: {err}") from None
    return np.array(rgb, dtype=np.uint8, copy=True)  # writable, independent of the message


def compressed_image_to_rgb(msg: Any) -> np.ndarray:
    """A sensor_msgs/CompressedImage (jpeg or png) -> (H, W, 3) uint8 RGB array.

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
