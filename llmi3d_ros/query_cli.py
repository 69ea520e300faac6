"""`llmi3d query`: ask a running llmi3d_node from the command line, without the ros2 CLI.

    llmi3d query "the lamp"
    llmi3d query "what is this?" --box 120 80 260 300
    llmi3d query "the object here" --point 200 150 --json
    llmi3d query "the chair" --node /robot/llmi3d_node --timeout 30

One call of the node's ~/query service (llmi3d_msgs/srv/Query, fields documented in
msg/llmi3d_msgs/srv/Query.srv), as `ros2 service call /llmi3d_node/query llmi3d_msgs/srv/Query
"{query: 'the lamp'}"` would make. It prints the answer, each box (centre, size, yaw, score) and
the frame; when nothing matching was found, the node's message instead of boxes (it names the
best candidate and the test it missed). --json prints the same as one JSON object. Run it in
the node's ROS domain with the same DDS settings: after `scripts/run.sh demo` or
`scripts/run.sh bringup` in another shell, run `eval "$(scripts/run.sh env)"` here first.

Exit status: 0 answered ("not here" included); 1 the node could not answer (its message is
printed); 2 bad arguments or no ROS 2 here; 3 no node offered the service, or it did not answer,
within --timeout.

llmi3d_core/cli.py registers this module by name only and imports it when `llmi3d query` runs:
llmi3d_core never imports ROS. This module imports no torch either, so it starts in about a second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import rclpy
from llmi3d_msgs.srv import Query
from rclpy.executors import SingleThreadedExecutor

from llmi3d_ros.dds_env import confinement_problems

EXIT_REFUSED = 1
EXIT_UNREACHED = 3
SERVICE_TYPE = "llmi3d_msgs/srv/Query"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llmi3d query`."""
    parser.description = __doc__.split("\n")[0]
    parser.add_argument("text", help="what to find or ask, e.g. 'the lamp'")
    parser.add_argument(
        "--box",
        nargs=4,
        type=float,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="2D box prompt (the service's box_prompt), pixels of the image as published",
    )
    parser.add_argument(
        "--point",
        nargs=2,
        type=float,
        metavar=("U", "V"),
        help="2D point prompt (the service's point_prompt), pixels of the image as published",
    )
    parser.add_argument(
        "--max-results",
        type=int,
        default=0,
        metavar="N",
        help="most boxes to return (default 0: the node's max_results parameter)",
    )
    parser.add_argument(
        "--node",
        default="/llmi3d_node",
        help="full name of the node, namespace included; its service is NODE/query "
        "(default: /llmi3d_node)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for the service to appear and answer, together (default: 10)",
    )
    parser.add_argument("--json", action="store_true", help="print the response as JSON")


def service_name(node: str) -> str:
    """`/ns/llmi3d_node` (or `ns/llmi3d_node`) -> `/ns/llmi3d_node/query`."""
    return "/" + node.strip("/") + "/query"


def yaw_deg(orientation_xyzw: tuple[float, float, float, float]) -> float:
    """Heading of a box's length axis (its x axis) about the camera's y axis, degrees.

    In the optical frame (x right, y down, z forward) the camera's y axis is the vertical of a
    level camera, so for an upright object this is its yaw: 0 when the length axis points along
    +x, 90 when it points along -z (KITTI's / Omni3D's rotation_y convention, R = R_y(yaw)).
    From the rotation matrix of the quaternion: yaw = atan2(-R[2, 0], R[0, 0]).
    """
    x, y, z, w = orientation_xyzw
    r00 = 1.0 - 2.0 * (y * y + z * z)
    r20 = 2.0 * (x * z - w * y)
    return math.degrees(math.atan2(-r20, r00))


def response_to_dict(response: Query.Response, service: str, round_trip_s: float) -> dict:
    """The service response as plain values (the --json output)."""
    header = response.detections.header
    detections = []
    for det in response.detections.detections:
        hypothesis = det.results[0].hypothesis if det.results else None
        pose, size = det.bbox.center, det.bbox.size
        q = pose.orientation
        quaternion = (q.x, q.y, q.z, q.w)
        detections.append(
            {
                "id": det.id,
                "class_id": hypothesis.class_id if hypothesis else "",
                "score": hypothesis.score if hypothesis else None,
                "center_m": [pose.position.x, pose.position.y, pose.position.z],
                "size_m": [size.x, size.y, size.z],
                "orientation_xyzw": list(quaternion),
                "yaw_deg": yaw_deg(quaternion),
            }
        )
    return {
        "service": service,
        "success": bool(response.success),
        "message": response.message,
        "answer": response.answer,
        "frame_id": header.frame_id,
        "stamp": {"sec": header.stamp.sec, "nanosec": header.stamp.nanosec},
        "round_trip_s": round(round_trip_s, 4),
        "detections": detections,
    }


def format_answer(result: dict) -> str:
    """The human-readable output: answer, frame, then one block per box."""
    stamp = result["stamp"]
    count = len(result["detections"])
    if count:
        first = f"answer: {result['answer']!r} ({result['message']})"
    else:  # "not here": the node's message says so and names the best candidate turned down
        first = f"{result['answer'] or 'no box'}: {result['message']}"
    lines = [
        first,
        f"frame: {result['frame_id'] or '(empty frame_id)'}, image stamp "
        f"{stamp['sec']}.{stamp['nanosec']:09d} s; boxes in its optical frame "
        "(x right, y down, z forward), metres",
    ]
    for index, det in enumerate(result["detections"]):
        score = "n/a" if det["score"] is None else f"{det['score']:.3f}"
        cx, cy, cz = det["center_m"]
        sx, sy, sz = det["size_m"]
        lines += [
            f"box {index}: {det['class_id'] or '(no label)'}, score {score}",
            f"  centre (x, y, z)  {cx:8.3f} {cy:8.3f} {cz:8.3f} m",
            f"  size (L, H, W)    {sx:8.3f} {sy:8.3f} {sz:8.3f} m  (bbox.size x, y, z)",
            f"  yaw               {det['yaw_deg']:8.1f} deg (about the camera's y axis)",
        ]
    lines.append(f"round trip {result['round_trip_s']:.2f} s via {result['service']}")
    return "\n".join(lines)


def _not_found(node: Any, service: str, timeout_s: float) -> str:
    """Why the service was not found, with what the graph does offer and what to try."""
    offered = sorted(
        name
        for name, types in node.get_service_names_and_types()
        if SERVICE_TYPE in types and name != service
    )
    seen = sorted(
        f"{ns.rstrip('/')}/{name}"
        for name, ns in node.get_node_names_and_namespaces()
        if name != node.get_name()
    )
    domain = os.environ.get("ROS_DOMAIN_ID") or "0"
    problems = confinement_problems(os.environ)
    dds = "DDS confined to loopback" if not problems else "DDS not confined to loopback"
    text = [
        f"no node offered {service} within {timeout_s:g} s (ROS domain {domain}, {dds}).",
        f"Nodes seen: {', '.join(seen) if seen else 'none'}.",
    ]
    if offered:
        nodes = ", ".join(name.removesuffix("/query") for name in offered)
        text.append(f"Query services of other nodes: {', '.join(offered)}; try --node {nodes}.")
    text.append(
        "Is llmi3d_node running in this ROS domain with the same DDS settings? After "
        "`scripts/run.sh demo` or `scripts/run.sh bringup` in another shell, run "
        '`eval "$(scripts/run.sh env)"` here first.'
    )
    return " ".join(text)


def call_service(
    request: Query.Request, service: str, timeout_s: float
) -> tuple[Query.Response | None, float, str]:
    """Call `service` once within `timeout_s` (discovery and answer together).

    Uses a context of its own, so it works in a process where rclpy is already initialised.

    Returns:
        (response, round-trip seconds, "") or (None, seconds waited, why).
    """
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(f"llmi3d_query_{os.getpid()}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        start = time.monotonic()
        client = node.create_client(Query, service)
        if not client.wait_for_service(timeout_sec=timeout_s):
            return None, time.monotonic() - start, _not_found(node, service, timeout_s)
        sent = time.monotonic()
        future = client.call_async(request)
        executor.spin_until_future_complete(
            future, timeout_sec=max(0.0, timeout_s - (sent - start))
        )
        if not future.done():
            client.remove_pending_request(future)
            return None, time.monotonic() - start, (
                f"{service} was found but did not answer within {timeout_s:g} s "
                "(the node may be busy or still warming up; raise --timeout)"
            )  # fmt: skip
        return future.result(), time.monotonic() - sent, ""
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def run(args: argparse.Namespace) -> int:
    """Run `llmi3d query`."""
    if args.timeout <= 0:
        print(f"llmi3d query: error: --timeout must be > 0, got {args.timeout}", file=sys.stderr)
        return 2
    if args.max_results < 0:
        print(f"llmi3d query: error: --max-results must be >= 0, got {args.max_results}",
              file=sys.stderr)  # fmt: skip
        return 2
    request = Query.Request(query=args.text, max_results=args.max_results)
    if args.box is not None:
        request.box_prompt = [float(v) for v in args.box]
    if args.point is not None:
        request.point_prompt = [float(v) for v in args.point]
    service = service_name(args.node)
    response, seconds, why = call_service(request, service, args.timeout)
    if response is None:
        print(f"llmi3d query: error: {why}", file=sys.stderr)
        return EXIT_UNREACHED
    result = response_to_dict(response, service, seconds)
    if args.json:
        print(json.dumps(result, indent=1))
    elif response.success:
        print(format_answer(result))
    if not response.success:
        print(f"llmi3d query: the node could not answer: {response.message}", file=sys.stderr)
        return EXIT_REFUSED
    return 0
