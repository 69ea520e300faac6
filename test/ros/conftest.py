"""Fixtures for tests that talk DDS through real rclpy nodes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def ros_context() -> Iterator[None]:
    """Initialise rclpy once for the whole session."""
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture
def client_node(ros_context: None) -> Iterator[Node]:
    """A plain rclpy node for the test side, with a unique name."""
    node = Node(f"test_client_{time.monotonic_ns()}")
    yield node
    node.destroy_node()


def spin_until(
    executor: SingleThreadedExecutor, predicate: Callable[[], bool], timeout_s: float
) -> bool:
    """Spin `executor` until `predicate()` holds or `timeout_s` passes; return the predicate."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def start_process(args: list[str], ready_text: str | None = None) -> subprocess.Popen[str]:
    """Start a Python entry point in a separate process with the test's environment."""
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_process(proc: subprocess.Popen[str], timeout_s: float = 10.0) -> str:
    """Stop a process started by start_process (SIGINT, then kill) and return its output."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out = proc.stdout.read() if proc.stdout else ""
    return out
