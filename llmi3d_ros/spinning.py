"""Running a node until it is asked to stop, without a traceback for a callback caught mid-stop.

rclpy's SIGINT/SIGTERM handler shuts the context down at once. A callback that is running at that
moment (a timer publishing a frame, say) then fails with "publisher's context is invalid" and the
executor re-raises that error from `spin`, so a clean stop printed a traceback. Errors raised once
the context is shut down are part of stopping, not a fault; everything else still propagates.
"""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException


def run_until_shutdown(spin: Callable[[], None], context: Context | None = None) -> None:
    """Call `spin()` and return quietly when it ends because the ROS context was shut down.

    Args:
        spin: blocks while the node works, e.g. `lambda: rclpy.spin(node)`.
        context: the context the node lives in (rclpy's default context when None).
    """
    try:
        spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok(context=context):
            raise  # a real fault while running
        # the context went away under a running callback: we are stopping
