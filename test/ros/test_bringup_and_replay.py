"""Bringup plan (shared with the launch file) and rosbag2 replay through real DDS."""

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
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo, Image

from llmi3d_ros.bringup import BringupOptions, command_line, plan


def test_plan_default_is_the_node_with_shipped_params() -> None:
    """By default only llmi3d_node starts, with config/params.yaml and no remapping."""
    specs = plan(BringupOptions())
    assert [s.executable for s in specs] == ["llmi3d_node"]
    assert specs[0].params_files[0].endswith("config/params.yaml")
    args = command_line(specs[0], BringupOptions())
    assert "-r" not in args
    assert args[args.index("-p") + 1] == "use_sim_time:=false"


def test_plan_overrides_remaps_and_synthetic_camera() -> None:
    """Launch arguments become parameter overrides, remappings and an extra camera node."""
    options = BringupOptions(
        namespace="/robot", checkpoint="/ck", device="cuda", image_topic="/cam/image",
        camera_info_topic="/cam/info", synthetic_camera=True, use_sim_time=True,
        floor_frame="base_footprint",
    )  # fmt: skip
    specs = plan(options)
    assert [s.executable for s in specs] == ["llmi3d_synthetic_camera", "llmi3d_node"]
    args = command_line(specs[1], options)
    for expected in ("__ns:=/robot", "checkpoint:=/ck", "device:=cuda", "use_sim_time:=true",
                     "image_raw:=/cam/image", "camera_info:=/cam/info",
                     "floor_frame:=base_footprint"):  # fmt: skip
        assert expected in args


def test_plan_synthetic_camera_rate() -> None:
    """--synthetic-rate-hz sets the camera's rate_hz (a launch argument arrives as a string)."""
    for rate in (10.0, "10"):
        camera = plan(BringupOptions(synthetic_camera=True, synthetic_rate_hz=rate))[0]
        assert camera.parameters["rate_hz"] == 10.0
    assert "rate_hz" not in plan(BringupOptions(synthetic_camera=True))[0].parameters


@pytest.mark.parametrize("storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP])
def test_bag_replay_publishes_recorded_messages(
    ros_context: None, tmp_path: Path, storage: StoragePlugin
) -> None:
    """Images and CameraInfo written by rosbags arrive over DDS with their recorded stamps."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    Img = typestore.types["sensor_msgs/msg/Image"]
    Info = typestore.types["sensor_msgs/msg/CameraInfo"]
    Header = typestore.types["std_msgs/msg/Header"]
    Time = typestore.types["builtin_interfaces/msg/Time"]
    bag = tmp_path / f"bag_{storage.name.lower()}"
    stamps = [(100 + i, 5000 * i) for i in range(5)]
    with Writer(bag, version=9, storage_plugin=storage) as writer:
        image_conn = writer.add_connection("/cam/image_raw", Img.__msgtype__, typestore=typestore)
        info_conn = writer.add_connection("/cam/camera_info", Info.__msgtype__, typestore=typestore)
        for i, (sec, nsec) in enumerate(stamps):
            header = Header(stamp=Time(sec=sec, nanosec=nsec), frame_id="cam")
            pixels = np.full(4 * 6 * 3, i, dtype=np.uint8)
            image = Img(header=header, height=4, width=6, encoding="rgb8", is_bigendian=0,
                        step=18, data=pixels)  # fmt: skip
            info = Info(
                header=header, height=4, width=6, distortion_model="plumb_bob",
                d=np.zeros(5), k=np.array([5.0, 0, 3, 0, 5, 2, 0, 0, 1]), r=np.eye(3).ravel(),
                p=np.zeros(12), binning_x=0, binning_y=0,
                roi=typestore.types["sensor_msgs/msg/RegionOfInterest"](
                    x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
                ),
            )  # fmt: skip
            t = 1_000_000_000 + i * 50_000_000
            writer.write(info_conn, t, typestore.serialize_cdr(info, Info.__msgtype__))
            writer.write(image_conn, t + 1, typestore.serialize_cdr(image, Img.__msgtype__))

    node = Node(f"replay_client_{time.monotonic_ns()}")
    images: list[Image] = []
    infos: list[CameraInfo] = []
    node.create_subscription(Image, "/cam/image_raw", images.append, 10)
    node.create_subscription(CameraInfo, "/cam/camera_info", infos.append, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def seen(messages: list) -> set[tuple[int, int]]:
        return {(m.header.stamp.sec, m.header.stamp.nanosec) for m in messages}

    player = str(Path(sys.executable).with_name("llmi3d_bag_replay"))
    proc = subprocess.Popen(
        [player, "--ros-args", "-p", f"bag:={bag}", "-p", "loop:=true"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    try:
        # The replay loops, so every recorded frame comes round again even if one arrived before
        # the subscription matched.
        assert spin_until(executor, lambda: seen(images) == seen(infos) == set(stamps), 20.0), (
            f"received {sorted(seen(images))}, expected {stamps}"
        )
    finally:
        executor.shutdown()
        node.destroy_node()
        output = stop_process(proc)
    assert "Traceback" not in output, output
    received = {(m.header.stamp.sec, m.header.stamp.nanosec): bytes(m.data)[0] for m in images}
    assert set(received) == set(stamps)
    assert all(received[stamp] == i for i, stamp in enumerate(stamps))
    assert list(infos[0].k) == [5.0, 0, 3, 0, 5, 2, 0, 0, 1]


def test_bag_replay_names_missing_topics(ros_context: None, tmp_path: Path) -> None:
    """Asking for a topic the bag lacks fails with the topics it has."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    String = typestore.types["std_msgs/msg/String"]
    bag = tmp_path / "strings"
    with Writer(bag, version=9) as writer:
        conn = writer.add_connection("/chatter", String.__msgtype__, typestore=typestore)
        writer.write(conn, 1, typestore.serialize_cdr(String(data="hi"), String.__msgtype__))

    def seen(messages: list) -> set[tuple[int, int]]:
        return {(m.header.stamp.sec, m.header.stamp.nanosec) for m in messages}

    player = str(Path(sys.executable).with_name("llmi3d_bag_replay"))
    result = subprocess.run(
        [player, "--ros-args", "-p", f"bag:={bag}", "-p", "topics:=['/cam/image_raw']"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "has no topic ['/cam/image_raw']; it has: /chatter" in result.stdout + result.stderr
