"""llmi3d_synthetic_camera in its own process: image, CameraInfo and ground truth agree."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import spin_until, stop_process
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray

from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset
from llmi3d_core.ground_plane import GroundPlane, record_ground_plane
from llmi3d_core.messages import (
    camera_info_k,
    detection_box,
    image_to_rgb,
    stamp_to_ns,
    transform_of,
)


def test_camera_publishes_dataset_frames_with_ground_truth(
    ros_context: None, tmp_path: Path
) -> None:
    """Each frame's image, K and ground-truth boxes match the dataset record, under one stamp."""
    root = generate_dataset(
        SynthConfig(num_images=2, seed=3, camera_groups=("vga_normal",)), tmp_path / "ds",
        progress=False,
    )  # fmt: skip
    dataset = read_dataset(root)
    images: list[Image] = []
    infos: list[CameraInfo] = []
    truths: list[Detection3DArray] = []
    poses: list[TFMessage] = []
    node = Node(f"camera_client_{time.monotonic_ns()}")
    node.create_subscription(TFMessage, "/tf", poses.append, 100)
    node.create_subscription(Image, "image_raw", images.append, qos_profile_sensor_data)
    node.create_subscription(CameraInfo, "camera_info", infos.append, qos_profile_sensor_data)
    node.create_subscription(
        Detection3DArray, "llmi3d_synthetic_camera/ground_truth", truths.append, 10
    )
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    camera = str(Path(sys.executable).with_name("llmi3d_synthetic_camera"))
    proc = subprocess.Popen(
        [camera, "--ros-args", "-p", f"dataset:={root}", "-p", "rate_hz:=10.0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    def complete_stamps() -> set[int]:
        """Stamps whose image, CameraInfo and ground truth have all arrived.

        Image and CameraInfo are best effort, so one frame's image may be dropped or still in
        flight when its ground truth lands: compare only frames that arrived whole.
        """
        stamps = [{stamp_to_ns(m.header.stamp) for m in ms} for ms in (images, infos, truths)]
        stamps.append({stamp_to_ns(m.transforms[0].header.stamp) for m in poses})
        return set.intersection(*stamps)

    try:
        assert spin_until(executor, lambda: len(complete_stamps()) >= 3, 30.0)
    finally:
        executor.shutdown()
        node.destroy_node()
        output = stop_process(proc)
    assert "Traceback" not in output, output

    stamp = max(complete_stamps())
    truth = next(m for m in truths if stamp_to_ns(m.header.stamp) == stamp)
    image = next(m for m in images if stamp_to_ns(m.header.stamp) == stamp)
    info = next(m for m in infos if stamp_to_ns(m.header.stamp) == stamp)
    assert image.header.frame_id == info.header.frame_id == "camera_optical_frame"
    record = next(im for im in dataset.images if im.objects[0].object_id == truth.detections[0].id)
    assert (image.width, image.height) == (record.width, record.height)
    assert np.allclose(camera_info_k(info), record.K)
    assert image_to_rgb(image).shape == (record.height, record.width, 3)
    assert [d.id for d in truth.detections] == [o.object_id for o in record.objects]
    # the camera's pose on /tf: the record's floor lies under it (every object stands on it)
    [pose] = next(m for m in poses if stamp_to_ns(m.transforms[0].header.stamp) == stamp).transforms
    assert (pose.header.frame_id, pose.child_frame_id) == ("base_footprint", "camera_optical_frame")
    floor = GroundPlane.from_camera_pose(transform_of(pose.transform))
    expected = record_ground_plane(record.extra)
    assert floor.height_m == pytest.approx(expected.height_m)
    assert floor.pitch_deg == pytest.approx(expected.pitch_deg)
    for obj in record.objects:  # (the records keep 6 digits)
        bottom = np.asarray(obj.center_cam) + obj.dims_lwh[2] / 2 * np.asarray(obj.R_cam)[:, 1]
        assert float(floor.down @ bottom) == pytest.approx(floor.height_m, abs=1e-4)
    for detection, obj in zip(truth.detections, record.objects, strict=True):
        center, dims_lwh, R = detection_box(detection)
        assert detection.results[0].hypothesis.class_id == obj.category_name
        assert center == pytest.approx(obj.center_cam, abs=1e-6)
        assert dims_lwh == pytest.approx(obj.dims_lwh, abs=1e-6)
        assert np.allclose(R, obj.R_cam, atol=1e-6)
