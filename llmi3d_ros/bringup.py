"""llmi3d_bringup: start llmi3d_node (and optionally the synthetic camera) like the launch file.

    llmi3d_bringup --synthetic-camera                       # try it without a camera
    llmi3d_bringup --image-topic /cam/image_raw --camera-info-topic /cam/camera_info

`launch/bringup.launch.py` and this script share `plan()`, so both start the same nodes with the
same parameters and remappings. Use the launch file in a ROS 2 installation (`ros2 launch llmi3d_ros
bringup.launch.py`); use this where `launch`/`launch_ros` are not installed (a pip-only set-up).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmi3d_core.paths import config_path


@dataclass(frozen=True)
class BringupOptions:
    """The launch arguments; defaults match bringup.launch.py's."""

    params_file: str = ""  # "" = the shipped config/params.yaml
    namespace: str = ""
    checkpoint: str = ""
    preset: str = ""  # "" = as in params_file
    device: str = ""  # "" = as in params_file
    image_topic: str = "image_raw"
    camera_info_topic: str = "camera_info"
    use_sim_time: bool = False
    synthetic_camera: bool = False
    synthetic_dataset: str = ""
    log_level: str = "info"


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
    for key in ("checkpoint", "preset", "device"):
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


def start(options: BringupOptions) -> list[subprocess.Popen[bytes]]:
    """Start every node of the plan as a child process (output goes to this terminal)."""
    return [subprocess.Popen(command_line(spec, options)) for spec in plan(options)]


def stop(processes: list[subprocess.Popen[bytes]], timeout_s: float = 10.0) -> None:
    """SIGINT each process, then kill whatever is still running after `timeout_s`."""
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parse_args(argv: list[str] | None = None) -> BringupOptions:
    """Parse the command line into BringupOptions."""
    defaults = BringupOptions()
    parser = argparse.ArgumentParser(prog="llmi3d_bringup", description=__doc__.split("\n")[0])
    parser.add_argument("--params-file", default=defaults.params_file)
    parser.add_argument("--namespace", default=defaults.namespace)
    parser.add_argument("--checkpoint", default=defaults.checkpoint)
    parser.add_argument("--preset", default=defaults.preset)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--image-topic", default=defaults.image_topic)
    parser.add_argument("--camera-info-topic", default=defaults.camera_info_topic)
    parser.add_argument("--use-sim-time", action="store_true")
    parser.add_argument("--synthetic-camera", action="store_true")
    parser.add_argument("--synthetic-dataset", default=defaults.synthetic_dataset)
    parser.add_argument("--log-level", default=defaults.log_level)
    return BringupOptions(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    """Start the nodes and wait; Ctrl-C stops them all."""
    processes = start(parse_args(argv))
    try:
        while all(proc.poll() is None for proc in processes):
            time.sleep(0.5)
        failed = [p for p in processes if p.returncode not in (None, 0)]
        return 1 if failed else 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop(processes)


if __name__ == "__main__":
    sys.exit(main())
