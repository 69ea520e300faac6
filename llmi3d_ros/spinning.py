"""Running a node until it is asked to stop, with no traceback from the stop itself.

Two things used to print tracebacks on a clean stop:

- rclpy's SIGINT/SIGTERM handler shuts the context down at once. A callback that is running at
  that moment (a timer publishing a frame, say) then fails with "publisher's context is invalid"
  and the executor re-raises that error from `spin`. Errors raised once the context is shut down
  are part of stopping, not a fault; everything else still propagates.
- rclpy then calls Python's own SIGINT handler, which raises KeyboardInterrupt wherever the main
  thread happens to be. Inside the executor that can be halfway through building an rclpy Task,
  whose `__del__` then fails at exit ("Exception ignored in: Future.__del__ ... AttributeError",
  about 1 stop in 40 with a fast timer; the CI failure of 2026-12-03). While spinning, rclpy's
  context shutdown already ends `spin`, so `init_rclpy` installs a SIGINT handler that raises only
  outside `run_until_shutdown`: Ctrl-C still interrupts slow work before spinning starts.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException

_spinning = threading.Event()  # set while run_until_shutdown's spin() runs


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    """Python's SIGINT handler under rclpy's: KeyboardInterrupt only while not spinning."""
    if not _spinning.is_set():
        raise KeyboardInterrupt


def init_rclpy(args: list[str] | None = None) -> None:
    """`rclpy.init(args=args)` for a spinning node's `main`, with SIGINT as the module says.

    Only for a node that spins an executor. A `main` whose loop sleeps instead (the bag player)
    keeps plain rclpy.init: there Ctrl-C must cut the sleep short, and no executor builds Tasks.

    The Python handler must be in place before rclpy.init, which keeps it and calls it after its
    own; `signal.signal` after init would replace rclpy's handler instead.
    """
    signal.signal(signal.SIGINT, _on_sigint)
    rclpy.init(args=args)


def run_until_shutdown(spin: Callable[[], None], context: Context | None = None) -> None:
    """Call `spin()` and return quietly when it ends because the ROS context was shut down.

    Args:
        spin: blocks while the node works, e.g. `lambda: rclpy.spin(node)`.
        context: the context the node lives in (rclpy's default context when None).
    """
    _spinning.set()
    try:
        spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok(context=context):
            raise  # a real fault while running
        # the context went away under a running callback: we are stopping
    finally:
        _spinning.clear()
