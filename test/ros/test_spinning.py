"""run_until_shutdown: a callback caught by the stop ends spinning quietly; real faults still raise.

Reproduces what a SIGTERM does to a publishing node (the CI failure of 2026-12-01): the context
is shut down while a timer callback runs, and that callback's publish fails.
"""

from __future__ import annotations

import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import String

from llmi3d_ros.spinning import run_until_shutdown


def spin_timer_node(callback_fault: str) -> None:
    """Spin a node in its own context whose timer publishes after `callback_fault` happens.

    callback_fault: "shutdown" shuts the context down first (what rclpy's signal handler
    does), "bug" raises a plain error while the context is fine.
    """
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("spinning_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    publisher = node.create_publisher(String, "spinning_test", 10)

    def on_timer() -> None:
        if callback_fault == "shutdown":
            context.shutdown()
            publisher.publish(String(data="too late"))  # raises: the context is invalid
        else:
            raise RuntimeError("a real bug in a callback")

    node.create_timer(0.01, on_timer)
    try:
        run_until_shutdown(executor.spin, context=context)
    finally:
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()


def test_publish_after_shutdown_is_a_quiet_stop() -> None:
    spin_timer_node("shutdown")  # returns instead of raising RCLError


def test_publish_after_shutdown_raises_without_the_guard() -> None:
    """The failure the guard is for is real in this rclpy (else the test above proves nothing)."""
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("spinning_test_raw", context=context)
    publisher = node.create_publisher(String, "spinning_test", 10)
    context.shutdown()
    # rclpy's own signal handler says "context is invalid"; Context.shutdown says "destruction
    # was requested": either way the callback raises and spin re-raises it
    with pytest.raises(Exception, match=r"context is invalid|destruction was requested"):
        publisher.publish(String(data="too late"))
    node.destroy_node()


def test_a_fault_while_running_still_raises() -> None:
    with pytest.raises(RuntimeError, match="a real bug"):
        spin_timer_node("bug")
