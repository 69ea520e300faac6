"""Soak: llmi3d_bringup with the synthetic camera at 10 Hz, a standing query and a service query
every second, for --minutes; errors, dropped frames, latency percentiles and memory growth.

    python benchmarks/bench_soak.py --minutes 30               # smol, 1 thread, domain 57
    python benchmarks/bench_soak.py --preset tiny --minutes 1  # a quick look
    python benchmarks/run_benchmarks.py --only soak            # the same, into BENCHMARKS.md

What runs: `llmi3d_bringup --synthetic-camera --synthetic-rate-hz 10` as a user starts it (its
own process, which starts the node and the camera), with config/params.yaml except `preset`,
`device` and `num_threads` (a copy in the work directory). This process is the client: it sets
the standing query once (std_msgs/String on standing_query), then calls ~/query every
`query_period_s` (one at a time: a call that takes longer delays the next, counted as late),
and listens to ~/detections, the camera's ground truth (reliable, one message per published
frame) and the node's diagnostics.

After a warm-up (10 % of the run, at least 10 s and at most 60 s; its errors are not counted,
the node's allocator and caches are still settling) the measured window starts; at its end:

    errors          failed or unanswered service calls, node or camera processes that exited,
                    [ERROR] and Traceback lines in the bringup log (must be 0)
    dropped frames  frames the camera published in the window (ground truth stamps) that the node
                    never received: its diagnostics count images received and name the newest
                    one's stamp, read at the window's first and last answer
    latency         service round trips (p50, p90, p99, max), and the age of every answer on
                    ~/detections (image stamp -> received here; standing-query answers included)
    memory          the node's resident set size at the window's start and end (growth must stay
                    under 5 %), and its peak, sampled every 5 s

Finally bringup is stopped with SIGINT, and the benchmark checks that every node exited with it.
DDS stays on loopback: call bench_node.ros_environment first (main() does).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (REPO, HERE):  # run from a checkout, uninstalled; bench_node next to us
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_node import DEFAULT_DOMAIN_ID, RssSampler, ros_environment  # noqa: E402

CAMERA_RATE_HZ = 10.0
QUERY_PERIOD_S = 1.0
STANDING_QUERY = "the lamp"
SERVICE_QUERY = "find the chair"
QUERY_TIMEOUT_S = 60.0
RSS_PERIOD_S = 5.0
MAX_RSS_GROWTH = 0.05
TRANSIENT_REFUSALS = ("no image received yet", "no CameraInfo")


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p90, p99 and max of `values` (None when empty)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "n": 0}
    data = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    return {"p50": p50, "p90": p90, "p99": p99, "max": float(data.max()), "n": len(values)}


def write_params(workdir: Path, preset: str, device: str, threads: int) -> Path:
    """config/params.yaml with this run's preset, device and num_threads, in `workdir`."""
    import yaml

    from llmi3d_core.paths import config_path

    params = yaml.safe_load(config_path("params.yaml").read_text(encoding="utf-8"))
    node = next(iter(params.values()))["ros__parameters"]
    node.update(preset=preset, device=device, num_threads=threads)
    path = workdir / "soak_params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


class SoakClient:
    """The client side: standing query, service calls, and what the nodes publish."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from llmi3d_msgs.srv import Query
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from std_msgs.msg import String
        from vision_msgs.msg import Detection3DArray

        if not rclpy.ok():
            rclpy.init()
        self._query_type = Query
        self._string_type = String
        self.node = Node(f"soak_client_{os.getpid()}")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.truth_stamps: list[int] = []
        self.answers: list[tuple[int, float]] = []  # (image stamp ns, received wall time ns)
        self.input_health: tuple[int, int] | None = None  # (images received, newest stamp ns)
        self.node.create_subscription(
            Detection3DArray, "llmi3d_synthetic_camera/ground_truth", self._on_truth, 10
        )
        self.node.create_subscription(
            Detection3DArray, "llmi3d_node/detections", self._on_detections, 10
        )
        self.node.create_subscription(DiagnosticArray, "diagnostics", self._on_diagnostics, 10)
        self.standing_pub = self.node.create_publisher(String, "standing_query", 10)
        self.client = self.node.create_client(Query, "llmi3d_node/query")

    def _on_truth(self, msg: Any) -> None:
        self.truth_stamps.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)

    def _on_detections(self, msg: Any) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.answers.append((stamp, time.time_ns()))

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "images_received" in values:
                received = int(values["images_received"])
                self.input_health = (received, int(values["last_image_stamp_ns"]))

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=min(0.02, max(0.0, deadline - time.monotonic())))

    def wait_ready(self, bringup: subprocess.Popen[bytes], timeout_s: float) -> float:
        """Wait for the service, the node's image subscription and camera frames; return s.

        Raises:
            RuntimeError: bringup exited, or not ready within `timeout_s`.
        """
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if bringup.poll() is not None:
                raise RuntimeError(f"llmi3d_bringup exited with {bringup.returncode}")
            ready = (
                self.client.service_is_ready()
                and self.node.count_subscribers("/image_raw") > 0
                and self.standing_pub.get_subscription_count() > 0
                and self.truth_stamps
            )
            if ready:
                return time.monotonic() - start
            self.spin_for(0.2)
        raise RuntimeError(f"bringup's nodes were not ready within {timeout_s:.0f} s")

    def set_standing_query(self, text: str) -> None:
        self.standing_pub.publish(self._string_type(data=text))

    def query(self, text: str, timeout_s: float) -> tuple[Any, float]:
        """One service call; (response or None on timeout, round trip s)."""
        start = time.perf_counter()
        future = self.client.call_async(self._query_type.Request(query=text))
        while not future.done() and time.perf_counter() - start < timeout_s:
            self.executor.spin_once(timeout_sec=0.005)
        if not future.done():
            self.client.remove_pending_request(future)
            return None, time.perf_counter() - start
        return future.result(), time.perf_counter() - start

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()


def node_processes(bringup: subprocess.Popen[bytes]) -> dict[str, Any]:
    """psutil processes of bringup's nodes by executable name."""
    import psutil

    found = {}
    for child in psutil.Process(bringup.pid).children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        for part in cmdline[:2]:
            name = Path(part).name
            if name in ("llmi3d_node", "llmi3d_synthetic_camera"):
                found[name] = child
    return found


def measure_soak(  # noqa: PLR0917 (the measurement's knobs)
    minutes: float,
    preset: str,
    workdir: Path,
    threads: int = 1,
    device: str = "cpu",
    camera_rate_hz: float = CAMERA_RATE_HZ,
    query_period_s: float = QUERY_PERIOD_S,
) -> dict[str, Any]:
    """Run the soak (see the module docstring) and return its figures.

    Call bench_node.ros_environment first. Raises RuntimeError when the nodes never get ready.
    """
    import psutil

    workdir.mkdir(parents=True, exist_ok=True)
    params = write_params(workdir, preset, device, threads)
    log_path = workdir / "soak_bringup.log"
    bringup_cmd = [
        str(Path(sys.executable).with_name("llmi3d_bringup")), "--synthetic-camera",
        "--synthetic-rate-hz", str(camera_rate_hz), "--params-file", str(params),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    duration_s = 60.0 * minutes
    warmup_s = min(60.0, max(10.0, 0.1 * duration_s))
    load_start = os.getloadavg()
    with log_path.open("wb") as log:
        bringup = subprocess.Popen(bringup_cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    client = SoakClient()
    errors: list[str] = []
    samplers = contextlib.ExitStack()
    try:
        ready_s = client.wait_ready(bringup, timeout_s=600.0)
        nodes = node_processes(bringup)
        client.set_standing_query(STANDING_QUERY)

        round_trips: list[float] = []
        calls = failed = timeouts = late = 0
        rss_start = health_start = answers_start = sampler = None
        window_wall_ns = [0, 0]  # wall clock of the window's start and end (camera stamps)
        window_start = time.monotonic() + warmup_s
        end = window_start + duration_s
        next_query = time.monotonic()
        while time.monotonic() < end:
            now = time.monotonic()
            in_window = now >= window_start
            if in_window and rss_start is None:
                rss_start = nodes["llmi3d_node"].memory_info().rss
                answers_start = len(client.answers)
                window_wall_ns[0] = time.time_ns()
                # in a thread: a service call can block this loop for many seconds
                sampler = samplers.enter_context(RssSampler(nodes["llmi3d_node"].pid, RSS_PERIOD_S))
            if in_window and health_start is None:  # the window's first diagnostics
                health_start = client.input_health
            for name, proc in nodes.items():
                if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                    raise RuntimeError(f"{name} exited during the soak")
            if now < next_query:
                client.spin_for(min(0.02, next_query - now))
                continue
            if now - next_query > 0.5 * query_period_s:
                late += in_window
            next_query = max(next_query + query_period_s, now)
            response, seconds = client.query(SERVICE_QUERY, QUERY_TIMEOUT_S)
            if not in_window:
                continue
            calls += 1
            if response is None:
                timeouts += 1
                errors.append(f"no answer within {QUERY_TIMEOUT_S:.0f} s")
            elif not response.success:
                failed += 1
                errors.append(f"query failed: {response.message}")
            else:
                round_trips.append(seconds)
        window_wall_ns[1] = time.time_ns()  # later than `end` when the last call ran over
        client.spin_for(1.0)  # the last answer's detections and diagnostics
        rss_end = nodes["llmi3d_node"].memory_info().rss
        samplers.close()
        health_end, answers_end = client.input_health, len(client.answers)
        camera_rss = nodes["llmi3d_synthetic_camera"].memory_info().rss
    finally:
        samplers.close()
        client.close()
        stop_s, exit_codes = stop_bringup(bringup)
    log = log_path.read_text(errors="replace")
    log_errors = [
        line for line in log.splitlines() if "[ERROR]" in line or "Traceback" in line
    ]  # fmt: skip
    errors += log_errors
    if bringup.returncode != -signal.SIGINT:
        errors.append(f"llmi3d_bringup ended with {bringup.returncode}, not by SIGINT")

    # frames the camera published in the window vs frames the node received in it
    published = received = None
    if health_start and health_end:
        first_stamp, last_stamp = health_start[1], health_end[1]
        published = sum(first_stamp < s <= last_stamp for s in client.truth_stamps)
        received = health_end[0] - health_start[0]
    window_truth = [s for s in client.truth_stamps if window_wall_ns[0] <= s < window_wall_ns[1]]
    window_s = (window_wall_ns[1] - window_wall_ns[0]) / 1e9
    ages = [
        (got_ns - stamp) / 1e9 for stamp, got_ns in client.answers[answers_start:answers_end]
    ]  # fmt: skip
    mb = 1.0 / 2**20
    peak = max([*sampler.samples, rss_start, rss_end]) if sampler else max(rss_start, rss_end)
    rss = list(enumerate(sampler.samples if sampler else []))
    return {
        "minutes": minutes,
        "preset": preset,
        "device": device,
        "threads": threads,
        "camera_rate_hz": camera_rate_hz,
        "window_s": window_s,
        "camera_rate_measured_hz": len(window_truth) / window_s,
        "planned_calls": int(duration_s / query_period_s),
        "query_period_s": query_period_s,
        "standing_query": STANDING_QUERY,
        "service_query": SERVICE_QUERY,
        "warmup_s": warmup_s,
        "ready_s": ready_s,
        "calls": calls,
        "failed": failed,
        "timeouts": timeouts,
        "late_calls": late,
        "errors": len(errors),
        "error_samples": errors[:5],
        "log_warnings": sum("[WARN]" in line for line in log.splitlines()),
        "published_frames": published,
        "received_frames": received,
        "dropped_frames": None if published is None else max(0, published - received),
        "answers": answers_end - answers_start,
        "standing_answers": answers_end - answers_start - len(round_trips),
        "round_trip_s": percentiles(round_trips),
        "answer_age_s": percentiles(ages),
        "rss_start_mb": rss_start * mb,
        "rss_end_mb": rss_end * mb,
        "rss_peak_mb": peak * mb,
        "rss_growth": rss_end / rss_start - 1.0,
        "camera_rss_mb": camera_rss * mb,
        "rss_series_mb": [(i * RSS_PERIOD_S, round(r * mb, 1)) for i, r in rss],
        "stop_s": stop_s,
        "exit_codes": exit_codes,
        "load_start": load_start,
        "load_end": os.getloadavg(),
    }


def stop_bringup(bringup: subprocess.Popen[bytes]) -> tuple[float, dict[str, int | None]]:
    """SIGINT bringup (as Ctrl-C would) and wait; return seconds taken and the nodes' codes."""
    import psutil

    children = (
        psutil.Process(bringup.pid).children(recursive=True) if bringup.poll() is None else []
    )
    start = time.monotonic()
    if bringup.poll() is None:
        bringup.send_signal(signal.SIGINT)
        try:
            bringup.wait(timeout=30.0)
        except subprocess.TimeoutExpired:
            bringup.kill()
            bringup.wait()
    _, alive = psutil.wait_procs(children, timeout=5.0)
    for child in alive:
        child.kill()
    codes = {str(c.pid): getattr(c, "returncode", None) for c in children}
    return time.monotonic() - start, codes


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def table_lines(result: dict[str, Any]) -> list[str]:
    """The soak's markdown table (also printed by main())."""
    rt, age = result["round_trip_s"], result["answer_age_s"]
    dropped = result["dropped_frames"]
    published = result["published_frames"]
    drop_text = "-" if dropped is None else f"{dropped} of {published}"
    if dropped is not None and published:
        drop_text += f" ({100.0 * dropped / published:.1f} %)"
    growth = 100.0 * result["rss_growth"]
    verdict = "ok" if result["rss_growth"] < MAX_RSS_GROWTH else "**over 5 %**"
    return [
        "| figure | value |",
        "|---|---|",
        f"| errors (must be 0) | **{result['errors']}** |",
        f"| service calls: answered / failed / no answer | {rt['n']} / {result['failed']} / "
        f"{result['timeouts']} (of {result['calls']} made, {result['planned_calls']} planned; "
        f"{result['late_calls']} started late) |",
        f"| service round trip p50 / p90 / p99 / max (ms) | {_fmt(rt['p50'], 1e3, 0)} / "
        f"{_fmt(rt['p90'], 1e3, 0)} / {_fmt(rt['p99'], 1e3, 0)} / {_fmt(rt['max'], 1e3, 0)} |",
        f"| answers on ~/detections (standing query + service) | {result['answers']} "
        f"({result['standing_answers']} standing) |",
        f"| answer age p50 / p90 / p99 / max (ms, image stamp -> received) | "
        f"{_fmt(age['p50'], 1e3, 0)} / {_fmt(age['p90'], 1e3, 0)} / {_fmt(age['p99'], 1e3, 0)}"
        f" / {_fmt(age['max'], 1e3, 0)} |",
        f"| measured window (the last call may run past the planned end) | "
        f"{result['window_s']:.0f} s |",
        f"| camera frames published (measured rate) | {published if published is not None else '-'}"
        f" ({result['camera_rate_measured_hz']:.2f} Hz of {result['camera_rate_hz']:g}) |",
        f"| frames the node never received | {drop_text} |",
        f"| node RSS start / end / peak (MB) | {result['rss_start_mb']:.0f} / "
        f"{result['rss_end_mb']:.0f} / {result['rss_peak_mb']:.0f} |",
        f"| node RSS growth (must stay under 5 %) | {growth:+.1f} % ({verdict}) |",
        f"| camera RSS at the end (MB) | {result['camera_rss_mb']:.0f} |",
        f"| [WARN] lines in the log | {result['log_warnings']} |",
        f"| stop (SIGINT to bringup until every node exited) | {result['stop_s']:.1f} s |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="measured window")
    parser.add_argument("--preset", default="smol", help="model preset of the node")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the node")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here")
    parser.add_argument("--ros-domain-id", type=int, default=DEFAULT_DOMAIN_ID)
    args = parser.parse_args()
    ros_environment(args.ros_domain_id)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench_soak_") as tmp:
        workdir = args.workdir or Path(tmp)
        result = measure_soak(args.minutes, args.preset, workdir, args.threads, args.device)
    print("\n".join(table_lines(result)))
    for sample in result["error_samples"]:
        print(f"error: {sample}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
