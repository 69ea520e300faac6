"""Stopping by signal: llmi3d_bringup and llmi3d_demo never leave a node running (issue 15, item 1).

kill, timeout, systemd and `docker stop` send SIGTERM, a closed terminal SIGHUP, Ctrl-C SIGINT.
Each test starts the real executable (tiny preset, synthetic camera) in its own process, waits
until its nodes run, sends the signal, and checks that every child process is gone within a few
seconds and how the parent ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from llmi3d_ros.bringup import StopRequested, StopSignals, deferred_stop_signals

GONE_WITHIN_S = 8.0  # the bringup's SIGINT -> SIGKILL grace is 5 s


def executable(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def wait_for_log(proc: subprocess.Popen[bytes], log: Path, text: str, timeout_s: float) -> str:
    """Wait until `text` is in the log file; fail with the log if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return content
        assert proc.poll() is None, f"exited with {proc.returncode} before {text!r}:\n{content}"
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} within {timeout_s} s:\n{log.read_text(errors='replace')}")


def children_of(proc: subprocess.Popen[bytes], count: int, timeout_s: float = 20.0) -> list:
    """The `count` child processes of `proc` (psutil), once they all run."""
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children = parent.children(recursive=True)
        if len(children) >= count:
            return children
        time.sleep(0.1)
    raise AssertionError(f"expected {count} child processes, found {parent.children()}")


def assert_all_gone(children: list, log: Path) -> None:
    _, alive = psutil.wait_procs(children, timeout=GONE_WITHIN_S)
    for child in alive:  # do not leak them into the rest of the session
        child.kill()
    assert not alive, f"still running: {[c.pid for c in alive]}\n{log.read_text()[-3000:]}"


@pytest.mark.parametrize(
    "signum",
    [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
    ids=["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL"],
)
def test_bringup_stops_its_nodes(ros_context: None, tmp_path: Path, signum: int) -> None:
    """Every node stops with bringup; bringup ends by the same signal (shell status 128 + N).

    SIGTERM, SIGINT and SIGHUP are forwarded (as SIGINT) and waited for, so the nodes shut down
    cleanly; after a SIGKILL, which bringup cannot catch, the kernel's parent-death signal
    stops them.
    """
    log = tmp_path / "bringup.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [executable("llmi3d_bringup"), "--synthetic-camera", "--preset", "tiny",
             "--namespace", "/signal_test"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_log(proc, log, "activated: listening on", 90.0)
        children = children_of(proc, 2)
        assert {Path(c.cmdline()[1]).name for c in children} == {
            "llmi3d_node",
            "llmi3d_synthetic_camera",
        }
        start = time.monotonic()
        proc.send_signal(signum)
        proc.wait(timeout=GONE_WITHIN_S)
        assert_all_gone(children, log)
        assert time.monotonic() - start < GONE_WITHIN_S
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signum
    output = log.read_text(errors="replace")
    assert "Traceback" not in output, output
    assert "did not stop within" not in output, output  # a clean stop, not a kill


def test_demo_stops_its_nodes_on_sigterm(ros_context: None, tmp_path: Path) -> None:
    """llmi3d_demo, stopped by SIGTERM while it asks queries, stops both nodes."""
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [executable("llmi3d_demo"), "--preset", "tiny", "--out", str(tmp_path / "out"),
             "--images", "20", "--run-timeout-s", "120"],
            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )  # fmt: skip
    try:
        wait_for_log(proc, log, "[demo] scene", 120.0)
        children = children_of(proc, 2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=GONE_WITHIN_S)
        assert_all_gone(children, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGTERM
    output = log.read_text(errors="replace")
    assert "[demo] stopped by SIGTERM" in output
    assert "Traceback" not in output, output


def test_synthetic_camera_stops_cleanly_on_sigterm(ros_context: None, tmp_path: Path) -> None:
    """The camera (no children of its own) shuts down through rclpy on SIGTERM: status 0."""
    log = tmp_path / "camera.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [executable("llmi3d_synthetic_camera"), "--ros-args", "-r", "__ns:=/signal_test"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_log(proc, log, "playing", 60.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=GONE_WITHIN_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text(errors="replace")


def test_a_stop_signal_raises_at_once_outside_deferred() -> None:
    with StopSignals([]) as signals, pytest.raises(StopRequested) as raised:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.0)
        pytest.fail("SIGTERM did not raise")
    assert raised.value.signum == signal.SIGTERM and signals.stopping


def test_a_stop_signal_inside_deferred_is_raised_on_leaving() -> None:
    """Around spin_once the demo defers the stop: raised inside a callback that rclpy's C++
    runs, it became pybind11's "Unable to convert call argument" RuntimeError (exit status 1)."""
    reached = False
    with (
        StopSignals([]) as signals,
        pytest.raises(StopRequested) as raised,
        deferred_stop_signals(),
    ):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler has run by now, and raised nothing here
        reached = True
    assert reached and raised.value.signum == signal.SIGTERM and signals.stopping
    assert StopSignals.active is None
    with deferred_stop_signals():  # no StopSignals in force: nothing to defer
        pass
