"""llmi3d_node in its own process, driven by a real rclpy client: round trips and peak memory.

    python benchmarks/bench_node.py                   # smol preset, 20 queries, domain 57
    python benchmarks/bench_node.py --preset tiny --queries 10

Used by run_benchmarks.py (sections "node vs bare Predictor" and "memory"); run alone it prints
the node's resident memory over a series of queries on fresh frames.

DDS stays on loopback: `ros_environment` sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST,
FASTDDS_DEFAULT_PROFILES_FILE=config/fastdds_loopback.xml and a ROS_DOMAIN_ID of the caller's
choice in os.environ, which both this process (before rclpy is imported) and the node process
inherit. Never import rclpy in a benchmark process before calling it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LOOPBACK_PROFILE = REPO / "config" / "fastdds_loopback.xml"
DEFAULT_DOMAIN_ID = 57
NODE_NAME = "llmi3d_node"
# The one parameter the benchmarks change from config/params.yaml: with the default best_effort
# input QoS, Fast DDS over loopback UDP drops most 640 x 480 rgb8 frames (0.9 MB, many fragments;
# measured: no frame of 5 arrived), so the node would answer "no image received".
RELIABLE_INPUT = {"qos_reliability": "reliable"}
# refusals of a query that only mean "the frame is still on its way" (llmi3d_node._why_no_frame)
TRANSIENT_REFUSALS = ("no image received yet", "no CameraInfo")


def ros_environment(domain_id: int) -> None:
    """Confine DDS to loopback in this process and its children (call before importing rclpy).

    Raises:
        ValueError: a domain id outside 0..101 (the range ROS 2 allows on Linux), or rclpy is
            already imported (its participant would have been created without these settings).
    """
    if not 0 <= domain_id <= 101:
        raise ValueError(f"ROS_DOMAIN_ID must be in 0..101, got {domain_id}")
    if "rclpy" in sys.modules and os.environ.get("ROS_DOMAIN_ID") != str(domain_id):
        raise ValueError("rclpy was imported before ros_environment(); DDS would not be confined")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(LOOPBACK_PROFILE)
    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")


def node_executable() -> list[str]:
    """The llmi3d_node console script next to this interpreter, else `python -m`."""
    script = Path(sys.executable).with_name("llmi3d_node")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "llmi3d_ros.llmi3d_node"]


@dataclass
class NodeProcess:
    """A running llmi3d_node; `stop()` ends it (SIGINT, then kill) and returns its output.

    Attributes:
        params: ROS parameters passed with -p (name -> value as text).
        threads: torch threads of the node process (its num_threads parameter and
            OMP_NUM_THREADS; 0: the defaults, all cores).
    """

    params: dict[str, str]
    threads: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self, log_path: Path) -> None:
        """Start the node; its stdout and stderr go to `log_path`."""
        params = dict(self.params)
        env = dict(os.environ)
        if self.threads:
            params["num_threads"] = str(self.threads)  # the node's torch.set_num_threads
            env["OMP_NUM_THREADS"] = str(self.threads)  # and every OpenMP pool before it
        args = [*node_executable(), "--ros-args"]
        for name, value in params.items():
            args += ["-p", f"{name}:={value}"]
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("node process not started")
        return self.proc.pid

    def check_alive(self) -> None:
        """Raise RuntimeError with the node's log tail when the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"llmi3d_node exited with code {self.proc.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 15.0) -> str:
        """SIGINT, wait, kill if needed; return the log tail."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log_tail()


@contextmanager
def running_node(params: dict[str, str], log_path: Path, threads: int = 0) -> Iterator[NodeProcess]:
    """Context manager: an llmi3d_node process with `params`, stopped on exit."""
    node = NodeProcess(params=params, threads=threads)
    node.start(log_path)
    try:
        yield node
    finally:
        node.stop()


@dataclass
class NodeClient:
    """The client side: publishes camera frames, calls ~/query, measures round trips.

    Create it after `ros_environment`; rclpy is imported here, lazily.
    """

    width: int = 640
    height: int = 480
    K: np.ndarray = field(
        default_factory=lambda: np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0, 0, 1.0]])
    )
    _clock_ns: int = 1_000_000_000

    def __post_init__(self) -> None:
        import rclpy
        from llmi3d_msgs.srv import Query
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        if not rclpy.ok():
            rclpy.init()
        self._query_type = Query
        self.node = Node(f"bench_client_{os.getpid()}_{time.monotonic_ns()}")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(Image, "image_raw", reliable)
        self.info_pub = self.node.create_publisher(CameraInfo, "camera_info", reliable)
        self.client = self.node.create_client(Query, f"{NODE_NAME}/query")

    def spin_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Spin until `predicate()` holds or `timeout_s` passes; return the predicate."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.01)
        return predicate()

    def wait_ready(self, node: NodeProcess, timeout_s: float = 300.0) -> float:
        """Wait until the node serves ~/query and subscribes to the camera; return seconds waited.

        Raises:
            RuntimeError: the node exited or did not get ready in `timeout_s` (log tail included).
        """
        start = time.monotonic()
        while not self.client.wait_for_service(timeout_sec=0.5):
            node.check_alive()
            if time.monotonic() - start > timeout_s:
                raise RuntimeError(f"llmi3d_node offered no ~/query in {timeout_s:.0f} s")
        subscribed = self.spin_until(
            lambda: (
                self.image_pub.get_subscription_count() > 0
                and self.info_pub.get_subscription_count() > 0
            ),
            60.0,
        )
        if not subscribed:
            raise RuntimeError(f"llmi3d_node did not subscribe to the camera:\n{node.log_tail()}")
        return time.monotonic() - start

    def publish_frame(self, rgb: np.ndarray) -> int:
        """Publish `rgb` and its CameraInfo with one new stamp; return the stamp in ns."""
        from std_msgs.msg import Header

        from llmi3d_ros.conversions import camera_info_from_k, rgb_to_image

        self._clock_ns += 100_000_000
        header = Header(frame_id="camera_optical_frame")
        header.stamp.sec, header.stamp.nanosec = divmod(self._clock_ns, 1_000_000_000)
        self.info_pub.publish(camera_info_from_k(self.K, self.width, self.height, header))
        self.image_pub.publish(rgb_to_image(rgb, header))
        return self._clock_ns

    def query(self, text: str, timeout_s: float = 120.0) -> tuple[Any, float]:
        """Call ~/query; return (response, round-trip seconds).

        Raises:
            RuntimeError: no answer within `timeout_s`.
        """
        request = self._query_type.Request(query=text)
        start = time.perf_counter()
        future = self.client.call_async(request)
        while not future.done():
            self.executor.spin_once(timeout_sec=0.001)
            if time.perf_counter() - start > timeout_s:
                raise RuntimeError(f"llmi3d_node did not answer {text!r} in {timeout_s:.0f} s")
        return future.result(), time.perf_counter() - start

    def query_on_frame(self, text: str, stamp_ns: int, retries: int = 100) -> tuple[Any, float]:
        """Query until the answer is about the frame stamped `stamp_ns` (it may still be in flight).

        Only the round trip of the answer about that frame is returned; answers about an older
        frame, or "no image / no CameraInfo yet" refusals (the image and its CameraInfo arrive
        separately), are discarded and the query is repeated.

        Raises:
            RuntimeError: the node never answered about that frame, or answered with an error.
        """
        from llmi3d_core.messages import stamp_to_ns

        message = ""
        for _ in range(retries):
            response, seconds = self.query(text)
            message = response.message
            if not response.success and not message.startswith(TRANSIENT_REFUSALS):
                raise RuntimeError(f"llmi3d_node failed to answer {text!r}: {message}")
            if response.success and stamp_to_ns(response.detections.header.stamp) == stamp_ns:
                return response, seconds
            self.spin_until(lambda: False, 0.05)
        raise RuntimeError(
            f"llmi3d_node never answered about the frame stamped {stamp_ns} ns (last: {message!r})"
        )

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()


class RssSampler:
    """Samples a process's resident set size (psutil) in a thread; keeps the peak.

    Args:
        pid: process to watch.
        interval_s: sampling period (the peak between two samples can be missed; the kernel's
            own high-water mark, VmHWM, is read too where /proc has it).
    """

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(int(self.process.memory_info().rss))
            except Exception:  # the process ended
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.samples) if self.samples else 0

    def high_water_mark(self) -> int | None:
        """VmHWM of /proc/<pid>/status in bytes (the kernel's peak RSS), None where missing."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None


def measure_node_memory(  # noqa: PLR0917 (the measurement's knobs)
    preset: str, queries: int, workdir: Path, threads: int = 0, seed: int = 0, device: str = "cpu"
) -> dict[str, Any]:
    """Peak RSS of llmi3d_node (default parameters, `preset`) over `queries` queries.

    Each query is about a new random 640 x 480 frame, so every query runs the image encoders
    and the LLM prefill (the most memory a query takes). Inputs are subscribed reliable
    (RELIABLE_INPUT); every other parameter is the default. Call `ros_environment` first.

    Returns:
        rss_ready_mb (after the model is loaded, before any query), peak_rss_mb (sampled every
        20 ms), vm_hwm_mb (the kernel's high-water mark), rss_end_mb, queries, ready_s,
        query_s_median.
    """
    import psutil

    rng = np.random.default_rng(seed)
    params = {"preset": preset, "device": device, **RELIABLE_INPUT}
    with running_node(params, workdir / f"node_memory_{preset}.log", threads) as node:
        client = NodeClient()
        try:
            ready_s = client.wait_ready(node)
            proc = psutil.Process(node.pid)
            time.sleep(0.5)
            rss_ready = proc.memory_info().rss
            seconds = []
            with RssSampler(node.pid) as sampler:
                for _ in range(queries):
                    rgb = rng.integers(0, 255, (client.height, client.width, 3), dtype=np.uint8)
                    stamp = client.publish_frame(rgb)
                    _, round_trip = client.query_on_frame("find the lamp", stamp)
                    seconds.append(round_trip)
                hwm = sampler.high_water_mark()
            rss_end = proc.memory_info().rss
        finally:
            client.close()
    mb = 1.0 / 2**20
    return {
        "preset": preset,
        "device": device,
        "queries": queries,
        "ready_s": ready_s,
        "rss_ready_mb": rss_ready * mb,
        "peak_rss_mb": sampler.peak * mb,
        "vm_hwm_mb": None if hwm is None else hwm * mb,
        "rss_end_mb": rss_end * mb,
        "query_s_median": statistics.median(seconds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smol")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ros-domain-id", type=int, default=DEFAULT_DOMAIN_ID)
    args = parser.parse_args()
    ros_environment(args.ros_domain_id)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench_node_") as tmp:
        result = measure_node_memory(args.preset, args.queries, Path(tmp), args.threads)
    for key, value in result.items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
