"""`llmi3d query` against the real node (tiny preset, own process) (issue 15, item 2).

The console script runs as a user runs it, in a subprocess of this test's ROS domain with DDS on
loopback; the camera frames come from the test's Harness, and its own service call on the same
frame checks the numbers the command prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rclpy.node import Node

# The node command and the test-side harness of the node tests.
from test_node import Harness, start_node, stop_node

from llmi3d_core.cli import build_parser
from llmi3d_ros.query_cli import yaw_deg

NAMESPACE = "/query_cli"
NODE = f"{NAMESPACE}/llmi3d_node"


def llmi3d(*args: str, timeout_s: float = 90.0) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("llmi3d")), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.fixture(scope="module")
def harness(ros_context: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """llmi3d_node (tiny) in NAMESPACE, and a harness that has published one frame to it."""
    log = tmp_path_factory.mktemp("node") / "llmi3d_node.log"
    proc = start_node(log, namespace=NAMESPACE)
    node = Node(f"query_cli_test_{time.monotonic_ns()}", namespace=NAMESPACE)
    h = Harness(node)
    try:
        h.wait_ready()
        h.publish_frame(frame_id="front_camera_optical")
        yield h
    finally:
        h.executor.shutdown()
        node.destroy_node()
        output = stop_node(proc, log)
    assert "Traceback" not in output, output


def test_query_prints_answer_boxes_and_frame(harness: Harness) -> None:
    """The text output has the answer, the frame and each box's centre, size, yaw and score."""
    result = llmi3d("query", "the lamp", "--node", NODE, "--timeout", "30")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("answer: '")
    assert "frame: front_camera_optical, image stamp " in out
    for label in ("box 0: ", ", score ", "centre (x, y, z)", "size (L, H, W)", "yaw "):
        assert label in out, out
    assert f"via {NODE}/query" in out


def test_query_json_matches_a_direct_service_call(harness: Harness) -> None:
    """--json carries the node's numbers: the same box as the harness's own call on that frame."""
    direct = harness.query("the lamp", max_results=1)
    assert direct.success, direct.message
    result = llmi3d(
        "query", "the lamp", "--node", NODE, "--max-results", "1", "--timeout", "30", "--json"
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["success"] is True
    assert answer["answer"] == direct.answer
    assert answer["frame_id"] == "front_camera_optical"
    assert answer["stamp"]["sec"] == direct.detections.header.stamp.sec
    assert len(answer["detections"]) == 1
    box, expected = answer["detections"][0], direct.detections.detections[0]
    position, size = expected.bbox.center.position, expected.bbox.size
    assert box["center_m"] == pytest.approx([position.x, position.y, position.z], abs=1e-6)
    assert box["size_m"] == pytest.approx([size.x, size.y, size.z], abs=1e-6)
    assert box["score"] == pytest.approx(expected.results[0].hypothesis.score, abs=1e-6)
    assert box["class_id"] == expected.results[0].hypothesis.class_id


def test_query_with_prompts(harness: Harness) -> None:
    """--box and --point reach the node as box_prompt and point_prompt."""
    for prompt in (["--box", "10", "10", "60", "90"], ["--point", "40", "50"]):
        result = llmi3d("query", "what is this?", "--node", NODE, "--json", *prompt)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["success"] is True


def test_query_the_node_refuses_says_why(harness: Harness) -> None:
    """A prompt outside the image: exit 1 and the node's message."""
    result = llmi3d("query", "the lamp", "--node", NODE, "--box", "10", "10", "900", "50")
    assert result.returncode == 1
    assert (
        "llmi3d query: the node could not answer: box_prompt [10.0, 10.0, 900.0, 50.0] lies "
        "outside the image (width 160, height 120 px)"
    ) in result.stderr


def test_query_nothing_found_prints_the_message(harness: Harness) -> None:
    """A "not here" answer (min_score 1.0, set on the running node): exit 0 and the message.

    Mechanics only; whether a trained model says "not here" when it should is measured by the
    evaluation (report.json not_here_rate), not here.
    """
    assert harness.set_param("min_score", 1.0).successful
    try:
        result = llmi3d("query", "find the fire extinguisher", "--node", NODE, "--timeout", "30")
    finally:
        assert harness.set_param("min_score", 0.0).successful
    assert result.returncode == 0, result.stderr
    first, *rest = result.stdout.splitlines()
    assert first.startswith(
        "no 'fire extinguisher' found: nothing matching was found in this frame (best candidate '"
    ), first
    assert "< min_score 1.00)" in first
    assert not any(line.startswith("box ") for line in rest), result.stdout


def test_query_without_a_node_fails_clearly_within_the_timeout(harness: Harness) -> None:
    """No service under that name: exit 3 after --timeout, naming the services that do exist.

    5 s, not less: on the loaded 2-core CI machine, discovering the other node's services once
    took more than 2 s.
    """
    start = time.monotonic()
    result = llmi3d("query", "the lamp", "--node", "/nobody/llmi3d_node", "--timeout", "5")
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - start < 25.0
    err = " ".join(result.stderr.split())
    assert "llmi3d query: error: no node offered /nobody/llmi3d_node/query within 5 s" in err
    assert f"try --node {NODE}" in err, err
    assert 'eval "$(scripts/run.sh env)"' in err


def test_query_without_ros_says_it_needs_ros() -> None:
    """Where rclpy cannot be imported, `llmi3d query` says what is missing (exit 2)."""
    code = (
        "import sys; sys.modules['rclpy'] = None\n"
        "from llmi3d_core.cli import main\n"
        "sys.exit(main(['query', 'the lamp']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "llmi3d query: needs ROS 2 (rclpy and the llmi3d_msgs interfaces)" in result.stderr


def test_llmi3d_help_lists_query() -> None:
    assert "ask a running llmi3d_node" in build_parser(["--help"]).format_help()


@pytest.mark.parametrize(
    ("xyzw", "expected"),
    [
        ((0.0, 0.0, 0.0, 1.0), 0.0),
        ((0.0, 0.38268343, 0.0, 0.92387953), 45.0),  # R_y(45 deg)
        ((0.0, -0.70710678, 0.0, 0.70710678), -90.0),
    ],
)
def test_yaw_is_the_rotation_about_the_camera_y_axis(xyzw, expected) -> None:
    assert yaw_deg(xyzw) == pytest.approx(expected, abs=1e-5)
