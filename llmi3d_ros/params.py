"""The node's parameters: one table with defaults, descriptions and allowed values.

`NodeParams` holds the defaults in one place; config/params.yaml repeats them for users to edit (a
test keeps the two equal). The answer rule's defaults (min_score, min_score_others) come from
llmi3d_core.prediction.AnswerRule.SERVED, which `llmi3d eval` uses too; min_ratio_to_nothing's
(negative) takes the loaded model's own (`Predictor.served_rule`), as `llmi3d eval` does. The
node declares every field as a ROS parameter with a ParameterDescriptor, validates changes with
`validate`, and reads them back with `read_params`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from llmi3d_core.ground_plane import GroundPlane
from llmi3d_core.inference import MAX_QUERY_CHARS
from llmi3d_core.prediction import MAX_RATIO_TO_NOTHING, AnswerRule

RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
HISTORY = {"keep_last": HistoryPolicy.KEEP_LAST, "keep_all": HistoryPolicy.KEEP_ALL}
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")


# min_ratio_to_nothing's default: any negative value takes the loaded model's own ratio
# (AnswerRule.served; `effective_ratio`)
MODEL_RATIO = -1.0


def effective_ratio(param: float, model_rule: AnswerRule) -> float:
    """The min_ratio_to_nothing answered with: the parameter, or the model's when negative.

    Clamped into the core's range: rclpy accepts values within a relative 1e-6 of the range's
    ends.
    """
    ratio = model_rule.min_ratio_to_nothing if param < 0 else param
    return min(max(ratio, 0.0), MAX_RATIO_TO_NOTHING)


def _param(default: Any, description: str, **constraints: Any) -> Any:
    """A dataclass field carrying its ROS parameter description and constraints."""
    return field(default=default, metadata={"description": description, **constraints})


@dataclass(frozen=True)
class NodeParams:
    """Every parameter of llmi3d_node, with its default. Units are in the names."""

    # model (read at configure)
    preset: str = _param("smol", "model preset used when `checkpoint` is empty: tiny, smol, hf")
    checkpoint: str = _param("", "checkpoint directory written by `llmi3d train`; overrides preset")
    device: str = _param("cpu", "torch device", choices=DEVICES)
    dtype: str = _param(
        "float32",
        "model dtype; bfloat16 is faster on a CPU with bfloat16 units (BENCHMARKS.md), float16 "
        "runs only on cuda",
        choices=DTYPES,
    )
    num_threads: int = _param(
        0,
        "torch CPU threads; 0 = torch's default (all cores), 1 on a shared CPU",
        int_range=(0, 256),
    )
    # inputs (read at activate)
    image_topic: str = _param("image_raw", "sensor_msgs/Image input topic (remappable)")
    compressed_image_topic: str = _param(
        "", "optional sensor_msgs/CompressedImage input topic; empty = not subscribed"
    )
    camera_info_topic: str = _param("camera_info", "sensor_msgs/CameraInfo input topic")
    standing_query_topic: str = _param(
        "standing_query", "std_msgs/String topic; its latest text is answered on new frames"
    )
    qos_reliability: str = _param(
        "best_effort", "reliability of the sensor subscriptions", choices=tuple(RELIABILITY)
    )
    qos_history: str = _param(
        "keep_last", "history of the sensor subscriptions", choices=tuple(HISTORY)
    )
    qos_depth: int = _param(1, "queue depth of the sensor subscriptions", int_range=(1, 100))
    slop_s: float = _param(
        0.05, "largest image/CameraInfo stamp difference paired", float_range=(0.0, 10.0)
    )
    # answering (may change while running)
    # One home for the numbers: llmi3d_core.prediction (`llmi3d eval` uses the same defaults).
    min_score: float = _param(
        AnswerRule.SERVED.min_score,
        "smallest score (a calibrated probability) a detection needs; when the best candidate "
        "misses it or min_ratio_to_nothing the answer is 'not here': success, no detections, "
        "and a message naming the best one",
        float_range=(0.0, 1.0),
    )
    min_ratio_to_nothing: float = _param(
        MODEL_RATIO,
        "the best candidate is answered only when its score is at least this many times the "
        "model's probability that nothing in the frame matches (0: no such test; negative: the "
        f"model's own, fitted on its validation split, or {AnswerRule.SERVED.min_ratio_to_nothing} "
        "for a model without one)",
        float_range=(MODEL_RATIO, MAX_RATIO_TO_NOTHING),
    )
    min_score_others: float = _param(
        AnswerRule.SERVED.min_score_others,
        "smallest score of the detections after the best one (several objects: 'all the "
        "chairs'); they need min_score too",
        float_range=(0.0, 1.0),
    )
    max_results: int = _param(
        1,
        "most detections per answer when the request asks for 0 (e.g. 'all the chairs'), best "
        "first",
        int_range=(1, 100),
    )
    max_query_chars: int = _param(
        MAX_QUERY_CHARS,
        "longest query accepted, in characters (at most the model's own limit)",
        int_range=(1, MAX_QUERY_CHARS),
    )
    # where the floor is, for a camera fixed on the robot (llmi3d_core.ground_plane): with a
    # height, every box is moved along its viewing ray to stand on the floor
    camera_height_m: float = _param(
        0.0,
        "height of the camera's optical centre above the floor, m; 0 = unknown (boxes as the "
        "model places them). Set it (and the pitch) for a fixed camera when the objects stand "
        "on the floor: on the synthetic test split, Acc@0.25 25.9 -> 42.1 %",
        float_range=(0.0, 100.0),
    )
    camera_pitch_deg: float = _param(
        0.0,
        "tilt of the optical axis below the horizon, degrees (positive: looking down)",
        float_range=(-89.0, 89.0),
    )
    camera_roll_deg: float = _param(
        0.0,
        "rotation about the optical axis, degrees (positive: the image's right side towards "
        "the floor; 180: mounted upside down)",
        float_range=(-180.0, 180.0),
    )
    floor_frame: str = _param(
        "",
        "TF frame on the floor with z up (e.g. base_footprint); when set, each query takes the "
        "camera's height, pitch and roll from TF (the image's frame_id in this frame) instead of "
        "camera_height_m / camera_pitch_deg / camera_roll_deg, which are used only while TF has "
        "no answer; empty = not used",
    )
    standing_query_max_rate_hz: float = _param(
        2.0, "most standing-query answers per second", float_range=(0.01, 100.0)
    )
    marker_lifetime_s: float = _param(
        0.0, "RViz marker lifetime; 0 = until replaced", float_range=(0.0, 3600.0)
    )
    publish_debug_image: bool = _param(True, "publish ~/debug_image with the projected boxes")
    no_input_warning_s: float = _param(
        5.0, "warn when no image arrives for this long while active", float_range=(0.5, 3600.0)
    )
    autostart: bool = _param(
        True, "configure and activate at start-up (no lifecycle manager needed)"
    )

    def ground_plane(self) -> GroundPlane | None:
        """The floor of camera_height_m and the angles, or None when it is 0 (unknown).

        With floor_frame set the node asks TF first (llmi3d_ros.tf_floor).
        """
        if self.camera_height_m <= 0.0:
            return None
        return GroundPlane(self.camera_height_m, self.camera_pitch_deg, self.camera_roll_deg)

    def sensor_qos(self) -> QoSProfile:
        """The QoS profile of the image and CameraInfo subscriptions (a new profile every call)."""
        return QoSProfile(
            history=HISTORY[self.qos_history],
            depth=self.qos_depth,
            reliability=RELIABILITY[self.qos_reliability],
        )


NODE_PARAM_NAMES = frozenset(f.name for f in fields(NodeParams))

# Parameters read only at configure/activate: changing them needs a lifecycle transition.
RECONFIGURE_ONLY = frozenset(
    {
        "preset", "checkpoint", "device", "dtype", "num_threads", "image_topic",
        "compressed_image_topic", "camera_info_topic", "standing_query_topic", "qos_reliability",
        "qos_history", "qos_depth", "slop_s", "autostart",
    }
)  # fmt: skip


def descriptor(name: str) -> ParameterDescriptor:
    """Build the ParameterDescriptor of one NodeParams field."""
    meta = {f.name: f.metadata for f in fields(NodeParams)}[name]
    text = meta["description"]
    if "choices" in meta:
        text += f" (one of: {', '.join(meta['choices'])})"
    if name in RECONFIGURE_ONLY:
        text += " [applied on the next configure/activate]"
    desc = ParameterDescriptor(name=name, description=text)
    if "float_range" in meta:
        low, high = meta["float_range"]
        desc.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
    if "int_range" in meta:
        low, high = meta["int_range"]
        desc.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
    return desc


def declare_params(node: Node) -> None:
    """Declare every NodeParams field on `node` with its default and descriptor."""
    for f in fields(NodeParams):
        node.declare_parameter(f.name, f.default, descriptor(f.name))


def validate(name: str, value: Any) -> str | None:
    """Return why `value` is not allowed for parameter `name`, or None when it is."""
    meta = {f.name: f.metadata for f in fields(NodeParams)}.get(name)
    if meta is None:
        return None  # not ours (e.g. use_sim_time)
    if "choices" in meta and value not in meta["choices"]:
        return (
            f"invalid value for '{name}': {value!r} (expected one of: {', '.join(meta['choices'])})"
        )
    if isinstance(value, float) and not math.isfinite(value):
        return f"invalid value for '{name}': {value} (must be finite)"
    return None


def read_params(node: Node) -> NodeParams:
    """Read the declared parameters into a NodeParams.

    Raises:
        ValueError: naming the first parameter whose value is not allowed.
    """
    values = {f.name: node.get_parameter(f.name).value for f in fields(NodeParams)}
    for name, value in values.items():
        reason = validate(name, value)
        if reason:
            raise ValueError(reason)
    return NodeParams(**values)
