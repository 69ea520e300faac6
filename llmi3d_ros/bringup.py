"""llmi3d_bringup: start llmi3d_node (and optionally the synthetic camera) like the launch file.

    llmi3d_bringup --synthetic-camera                       # try it without a camera
    llmi3d_bringup --image-topic /cam/image_raw --camera-info-topic /cam/camera_info

`launch/bringup.launch.py` and this script share `plan()`, so both start the same nodes with the
same parameters and remappings. Use the launch file in a ROS 2 installation (`ros2 launch llmi3d_ros
bringup.launch.py`); use this where `launch`/`launch_ros` are not installed (a pip-only set-up).

Stopping: SIGINT (Ctrl-C), SIGTERM (kill, timeout, systemd, docker stop) and SIGHUP (a closed
terminal) all stop every node: each gets SIGINT, is waited for up to STOP_TIMEOUT_S, then killed;
llmi3d_bringup then ends by the signal it got. The nodes also get SIGTERM from the kernel if
llmi3d_bringup dies without clean-up (SIGKILL), so none is ever left running on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from llmi3d_core.paths import config_path
from llmi3d_ros.dds_env import confinement_problems, startup_lines


@dataclass(frozen=True)
class BringupOptions:
    """The launch arguments; defaults match bringup.launch.py's."""

    params_file: str = ""  # "" = the shipped config/params.yaml
    namespace: str = ""
    checkpoint: str = ""
    preset: str = ""  # "" = as in params_file
    device: str = ""  # "" = as in params_file
    floor_frame: str = ""  # "" = as in params_file
    image_topic: str = "image_raw"
    camera_info_topic: str = "camera_info"
    use_sim_time: bool = False
    synthetic_camera: bool = False
    synthetic_dataset: str = ""
    synthetic_rate_hz: float = 0.0  # 0 = the camera's own default (its rate_hz parameter)
    log_level: str = "info"


# Help of each option, shared with launch/bringup.launch.py's DeclareLaunchArgument descriptions.
ARGUMENT_HELP: dict[str, str] = {
    "params_file": "parameter file of llmi3d_node (default: the shipped config/params.yaml)",
    "namespace": "namespace of every node",
    "checkpoint": "checkpoint directory written by `llmi3d train` (default: preset in params_file)",
    "preset": "model preset when no checkpoint: tiny, smol, hf (default: as in params_file)",
    "device": "cpu or cuda (default: as in params_file)",
    "floor_frame": "TF frame on the floor, z up, e.g. base_footprint: stands the boxes on the "
    "floor (default: as in params_file, none)",
    "image_topic": "sensor_msgs/Image topic",
    "camera_info_topic": "sensor_msgs/CameraInfo topic",
    "use_sim_time": "use /clock (true when replaying a bag with publish_clock)",
    "synthetic_camera": "also start llmi3d_synthetic_camera",
    "synthetic_dataset": "dataset directory the synthetic camera plays (default: generated)",
    "synthetic_rate_hz": "frames per second of the synthetic camera (default 0: its own, 5 Hz)",
    "log_level": "ROS log level: debug, info, warn, error, fatal",
}


@dataclass(frozen=True)
class NodeSpec:
    """One node to start: executable, parameter files, parameter overrides and remappings."""

    executable: str
    name: str
    params_files: list[str] = field(default_factory=list)
    parameters: dict[str, object] = field(default_factory=dict)
    remappings: list[tuple[str, str]] = field(default_factory=list)


def plan(options: BringupOptions) -> list[NodeSpec]:
    """The nodes to start for `options`, in start order."""
    params_file = options.params_file or str(config_path("params.yaml"))
    overrides: dict[str, object] = {"use_sim_time": options.use_sim_time}
    for key in ("checkpoint", "preset", "device", "floor_frame"):
        value = getattr(options, key)
        if value:
            overrides[key] = value
    remappings = [("image_raw", options.image_topic), ("camera_info", options.camera_info_topic)]
    specs = [
        NodeSpec("llmi3d_node", "llmi3d_node", [params_file], overrides, remappings),
    ]
    if options.synthetic_camera:
        camera_params: dict[str, object] = {"use_sim_time": options.use_sim_time}
        if options.synthetic_dataset:
            camera_params["dataset"] = options.synthetic_dataset
        if float(options.synthetic_rate_hz) > 0:  # a string from the launch file
            camera_params["rate_hz"] = float(options.synthetic_rate_hz)
        camera = NodeSpec(
            "llmi3d_synthetic_camera", "llmi3d_synthetic_camera", [], camera_params, remappings
        )
        specs.insert(0, camera)
    return specs


def _param_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def command_line(spec: NodeSpec, options: BringupOptions) -> list[str]:
    """The `<executable> --ros-args ...` command that starts `spec`."""
    executable = str(Path(sys.executable).with_name(spec.executable))
    args = [executable, "--ros-args", "--log-level", options.log_level]
    if options.namespace:
        args += ["-r", f"__ns:={options.namespace}"]
    for params_file in spec.params_files:
        args += ["--params-file", params_file]
    for key, value in spec.parameters.items():
        args += ["-p", f"{key}:={_param_value(value)}"]
    for source, target in spec.remappings:
        if source != target:
            args += ["-r", f"{source}:={target}"]
    return args


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_TIMEOUT_S = 5.0  # SIGINT -> SIGKILL; a tiny-preset node stops in about 1 s
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StopRequested(BaseException):
    """Raised in the main thread when SIGINT, SIGTERM or SIGHUP arrives (see `stop_signals`).

    A BaseException like KeyboardInterrupt, so that `except Exception` blocks do not swallow it.

    Attributes:
        signum: the signal that asked us to stop.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """What each node process runs between fork and exec (Linux; elsewhere nothing).

    - Its own process group: a Ctrl-C in the terminal reaches this process only, which forwards
      one SIGINT; a node that got SIGINT twice (terminal, then us) could be interrupted in the
      middle of its clean shutdown.
    - SIGTERM when this process dies, however it dies (even SIGKILL, or the OOM killer), so that
      no node is ever left running under PID 1.
    """
    libc = None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child
        except OSError:
            libc = None

    def setup() -> None:
        os.setpgid(0, 0)
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)

    return setup


def start(
    options: BringupOptions, processes: list[subprocess.Popen[bytes]] | None = None
) -> list[subprocess.Popen[bytes]]:
    """Start every node of the plan as a child process (output goes to this terminal).

    Each child runs in a process group of its own and gets SIGTERM if this process dies
    (`_child_setup`); stop them with `stop`. Each one is appended to `processes` (when given)
    as soon as it runs, so that a signal in the middle leaves none unknown; returns the list.
    """
    processes = [] if processes is None else processes
    setup = _child_setup(os.getpid())
    for spec in plan(options):
        processes.append(
            subprocess.Popen(command_line(spec, options), preexec_fn=setup)  # noqa: PLW1509
        )
    return processes


def stop(processes: list[subprocess.Popen[bytes]], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGINT each process, then SIGKILL whatever is still running after `timeout_s`.

    SIGINT is what ROS 2 nodes (rclpy, and `ros2 launch` when it stops them) treat as "shut down
    cleanly"; we send it whatever signal we got, because SIGHUP would kill a node without its
    clean-up.
    """
    for proc in processes:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(
                f"[llmi3d_bringup] {Path(str(proc.args[0])).name} (pid {proc.pid}) did not stop "
                f"within {timeout_s:.0f} s of SIGINT; killing it",
                file=sys.stderr,
            )
            proc.kill()
            proc.wait()


class StopSignals:
    """Context manager: SIGINT, SIGTERM and SIGHUP raise StopRequested in the main thread.

    kill, timeout, systemd and `docker stop` send SIGTERM, a closed terminal SIGHUP, Ctrl-C
    SIGINT: each must stop the nodes, not orphan them. Set `stopping` before the clean-up
    stops `processes`: a signal that arrives then kills them at once instead of raising again
    (an impatient second Ctrl-C must not cut the clean-up short). The previous handlers are
    restored on exit.

    Inside `deferred()` (around a call into rclpy's executor) a signal is only recorded, and
    StopRequested is raised when the call returns: raised inside a callback that rclpy's C++
    code runs, pybind11 would turn it into an unrelated RuntimeError ("Unable to convert call
    argument '0' to Python object") and the stop would end in a traceback and exit status 1.
    """

    active: StopSignals | None = None  # the instance entered last, for `deferred_stop_signals`

    def __init__(self, processes: list[subprocess.Popen[bytes]]) -> None:
        self.processes = processes
        self.stopping = False
        self._previous: dict[int, Any] = {}
        self._deferring = False
        self._pending: int | None = None

    def _handler(self, signum: int, frame: object) -> None:
        if self.stopping:
            for proc in self.processes:
                if proc.poll() is None:
                    proc.kill()
            return
        if self._deferring:
            self._pending = self._pending or signum
            return
        self.stopping = True
        raise StopRequested(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A stop signal that arrives inside is raised as StopRequested on leaving."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None and not self.stopping:
            self.stopping = True
            raise StopRequested(self._pending)

    def __enter__(self) -> StopSignals:
        self._previous = {signum: signal.signal(signum, self._handler) for signum in STOP_SIGNALS}
        StopSignals.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, old in self._previous.items():
            signal.signal(signum, old)
        StopSignals.active = None


def deferred_stop_signals() -> contextlib.AbstractContextManager[None]:
    """`StopSignals.deferred` of the StopSignals in force; nothing when there is none."""
    active = StopSignals.active
    return active.deferred() if active is not None else contextlib.nullcontext()


def exit_by_signal(signum: int) -> NoReturn:
    """End this process by `signum` with the signal's default action.

    The parent then sees "terminated by signal N" (a shell prints status 128 + N; Popen gives
    -N), the convention after Ctrl-C, and what systemd and docker count as a clean stop on
    SIGTERM; a plain exit status would hide that the process was stopped.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    sys.exit(128 + signum)  # reached only if the signal is blocked


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The command line: one option per BringupOptions field (help from ARGUMENT_HELP).

    The epilog says whether DDS is confined to loopback in `environ` (default: os.environ).
    """
    environ = os.environ if environ is None else environ
    problems = confinement_problems(environ)
    here = "confined" if not problems else "NOT confined (" + "; ".join(problems) + ")"
    parser = argparse.ArgumentParser(
        prog="llmi3d_bringup",
        description=__doc__.split("\n")[0],
        epilog=(
            "DDS: llmi3d_bringup uses the DDS settings of its environment and changes none; "
            "unset, DDS is not confined to loopback and discovery reaches every network "
            "interface. `scripts/run.sh bringup ARGS` starts it confined to loopback (what the "
            "demo and the tests do); on a robot, configure DDS as you normally do. In this "
            f"shell, DDS is {here}."
        ),
    )
    for item in dataclasses.fields(BringupOptions):
        flag = "--" + item.name.replace("_", "-")
        if item.type in (bool, "bool"):
            parser.add_argument(flag, action="store_true", help=ARGUMENT_HELP[item.name])
        else:
            default = item.default
            shown = f" (default: {default})" if default else ""
            kind = float if item.type in (float, "float") else str
            parser.add_argument(
                flag, type=kind, default=default, help=ARGUMENT_HELP[item.name] + shown
            )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the DDS settings and the command line of each node; start nothing",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> BringupOptions:
    """Parse the command line into BringupOptions (`--dry-run` is left out)."""
    values = vars(build_parser().parse_args(argv))
    values.pop("dry_run")
    return BringupOptions(**values)


def main(argv: list[str] | None = None) -> int:
    """Start the nodes and wait.

    Returns 0 when every node exited by itself with status 0, 1 when one failed (the others are
    then stopped). SIGINT, SIGTERM or SIGHUP stop every node (`stop`), and this process then
    ends by the same signal (`exit_by_signal`).
    """
    args = vars(build_parser().parse_args(argv))
    dry_run = args.pop("dry_run")
    options = BringupOptions(**args)
    for line in startup_lines("llmi3d_bringup", os.environ):
        print(line, flush=True)
    if dry_run:
        for spec in plan(options):
            print(shlex.join(command_line(spec, options)))
        return 0
    processes: list[subprocess.Popen[bytes]] = []
    with StopSignals(processes) as signals:
        try:
            start(options, processes)
            while all(proc.poll() is None for proc in processes):
                time.sleep(0.2)
            failed = [p for p in processes if p.returncode not in (None, 0)]
            return 1 if failed else 0
        except StopRequested as stop_request:
            stopped_by = stop_request.signum
        finally:
            signals.stopping = True
            stop(processes)
    exit_by_signal(stopped_by)


if __name__ == "__main__":
    sys.exit(main())
