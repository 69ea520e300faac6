"""llmi3d_node end to end: the real node (tiny preset) in its own process, a real client here."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import spin_until, stop_process
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from llmi3d_msgs.srv import Query
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

from llmi3d_ros.conversions import camera_info_from_k, rgb_to_image, stamp_to_ns

K = np.array([[200.0, 0.0, 80.0], [0.0, 200.0, 60.0], [0.0, 0.0, 1.0]])
WIDTH, HEIGHT = 160, 120
RELIABLE = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


def node_command(*params: str, namespace: str = "/") -> list[str]:
    """Command line of llmi3d_node with the tiny model and reliable inputs (deterministic)."""
    args = [str(Path(sys.executable).with_name("llmi3d_node")), "--ros-args"]
    args += ["-r", f"__ns:={namespace}"]
    for param in ("preset:=tiny", "qos_reliability:=reliable", "num_threads:=1", *params):
        args += ["-p", param]
    return args


class Harness:
    """The test's side: publishers of camera input, the query client, output subscriptions."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(node)
        self.image_pub = node.create_publisher(Image, "image_raw", RELIABLE)
        self.info_pub = node.create_publisher(CameraInfo, "camera_info", RELIABLE)
        self.standing_pub = node.create_publisher(String, "standing_query", 10)
        self.client = node.create_client(Query, "llmi3d_node/query")
        self.lifecycle = node.create_client(ChangeState, "llmi3d_node/change_state")
        self.detections: list[Detection3DArray] = []
        self.markers: list[MarkerArray] = []
        self.debug: list[Image] = []
        node.create_subscription(
            Detection3DArray, "llmi3d_node/detections", self.detections.append, 10
        )
        node.create_subscription(MarkerArray, "llmi3d_node/markers", self.markers.append, 10)
        node.create_subscription(Image, "llmi3d_node/debug_image", self.debug.append, 10)
        self.clock_ns = 1_000_000_000

    def wait_ready(self) -> None:
        assert self.client.wait_for_service(timeout_sec=60.0), "llmi3d_node offered no ~/query"
        assert spin_until(
            self.executor,
            lambda: (
                self.image_pub.get_subscription_count() > 0
                and self.info_pub.get_subscription_count() > 0
            ),
            30.0,
        ), "llmi3d_node did not subscribe to image_raw and camera_info"

    def publish_frame(
        self, image: Image | None = None, info: CameraInfo | None = None, frame_id: str = "cam_opt"
    ) -> Header:
        """Publish an image and its CameraInfo with one fresh stamp; return the header."""
        self.clock_ns += 100_000_000
        header = Header(frame_id=frame_id)
        header.stamp.sec, header.stamp.nanosec = divmod(self.clock_ns, 1_000_000_000)
        if image is None:
            rgb = np.random.default_rng(self.clock_ns % 1000).integers(
                0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8
            )
            image = rgb_to_image(rgb, header)
        image.header = header
        if info is None:
            info = camera_info_from_k(K, WIDTH, HEIGHT, header)
        info.header = header
        self.info_pub.publish(info)
        self.image_pub.publish(image)
        spin_until(self.executor, lambda: False, 0.3)  # let the node receive both
        return header

    def query(self, text: str, timeout_s: float = 30.0, **fields: object) -> Query.Response:
        future = self.client.call_async(Query.Request(query=text, **fields))
        assert spin_until(self.executor, future.done, timeout_s), f"no answer to {text[:40]!r}"
        return future.result()

    def change_state(self, transition_id: int) -> bool:
        future = self.lifecycle.call_async(
            ChangeState.Request(transition=Transition(id=transition_id))
        )
        assert spin_until(self.executor, future.done, 30.0)
        return bool(future.result().success)


@pytest.fixture(scope="module")
def node_process(ros_context: None) -> Iterator[object]:
    """One llmi3d_node process (tiny preset) shared by the tests of this module."""
    import subprocess

    proc = subprocess.Popen(
        node_command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    yield proc
    output = stop_process(proc)
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def harness(node_process: object, ros_context: None) -> Iterator[Harness]:
    node = Node(f"node_test_client_{time.monotonic_ns()}")
    h = Harness(node)
    h.wait_ready()
    yield h
    h.executor.shutdown()
    node.destroy_node()


def test_01_query_before_any_frame_says_so(harness: Harness) -> None:
    """A query before the first frame fails with a message naming the missing input."""
    response = harness.query("the lamp")
    assert not response.success
    assert "no image received yet on /image_raw" in response.message


def test_02_round_trip(harness: Harness) -> None:
    """Header, boxes, markers and the debug image all follow the published frame."""
    header = harness.publish_frame(frame_id="front_camera_optical")
    response = harness.query("the lamp", max_results=1)
    assert response.success, response.message
    assert response.answer
    detections = response.detections
    assert detections.header.frame_id == "front_camera_optical"
    assert stamp_to_ns(detections.header.stamp) == stamp_to_ns(header.stamp)
    assert len(detections.detections) == 1
    detection = detections.detections[0]
    assert detection.id == "0"
    assert detection.header.frame_id == "front_camera_optical"
    hypothesis = detection.results[0].hypothesis
    assert hypothesis.class_id and 0.0 <= hypothesis.score <= 1.0
    size = detection.bbox.size
    assert all(np.isfinite([size.x, size.y, size.z])) and min(size.x, size.y, size.z) > 0
    assert detection.bbox.center.position.z > 0  # in front of the camera, metres
    q = detection.bbox.center.orientation
    assert np.linalg.norm([q.x, q.y, q.z, q.w]) == pytest.approx(1.0, abs=1e-6)

    published = (harness.markers, harness.debug, harness.detections)
    assert spin_until(harness.executor, lambda: all(published), 5.0)
    markers = harness.markers[-1].markers
    assert markers[0].action == Marker.DELETEALL
    assert [(m.type, m.ns, m.id) for m in markers[1:]] == [
        (Marker.LINE_LIST, "boxes", 0),
        (Marker.TEXT_VIEW_FACING, "labels", 0),
    ]
    assert markers[1].header.frame_id == "front_camera_optical"
    assert markers[2].text.startswith(hypothesis.class_id)
    debug = harness.debug[-1]
    assert (debug.width, debug.height, debug.encoding) == (WIDTH, HEIGHT, "rgb8")
    assert stamp_to_ns(debug.header.stamp) == stamp_to_ns(header.stamp)
    assert harness.detections[-1].header.frame_id == "front_camera_optical"


def _wrong_encoding() -> tuple[Image, CameraInfo]:
    image = rgb_to_image(np.zeros((HEIGHT, WIDTH, 3), np.uint8), Header())
    image.encoding = "32FC1"
    return image, camera_info_from_k(K, WIDTH, HEIGHT, Header())


def _zero_size() -> tuple[Image, CameraInfo]:
    image = Image(height=0, width=0, encoding="rgb8", step=0, data=b"")
    return image, camera_info_from_k(K, WIDTH, HEIGHT, Header())


def _zero_k() -> tuple[Image, CameraInfo]:
    info = camera_info_from_k(K, WIDTH, HEIGHT, Header())
    info.k = [0.0] * 9
    return rgb_to_image(np.zeros((HEIGHT, WIDTH, 3), np.uint8), Header()), info


def _size_mismatch() -> tuple[Image, CameraInfo]:
    info = camera_info_from_k(K, 640, 360, Header())
    return rgb_to_image(np.zeros((HEIGHT, WIDTH, 3), np.uint8), Header()), info


@pytest.mark.parametrize(
    ("make_frame", "expected"),
    [
        (_wrong_encoding, "unsupported image encoding '32FC1'"),
        (_zero_size, "zero size"),
        (_zero_k, "all zeros: the camera is not calibrated"),
        (_size_mismatch, "image is 160x120 but its CameraInfo is 640x360"),
    ],
    ids=["wrong-encoding", "zero-size", "zero-K", "size-mismatch"],
)
def test_03_bad_frames_fail_clearly_then_recover(
    harness: Harness, make_frame, expected: str
) -> None:
    """A bad frame gives success=false with a clear message; the next good frame works."""
    image, info = make_frame()
    harness.publish_frame(image, info)
    response = harness.query("the chair")
    assert not response.success
    assert expected in response.message
    harness.publish_frame()
    assert harness.query("the chair").success


@pytest.mark.parametrize(
    ("text", "fields", "expected"),
    [
        ("   ", {}, "query is empty"),
        ("x" * 10_000, {}, "query is 10000 characters long; the limit is max_query_chars=2000"),
        ("the lamp", {"box_prompt": [1.0, 2.0]}, "box_prompt must be empty or"),
        ("the lamp", {"point_prompt": [1.0, 2.0, 3.0]}, "point_prompt must be empty or [u, v]"),
        ("the lamp", {"box_prompt": [10.0, 10.0, 900.0, 50.0]}, "box"),
    ],
    ids=["empty", "10kB", "short-box", "long-point", "box-outside-image"],
)
def test_04_bad_queries_fail_clearly_then_recover(
    harness: Harness, text: str, fields: dict, expected: str
) -> None:
    """Bad queries are refused with the reason; a good query right after succeeds."""
    harness.publish_frame()
    response = harness.query(text, **fields)
    assert not response.success
    assert expected in response.message
    assert harness.query("the lamp").success


def test_05_prompts_are_accepted(harness: Harness) -> None:
    """A 2D box prompt and a 2D point prompt inside the image are answered."""
    harness.publish_frame()
    assert harness.query("what is this?", box_prompt=[10.0, 10.0, 60.0, 90.0]).success
    assert harness.query("the object here", point_prompt=[40.0, 50.0]).success


def test_06_standing_query_publishes_on_new_frames(harness: Harness) -> None:
    """A standing query is answered on new frames without a service call."""
    harness.standing_pub.publish(String(data="the sofa"))
    spin_until(harness.executor, lambda: False, 0.3)
    count = len(harness.detections)
    header = harness.publish_frame()
    stamp = stamp_to_ns(header.stamp)
    assert spin_until(
        harness.executor,
        lambda: any(stamp_to_ns(d.header.stamp) == stamp for d in harness.detections[count:]),
        10.0,
    )
    harness.standing_pub.publish(String(data=""))
    spin_until(harness.executor, lambda: False, 0.3)


def test_07_deactivate_then_activate(harness: Harness) -> None:
    """An inactive node refuses queries with a message; after activate it answers again."""
    assert harness.change_state(Transition.TRANSITION_DEACTIVATE)
    response = harness.query("the lamp")
    assert not response.success and "not active" in response.message
    assert harness.change_state(Transition.TRANSITION_ACTIVATE)
    assert spin_until(
        harness.executor, lambda: harness.image_pub.get_subscription_count() > 0, 10.0
    )
    harness.publish_frame()
    assert harness.query("the lamp").success


def test_08_many_queries_memory_is_flat(harness: Harness, node_process) -> None:
    """200 queries back to back: no error, resident memory grows less than 5 %."""
    process = psutil.Process(node_process.pid)
    harness.publish_frame()
    for _ in range(20):  # warm-up: allocator pools, caches
        assert harness.query("the lamp").success
    before = process.memory_info().rss
    for index in range(200):
        if index % 20 == 0:
            harness.publish_frame()  # new frames too, so the image encoder runs again
        response = harness.query(f"the lamp number {index % 7}")
        assert response.success, response.message
    after = process.memory_info().rss
    assert after < before * 1.05, f"RSS grew from {before / 2**20:.1f} to {after / 2**20:.1f} MiB"


def test_09_model_nan_output_is_reported(ros_context: None, tmp_path: Path) -> None:
    """A model emitting NaN gives success=false with a clear message, and the node keeps serving."""
    import subprocess

    import torch

    from llmi3d_core.model.checkpoint import save_checkpoint
    from llmi3d_core.model.llmi3d import LLMI3D
    from llmi3d_core.model.presets import get_preset

    model = LLMI3D(get_preset("tiny"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "head" in name:
                parameter.fill_(float("nan"))
    save_checkpoint(model, tmp_path / "nan_ckpt")

    proc = subprocess.Popen(
        node_command(f"checkpoint:={tmp_path / 'nan_ckpt'}", namespace="/nan"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    node = Node(f"nan_client_{time.monotonic_ns()}", namespace="/nan")
    h = Harness(node)
    try:
        h.wait_ready()
        h.publish_frame()
        for _ in range(2):
            response = h.query("the lamp")
            assert not response.success
            assert "is not finite" in response.message
        assert proc.poll() is None, "the node died"
    finally:
        h.executor.shutdown()
        node.destroy_node()
        output = stop_process(proc)
    assert "Traceback" not in output, output
