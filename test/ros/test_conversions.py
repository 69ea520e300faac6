"""Message <-> numpy conversions (core reads, llmi3d_ros builds), on real rclpy messages."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from llmi3d_core.errors import InvalidInputError
from llmi3d_core.messages import (
    camera_info_k,
    compressed_image_to_rgb,
    detection_box,
    image_to_rgb,
    scale_intrinsics,
)
from llmi3d_core.prediction import Prediction
from llmi3d_ros.conversions import camera_info_from_k, predictions_to_detections, rgb_to_image

K = np.array([[500.0, 0.0, 320.0], [0.0, 510.0, 240.0], [0.0, 0.0, 1.0]])


def make_image(rgb: np.ndarray, encoding: str = "rgb8", pad: int = 0) -> Image:
    """An Image message of `rgb` in `encoding`, each row padded by `pad` bytes."""
    converted = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "mono8": rgb[..., 0]}[encoding]
    channels = 1 if converted.ndim == 2 else 3
    rows = converted.reshape(rgb.shape[0], -1)
    rows = np.concatenate([rows, np.zeros((rows.shape[0], pad), np.uint8)], axis=1)
    return Image(
        height=rgb.shape[0], width=rgb.shape[1], encoding=encoding,
        step=rgb.shape[1] * channels + pad, data=rows.tobytes(),
    )  # fmt: skip


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (4, 6, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_image_round_trip(rgb: np.ndarray, encoding: str) -> None:
    """rgb8 and bgr8 (with row padding) decode to the same RGB pixels."""
    assert np.array_equal(image_to_rgb(make_image(rgb, encoding, pad=2)), rgb)
    assert np.array_equal(image_to_rgb(rgb_to_image(rgb, Header())), rgb)
    decoded = image_to_rgb(make_image(rgb, encoding))
    assert decoded.flags.writeable and decoded.flags.c_contiguous


def test_mono8_becomes_three_channels(rgb: np.ndarray) -> None:
    """Grey images are expanded to RGB."""
    out = image_to_rgb(make_image(rgb, "mono8"))
    assert out.shape == (4, 6, 3) and np.array_equal(out[..., 1], rgb[..., 0])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"encoding": "32FC1"}, "unsupported image encoding '32FC1'"),
        ({"width": 0, "height": 0, "data": b""}, "zero size"),
        ({"data": b"\x00" * 7}, "image data has 7 bytes, expected"),
        ({"step": 3}, "step 3 is smaller than width"),
    ],
)
def test_bad_images_are_named(rgb: np.ndarray, change: dict, match: str) -> None:
    """Each malformed image gets an error naming what is wrong."""
    msg = make_image(rgb)
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(InvalidInputError, match=match):
        image_to_rgb(msg)


def test_compressed_image(rgb: np.ndarray) -> None:
    """PNG payloads decode losslessly; garbage is refused."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage(format="png", data=png.tobytes())
    assert np.array_equal(compressed_image_to_rgb(msg), rgb)
    with pytest.raises(InvalidInputError, match="could not decode"):
        compressed_image_to_rgb(CompressedImage(format="jpeg", data=b"not an image"))


def test_camera_info_checks() -> None:
    """K comes back as calibrated; all-zero or non-positive focal lengths are refused."""
    info = camera_info_from_k(K, 640, 480, Header())
    assert np.array_equal(camera_info_k(info), K)
    info.k = [0.0] * 9
    with pytest.raises(InvalidInputError, match="all zeros"):
        camera_info_k(info)
    info.k = [-1.0, 0, 320, 0, 500, 240, 0, 0, 1]
    with pytest.raises(InvalidInputError, match="non-positive focal length"):
        camera_info_k(info)


def test_scale_intrinsics_halves_everything() -> None:
    """Resizing 640x480 -> 320x240 halves fx, fy, cx, cy."""
    scaled = scale_intrinsics(K, 320 / 640, 240 / 480)
    assert scaled[0, 0] == 250.0 and scaled[1, 1] == 255.0
    assert scaled[0, 2] == 160.0 and scaled[1, 2] == 120.0 and scaled[2, 2] == 1.0


def test_detections_carry_header_and_round_trip() -> None:
    """Detection3DArray keeps the image header; size is (L, H, W); the box converts back."""
    angle = 0.3
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    prediction = Prediction(
        label="lamp", answer="", center=np.array([0.5, 0.2, 3.0]),
        dims=np.array([0.4, 0.3, 1.6]), rotation=R, score=0.87,
        box2d=np.array([10.0, 20.0, 50.0, 200.0]), center_uv=np.array([30.0, 100.0]),
    )  # fmt: skip
    header = Header(frame_id="cam_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    array = predictions_to_detections([prediction], header)
    assert array.header.frame_id == "cam_optical" and array.header.stamp.nanosec == 345
    det = array.detections[0]
    assert det.id == "0" and det.header.stamp.sec == 12
    assert det.results[0].hypothesis.class_id == "lamp"
    assert det.results[0].hypothesis.score == pytest.approx(0.87)
    assert (det.bbox.size.x, det.bbox.size.y, det.bbox.size.z) == pytest.approx((0.4, 1.6, 0.3))
    center, dims, R_back = detection_box(det)
    assert center == pytest.approx([0.5, 0.2, 3.0])
    assert dims == pytest.approx([0.4, 0.3, 1.6])
    assert np.allclose(R_back, R, atol=1e-9)


def test_camera_encodings_beyond_rgb_become_rgb(rgb: np.ndarray) -> None:
    """16-bit big-endian grey, Bayer and the generic 8UC1 decode to HxWx3 uint8 RGB."""
    grey16 = (rgb[..., 0].astype(">u2") * 257).tobytes()
    msg = Image(height=4, width=6, encoding="mono16", is_bigendian=1, step=12, data=grey16)
    assert np.array_equal(image_to_rgb(msg), np.repeat(rgb[..., :1], 3, axis=2))
    generic = make_image(rgb, "mono8")
    generic.encoding = "8UC1"
    assert np.array_equal(image_to_rgb(generic), np.repeat(rgb[..., :1], 3, axis=2))
    bayer = Image(height=4, width=6, encoding="bayer_rggb8", step=8, data=bytes(range(32)))
    assert image_to_rgb(bayer).shape == (4, 6, 3)  # padded rows (step 8 > width 6) are dropped
