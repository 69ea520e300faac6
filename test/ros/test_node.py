"""llmi3d_node end to end: the real node (tiny preset) in its own process, a real client here.

The tiny preset is untrained: its scores are low (about 0.1) and arbitrary. The node runs here with
an answer rule of zeros (min_score, min_ratio_to_nothing, min_score_others), so every query finds
its candidates and the plumbing can be checked; tests of "not here" and "all of them" set the
rule's parameters through SetParameters and check the mechanics only. Whether
a trained model says "not here" when, and only when, the object is absent is measured by the
evaluation (`llmi3d eval`, report.json's not_here_rate), not here.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import spin_until, stop_process
from geometry_msgs.msg import TransformStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from llmi3d_msgs.srv import Query
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

from llmi3d_core.frame_tree import RigidTransform
from llmi3d_core.geometry import project
from llmi3d_core.ground_plane import GroundPlane
from llmi3d_core.messages import detection_box, stamp_to_ns
from llmi3d_ros.conversions import camera_info_from_k, rgb_to_image, transform_stamped

K = np.array([[200.0, 0.0, 80.0], [0.0, 200.0, 60.0], [0.0, 0.0, 1.0]])
WIDTH, HEIGHT = 160, 120
# the node's answer rule (llmi3d_core.prediction.AnswerRule); all 0.0 in these tests
ANSWER_RULE_PARAMS = ("min_score", "min_ratio_to_nothing", "min_score_others")
RELIABLE = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


def node_command(*params: str, namespace: str = "/") -> list[str]:
    """Command line of llmi3d_node with the tiny model and reliable inputs (deterministic).

    The answer rule all 0.0: the untrained tiny model scores about 0.1, below the defaults, and
    the plumbing tests need boxes.
    """
    args = [str(Path(sys.executable).with_name("llmi3d_node")), "--ros-args"]
    args += ["-r", f"__ns:={namespace}"]
    defaults = (
        "preset:=tiny", "qos_reliability:=reliable", "num_threads:=1",
        *(f"{name}:=0.0" for name in ANSWER_RULE_PARAMS),
    )  # fmt: skip
    for param in (*defaults, *params):
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
        self.set_parameters = node.create_client(SetParameters, "llmi3d_node/set_parameters")
        self.get_parameters = node.create_client(GetParameters, "llmi3d_node/get_parameters")
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

    def set_param(self, name: str, value: object) -> SetParametersResult:
        """Set one parameter of the running node, as `ros2 param set` does (SetParameters)."""
        request = SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()]
        )
        future = self.set_parameters.call_async(request)
        assert spin_until(self.executor, future.done, 10.0), f"no answer to setting {name}"
        return future.result().results[0]

    def get_param(self, name: str) -> object:
        """The running node's value of one parameter (GetParameters)."""
        future = self.get_parameters.call_async(GetParameters.Request(names=[name]))
        assert spin_until(self.executor, future.done, 10.0), f"no answer to getting {name}"
        return parameter_value_to_python(future.result().values[0])

    def change_state(self, transition_id: int) -> bool:
        future = self.lifecycle.call_async(
            ChangeState.Request(transition=Transition(id=transition_id))
        )
        assert spin_until(self.executor, future.done, 30.0)
        return bool(future.result().success)


def start_node(log: Path, *params: str, namespace: str = "/") -> subprocess.Popen[str]:
    """Start llmi3d_node (`node_command`) with its output going to the file `log`.

    A file, not a pipe: a pipe is read only when the node stops, and once its 64 KiB are full the
    node blocks in its next log call (test_08 alone logs 220 queries).
    """
    with log.open("w") as out:
        return subprocess.Popen(
            node_command(*params, namespace=namespace), stdout=out, stderr=subprocess.STDOUT
        )


def stop_node(proc: subprocess.Popen[str], log: Path) -> str:
    """Stop a node started by `start_node`; return its output."""
    stop_process(proc)
    return log.read_text()


@pytest.fixture(scope="module")
def node_process(ros_context: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One llmi3d_node process (tiny preset) shared by the tests of this module."""
    log = tmp_path_factory.mktemp("node") / "llmi3d_node.log"
    proc = start_node(log)
    yield proc
    output = stop_node(proc, log)
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

    log = tmp_path / "llmi3d_node.log"
    proc = start_node(log, f"checkpoint:={tmp_path / 'nan_ckpt'}", namespace="/nan")
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
        output = stop_node(proc, log)
    assert "Traceback" not in output, output


def test_09b_the_models_own_answer_ratio_is_the_default(ros_context: None, tmp_path: Path) -> None:
    """A checkpoint carrying a fitted min_ratio_to_nothing (here 100: nearly every best box is
    "not here") is answered with it while the parameter is negative (its default), the node
    says so at configure, and a given value overrides it."""
    import torch

    from llmi3d_core.model.checkpoint import save_checkpoint
    from llmi3d_core.model.llmi3d import LLMI3D
    from llmi3d_core.model.presets import get_preset

    torch.manual_seed(0)
    model = LLMI3D(get_preset("tiny"))
    model.answer_ratio.fill_(100.0)
    save_checkpoint(model, tmp_path / "ratio_ckpt")

    log = tmp_path / "llmi3d_node.log"
    proc = start_node(
        log, f"checkpoint:={tmp_path / 'ratio_ckpt'}", "min_ratio_to_nothing:=-1.0",
        namespace="/ratio",
    )  # fmt: skip
    node = Node(f"ratio_client_{time.monotonic_ns()}", namespace="/ratio")
    h = Harness(node)
    try:
        h.wait_ready()
        h.publish_frame()
        own = h.query("the lamp", max_results=5)
        assert h.set_param("min_ratio_to_nothing", 100.0).successful
        given = h.query("the lamp", max_results=5)
        assert h.set_param("min_ratio_to_nothing", 0.0).successful
        every = h.query("the lamp", max_results=5)
    finally:
        h.executor.shutdown()
        node.destroy_node()
        output = stop_node(proc, log)
    assert own.success and len(own.detections.detections) == 0, own.message
    assert "< min_ratio_to_nothing 100.00 x" in own.message, own.message
    assert (given.message, len(given.detections.detections)) == (own.message, 0)
    assert len(every.detections.detections) >= 1, every.message
    assert "min_ratio_to_nothing=-1.0 (the model's: 100, fitted on its validation split)" in output
    assert "Traceback" not in output, output


# ---------------------------------------------------------------- "not here" and "all of them"
# Issue 14. The tiny model's scores are arbitrary, so these tests drive min_score through
# SetParameters and check the mechanics; the semantic "not here" of a trained model is measured by
# the evaluation (report.json not_here_rate), not here.


@contextmanager
def param_set(harness: Harness, name: str, value: float) -> Iterator[None]:
    """Set one answer-rule parameter on the running node for a block, then put back 0.0."""
    assert name in ANSWER_RULE_PARAMS
    result = harness.set_param(name, value)
    assert result.successful, result.reason
    try:
        yield
    finally:
        assert harness.set_param(name, 0.0).successful


def _scores(response: Query.Response) -> list[float]:
    return [d.results[0].hypothesis.score for d in response.detections.detections]


def _stamped(messages: list, stamp_ns: int, header_of) -> list:
    return [
        m for m in messages if (h := header_of(m)) is not None and stamp_to_ns(h.stamp) == stamp_ns
    ]


def _markers_header(msg: MarkerArray) -> Header | None:
    return msg.markers[0].header if msg.markers else None


def test_10_nothing_found_is_an_answer_naming_the_best_candidate(harness: Harness) -> None:
    """min_score 1.0 (set through SetParameters): success, no boxes, "nothing matching was found".

    The answer names the query's object phrase and the message the best candidate turned down.
    Mechanics only: with min_score 1.0 no candidate of any model passes; whether a trained model
    says "not here" exactly when the object is absent is measured by the evaluation (report.json
    not_here_rate), not here.
    """
    header = harness.publish_frame(frame_id="front_camera_optical")
    with param_set(harness, "min_score", 1.0):
        response = harness.query("find the fire extinguisher", max_results=5)
    assert response.success, response.message
    assert len(response.detections.detections) == 0
    assert response.detections.header.frame_id == "front_camera_optical"
    assert stamp_to_ns(response.detections.header.stamp) == stamp_to_ns(header.stamp)
    assert response.answer == "no 'fire extinguisher' found"
    assert re.fullmatch(
        r"nothing matching was found in this frame \(best candidate '[^']+', "
        r"score [01]\.\d\d < min_score 1\.00\)",
        response.message,
    ), response.message


def test_11_all_the_chairs_returns_every_candidate_best_first(harness: Harness) -> None:
    """min_score 0.0, "all the chairs", max_results=5: several boxes, best first, each scored.

    As many as the model's candidates allow (what max_results=100 returns), at most 5; a request
    with max_results 0 takes the node's max_results parameter. Which boxes are chairs is for a
    trained model and the evaluation to say, not this test.
    """
    harness.publish_frame()
    candidates = harness.query("all the chairs", max_results=100)
    assert candidates.success, candidates.message
    response = harness.query("all the chairs", max_results=5)
    assert response.success, response.message
    detections = response.detections.detections
    assert len(detections) == min(5, len(candidates.detections.detections))
    assert len(detections) >= 2, "the tiny model ranks every object its detector found"
    scores = _scores(response)
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert [d.id for d in detections] == [str(rank) for rank in range(len(detections))]
    assert all(d.results[0].hypothesis.class_id for d in detections)
    assert response.answer
    assert response.message.startswith(f"found {len(detections)}: ")

    assert len(harness.query("all the chairs").detections.detections) == 1  # parameter: 1
    assert harness.set_param("max_results", 3).successful
    try:
        assert len(harness.query("all the chairs").detections.detections) == min(3, len(scores))
    finally:
        assert harness.set_param("max_results", 1).successful


def test_12_min_score_changes_the_answer_at_run_time_and_is_validated(harness: Harness) -> None:
    """Same frame, same query: min_score 0.0 -> boxes, the 2nd best score -> the top ones,
    1.0 -> none. 1.5 and -0.1 are refused with a reason and the old value stays.

    Mechanics only (the tiny model's scores are arbitrary); the semantic "not here" of a trained
    model is measured by the evaluation (report.json not_here_rate), not here.
    """
    harness.publish_frame()
    everything = harness.query("the lamp", max_results=5)
    scores = _scores(everything)
    assert len(scores) >= 2, everything.message
    threshold = scores[1]
    with param_set(harness, "min_score", threshold):
        assert harness.get_param("min_score") == threshold
        assert _scores(harness.query("the lamp", max_results=5)) == [
            score for score in scores if score >= threshold
        ]
    with param_set(harness, "min_score", 1.0):
        nothing = harness.query("the lamp", max_results=5)
        assert nothing.success and len(nothing.detections.detections) == 0
        assert nothing.message.startswith("nothing matching was found")
        for bad in (1.5, -0.1):
            result = harness.set_param("min_score", bad)
            assert not result.successful
            assert "min_score" in result.reason and "out of range" in result.reason, result.reason
            assert harness.get_param("min_score") == 1.0
        result = harness.set_param("min_score", "high")
        assert not result.successful and result.reason
        assert harness.get_param("min_score") == 1.0
        assert len(harness.query("the lamp", max_results=5).detections.detections) == 0
    assert _scores(harness.query("the lamp", max_results=5)) == scores


def test_12b_the_ratio_to_nothing_and_the_others_floor_change_the_answer(harness: Harness) -> None:
    """min_ratio_to_nothing 100 -> "not here", with a message naming the ratio test; the best
    score as min_score_others -> the best box alone. Both refuse values out of range.

    Mechanics only (the tiny model's scores are arbitrary).
    """
    harness.publish_frame()
    everything = harness.query("the lamp", max_results=5)
    scores = _scores(everything)
    assert len(scores) >= 2 and scores[1] < scores[0], everything.message
    with param_set(harness, "min_ratio_to_nothing", 100.0):
        refused = harness.query("the lamp", max_results=5)
        assert refused.success and len(refused.detections.detections) == 0
        assert re.fullmatch(
            r"nothing matching was found in this frame \(best candidate '[^']+', "
            r"score [01]\.\d\d < min_ratio_to_nothing 100\.00 x [01]\.\d\d, the probability "
            r"that nothing matches\)",
            refused.message,
        ), refused.message
        result = harness.set_param("min_ratio_to_nothing", 101.0)
        assert not result.successful and "out of range" in result.reason, result.reason
        assert harness.get_param("min_ratio_to_nothing") == 100.0
    with param_set(harness, "min_score_others", scores[0]):
        assert _scores(harness.query("the lamp", max_results=5)) == scores[:1]
        result = harness.set_param("min_score_others", 1.5)
        assert not result.successful and "out of range" in result.reason, result.reason
    assert _scores(harness.query("the lamp", max_results=5)) == scores


def test_13_standing_query_clears_its_boxes_when_nothing_is_found(harness: Harness) -> None:
    """A standing query whose answer becomes "not here" leaves nothing stale on screen.

    It publishes an empty Detection3DArray with the image's header, a MarkerArray holding only
    DELETEALL, and the debug image without boxes (the published picture, unchanged). min_score
    1.0 makes "not here" certain; for a trained model, see the evaluation's not_here_rate.
    """
    harness.standing_pub.publish(String(data="the sofa"))
    spin_until(harness.executor, lambda: False, 0.3)
    try:
        stamp = stamp_to_ns(harness.publish_frame().stamp)
        assert spin_until(
            harness.executor,
            lambda: (
                _stamped(harness.detections, stamp, lambda m: m.header)
                and _stamped(harness.markers, stamp, _markers_header)
            ),
            10.0,
        )
        [found] = _stamped(harness.detections, stamp, lambda m: m.header)
        assert len(found.detections) >= 1
        [boxes] = _stamped(harness.markers, stamp, _markers_header)
        assert Marker.LINE_LIST in [m.type for m in boxes.markers]

        with param_set(harness, "min_score", 1.0):
            rgb = np.random.default_rng(7).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            header = harness.publish_frame(rgb_to_image(rgb, Header()), frame_id="cam_opt")
            stamp = stamp_to_ns(header.stamp)
            published = (
                lambda: _stamped(harness.detections, stamp, lambda m: m.header),
                lambda: _stamped(harness.markers, stamp, _markers_header),
                lambda: _stamped(harness.debug, stamp, lambda m: m.header),
            )
            assert spin_until(harness.executor, lambda: all(p() for p in published), 10.0)
        [empty], [cleared], [debug] = (p() for p in published)
        assert len(empty.detections) == 0 and empty.header.frame_id == "cam_opt"
        assert [m.action for m in cleared.markers] == [Marker.DELETEALL]
        assert bytes(debug.data) == rgb.tobytes()  # no box drawn
    finally:
        harness.standing_pub.publish(String(data=""))
        spin_until(harness.executor, lambda: False, 0.3)


def test_14_standing_query_failure_clears_its_boxes(harness: Harness) -> None:
    """A frame the standing query cannot be answered on (bad encoding) clears the markers."""
    harness.standing_pub.publish(String(data="the sofa"))
    spin_until(harness.executor, lambda: False, 0.3)
    try:
        stamp = stamp_to_ns(harness.publish_frame().stamp)
        assert spin_until(
            harness.executor, lambda: _stamped(harness.markers, stamp, _markers_header), 10.0
        )
        image, info = _wrong_encoding()
        stamp = stamp_to_ns(harness.publish_frame(image, info).stamp)
        assert spin_until(
            harness.executor, lambda: _stamped(harness.markers, stamp, _markers_header), 10.0
        )
        [cleared] = _stamped(harness.markers, stamp, _markers_header)
        assert [m.action for m in cleared.markers] == [Marker.DELETEALL]
        assert not _stamped(harness.detections, stamp, lambda m: m.header)
    finally:
        harness.standing_pub.publish(String(data=""))
        spin_until(harness.executor, lambda: False, 0.3)


def test_15_the_camera_height_stands_the_boxes_on_the_floor(harness: Harness) -> None:
    """camera_height_m / camera_pitch_deg set at run time: each box is moved towards or away from
    the camera so that its bottom face lies on that floor (or, if the floor would move it more
    than 2x, left as it was); 0 turns it off again. Out-of-range values are refused.

    Mechanics only (the tiny model's boxes are arbitrary); the gain of a true floor is measured by
    `llmi3d eval --ground-plane` (BENCHMARKS.md).
    """
    harness.publish_frame()
    plain = harness.query("the lamp", max_results=5).detections.detections
    assert len(plain) >= 2
    down = GroundPlane(1.0, 10.0).down
    # a floor 1.3x as far below as the lowest box's bottom, so that this box moves
    belows = [float(down @ _bottom(*detection_box(d))) for d in plain]
    assert max(belows) > 0.01, "every box of the tiny model is above the horizon"
    height = round(1.3 * max(belows), 6)
    assert harness.set_param("camera_height_m", height).successful
    assert harness.set_param("camera_pitch_deg", 10.0).successful
    try:
        placed = harness.query("the lamp", max_results=5).detections.detections
        result = harness.set_param("camera_pitch_deg", 95.0)
        assert not result.successful and "out of range" in result.reason, result.reason
        assert not harness.set_param("camera_height_m", -1.0).successful
    finally:
        assert harness.set_param("camera_height_m", 0.0).successful
        assert harness.set_param("camera_pitch_deg", 0.0).successful
    assert [d.results[0].hypothesis.score for d in placed] == _scores_of(plain)
    moved = 0
    for before, after in zip(plain, placed, strict=True):
        center, dims_lwh, R = detection_box(after)
        old_center, _, _ = detection_box(before)
        if np.allclose(center, old_center, atol=1e-6):
            continue
        moved += 1
        assert float(down @ _bottom(center, dims_lwh, R)) == pytest.approx(height, rel=1e-4)
        # straight towards or away from the camera in the image: the foot (the bottom face's
        # centre, upright) keeps its column; along its viewing ray, or up or down the column to
        # the row its 2D box's bottom edge gives (GroundPlane.place)
        old_dims = detection_box(before)[1]
        feet = [old_center + old_dims[2] / 2 * down, center + dims_lwh[2] / 2 * down]
        columns = project(np.stack(feet), K)[:, 0]
        assert columns[1] == pytest.approx(columns[0], abs=1e-3)
    assert moved >= 1, "the floor moved none of the tiny model's boxes"
    again = harness.query("the lamp", max_results=5).detections.detections
    for before, after in zip(plain, again, strict=True):
        np.testing.assert_allclose(detection_box(after)[0], detection_box(before)[0])


def _camera_link_to_optical() -> np.ndarray:
    """camera_link (x forward, y left, z up) -> its optical frame: optical axes as columns."""
    return np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _transform(parent: str, child: str, R: np.ndarray, t: tuple[float, ...]) -> TransformStamped:
    return transform_stamped(Header(frame_id=parent), child, RigidTransform(R, np.asarray(t)))


def _pitched(pitch_deg: float) -> np.ndarray:
    """A body frame pitched about its y axis (positive: looking down), as a URDF's rpy."""
    c, s = math.cos(math.radians(pitch_deg)), math.sin(math.radians(pitch_deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def test_16_the_floor_comes_from_tf(harness: Harness) -> None:
    """floor_frame set: the camera's height and pitch come from TF as a robot publishes them (the
    optical frame on /tf_static, camera_link moved on /tf like a pan-tilt head), giving the same
    boxes as camera_height_m / camera_pitch_deg; the boxes follow the head as it tilts. A frame TF
    does not know, or an image stamped long after the head's last pose, leaves the boxes where the
    model put them, and the answer says why.
    """
    frame = harness.publish_frame(frame_id="cam_opt")
    plain = harness.query("the lamp", max_results=5).detections.detections
    belows = [float(GroundPlane(1.0, 10.0).down @ _bottom(*detection_box(d))) for d in plain]
    height = round(1.3 * max(belows), 6)

    def by_params(pitch_deg: float) -> list:
        assert harness.set_param("camera_height_m", height).successful
        assert harness.set_param("camera_pitch_deg", pitch_deg).successful
        try:
            return harness.query("the lamp", max_results=5).detections.detections
        finally:
            assert harness.set_param("camera_height_m", 0.0).successful
            assert harness.set_param("camera_pitch_deg", 0.0).successful

    expected = {pitch: by_params(pitch) for pitch in (10.0, 20.0)}
    latched = QoSProfile(
        depth=10, reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )  # fmt: skip
    static_pub = harness.node.create_publisher(TFMessage, "/tf_static", latched)
    tf_pub = harness.node.create_publisher(TFMessage, "/tf", RELIABLE)
    optical = _transform("camera_link", "cam_opt", _camera_link_to_optical(), (0.0, 0.0, 0.0))
    static_pub.publish(TFMessage(transforms=[optical]))

    def tilt_head(pitch_deg: float) -> None:
        head = _transform("base_footprint", "camera_link", _pitched(pitch_deg), (0.3, 0.0, height))
        head.header.stamp = frame.stamp
        for _ in range(3):  # as a robot does, again and again (the node reads /tf best effort)
            tf_pub.publish(TFMessage(transforms=[head]))
            spin_until(harness.executor, lambda: False, 0.1)

    try:
        assert harness.set_param("floor_frame", "base_footprint").successful
        assert spin_until(harness.executor, lambda: tf_pub.get_subscription_count() > 0, 10.0)
        for pitch in (10.0, 20.0):
            tilt_head(pitch)
            response = harness.query("the lamp", max_results=5)
            assert "not used" not in response.message, response.message
            for got, want in zip(response.detections.detections, expected[pitch], strict=True):
                np.testing.assert_allclose(detection_box(got)[0], detection_box(want)[0], atol=1e-5)
                np.testing.assert_allclose(detection_box(got)[1], detection_box(want)[1], atol=1e-5)
        assert harness.set_param("floor_frame", "nowhere").successful
        response = harness.query("the lamp", max_results=5)
        assert response.success
        assert "floor_frame 'nowhere' not used" in response.message, response.message
        assert "base_footprint" in response.message  # the known frames are listed
        for got, want in zip(response.detections.detections, plain, strict=True):
            np.testing.assert_allclose(detection_box(got)[0], detection_box(want)[0])
        # TF is read at the image's stamp: a frame 2 s newer than the head's last pose has none
        assert harness.set_param("floor_frame", "base_footprint").successful
        harness.clock_ns += 2_000_000_000
        harness.publish_frame(frame_id="cam_opt")
        response = harness.query("the lamp", max_results=5)
        assert response.success
        assert "floor_frame 'base_footprint' not used" in response.message, response.message
    finally:
        assert harness.set_param("floor_frame", "").successful
        harness.node.destroy_publisher(static_pub)
        harness.node.destroy_publisher(tf_pub)


def _bottom(center: np.ndarray, dims_lwh: np.ndarray, R: np.ndarray) -> np.ndarray:
    """The centre of a box's bottom face (local y, the height axis, points down)."""
    return center + dims_lwh[2] / 2 * R[:, 1]


def _scores_of(detections: list) -> list[float]:
    return [d.results[0].hypothesis.score for d in detections]
