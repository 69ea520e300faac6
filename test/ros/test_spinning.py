"""run_until_shutdown: a callback caught by the stop ends spinning quietly; real faults still raise.

Reproduces what a SIGTERM does to a publishing node (the CI failure of 2026-12-01): the context
is shut down while a timer callback runs, and that callback's publish fails. init_rclpy: Ctrl-C
while spinning raises no KeyboardInterrupt inside rclpy (the CI failure of 2026-12-03).
"""

from __future__ import annotations

import subprocess
import sys

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


# Run in a process of its own: signal handlers and rclpy's default context belong to `main`.
SIGINT_SCRIPT = """
import os, signal, sys, time
import rclpy
from std_msgs.msg import String
from llmi3d_ros.spinning import init_rclpy, run_until_shutdown

# as under a shell: a test runner may pass SIGINT on ignored, and Python then keeps it ignored
signal.signal(signal.SIGINT, signal.default_int_handler)

def wait_for_the_handler():
    # Python runs the handler between bytecodes, once the signal has reached it (rclpy's C
    # handler comes first): a fixed count of bytecodes was too few on a loaded machine
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        pass

if sys.argv[1] == "init_rclpy":
    init_rclpy([])
else:
    rclpy.init()
try:
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C before spinning, e.g. while a model loads
    wait_for_the_handler()
except KeyboardInterrupt:
    print("before spinning: KeyboardInterrupt")
rclpy.shutdown()
rclpy.init()  # a fresh context: the one above was shut down by rclpy's handler

node = rclpy.create_node("sigint_test")
publisher = node.create_publisher(String, "sigint_test", 10)

def on_timer():
    try:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while a callback runs
        wait_for_the_handler()
        publisher.publish(String(data="after the signal"))
    except KeyboardInterrupt:
        print("in a callback: KeyboardInterrupt")
        raise

node.create_timer(0.01, on_timer)
run_until_shutdown(lambda: rclpy.spin(node))
node.destroy_node()
rclpy.try_shutdown()
print("stopped")
"""


def run_sigint_script(init: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", SIGINT_SCRIPT, init],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_sigint_while_spinning_stops_without_an_asynchronous_keyboard_interrupt() -> None:
    """Ctrl-C inside spin ends it through rclpy alone; outside spin it still interrupts.

    An asynchronous KeyboardInterrupt could land halfway through rclpy building a Task, whose
    `__del__` then printed a traceback at exit (the CI failure of 2026-12-03).
    """
    output = run_sigint_script("init_rclpy")
    assert "before spinning: KeyboardInterrupt" in output
    assert "in a callback" not in output
    assert "stopped" in output
    assert "Traceback" not in output


def test_plain_rclpy_init_raises_keyboard_interrupt_inside_callbacks() -> None:
    """What init_rclpy avoids is real in this rclpy (else the test above proves nothing)."""
    output = run_sigint_script("rclpy.init")
    assert "in a callback: KeyboardInterrupt" in output
