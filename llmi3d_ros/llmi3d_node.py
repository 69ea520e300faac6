"""llmi3d_node: answers "where is the X?" with 3D boxes in the camera frame.

Lifecycle (each transition undoes the previous one's work):
  configure  -> reads parameters, loads the model, creates publishers and the ~/query service.
               FAILURE (node stays unconfigured, reason logged) if the model cannot be loaded.
  activate   -> subscribes to the image, CameraInfo and standing-query topics; starts timers.
  deactivate -> unsubscribes, forgets the buffered frame and the model's image-feature cache.
  cleanup    -> destroys publishers and the service, frees the model.
With `autostart` (default true) `main` configures and activates at start-up.

Answers: each query (service or standing) returns its best candidate when that scores at least
`min_score` (a calibrated probability) and at least `min_ratio_to_nothing` times the model's
probability that nothing matches (by default the ratio fitted for the loaded model on its
validation split: Predictor.served_rule), then the others scoring at least `min_score_others`,
best first, each object once, at most `max_results` (the request's, or the parameter when it asks
for 0); see llmi3d_core.prediction.AnswerRule. An empty answer is "not here": the service
succeeds with no detections and a message naming the best candidate turned down and why; the
topics get an empty Detection3DArray, a MarkerArray that only clears (DELETEALL) and the debug
image without boxes, so no stale box stays on screen. These parameters may change at run time
(SetParameters).

Floor: with `floor_frame` set (e.g. base_footprint), each query looks up the image's frame in it
through TF at the image's stamp (llmi3d_ros.tf_floor) and every answered box is moved to stand
on that floor (llmi3d_core.ground_plane); which boxes are answered does not change. Without TF, or
while TF has no answer (the message says why), `camera_height_m` > 0 with `camera_pitch_deg` and
`camera_roll_deg` give the floor of a camera fixed on the robot. All changeable at run time.

Concurrency: one MultiThreadedExecutor (four threads) with four callback groups, five with TF.
  sensors   (mutually exclusive): image, compressed image, CameraInfo and standing-query callbacks;
            cheap, they only store the newest message.
  service   (mutually exclusive): the ~/query service.
  standing  (mutually exclusive): the standing-query timer.
  default:  lifecycle services, parameter services and the no-input watchdog.
  TF        (mutually exclusive, only with floor_frame and without tf2_ros): /tf and /tf_static,
            cheap; a query that waits for a transform (the listener's first second) waits on them.
The model runs one call at a time (the Predictor holds a lock). Service calls come first: the
standing query skips its turn while a call waits, since rclpy hands ready timers out before
services and a standing query answered twice a second would otherwise starve ~/query.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from llmi3d_msgs.srv import Query
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from llmi3d_core.errors import InvalidInputError, Llmi3dError
from llmi3d_core.frame_tree import FrameLookupError
from llmi3d_core.geometry import box3d_corners
from llmi3d_core.ground_plane import GroundPlane
from llmi3d_core.inference import Predictor, not_found_answer
from llmi3d_core.messages import (
    camera_info_k,
    compressed_image_to_rgb,
    image_to_rgb,
    scale_intrinsics,
    stamp_to_ns,
)
from llmi3d_core.prediction import Answer
from llmi3d_core.visualize import draw_boxes
from llmi3d_ros.conversions import predictions_to_detections, rgb_to_image
from llmi3d_ros.frame_pairing import StampPairer
from llmi3d_ros.markers import prediction_markers
from llmi3d_ros.params import (
    NODE_PARAM_NAMES,
    RECONFIGURE_ONLY,
    NodeParams,
    declare_params,
    effective_ratio,
    read_params,
    validate,
)
from llmi3d_ros.spinning import init_rclpy, run_until_shutdown
from llmi3d_ros.tf_floor import TfFloor

NODE_NAME = "llmi3d_node"
ASPECT_TOLERANCE = 0.01
# The start of a query's message before the node's first frame (the demo waits on it).
NO_IMAGE_YET = "no image received yet"


class QueryRejectedError(Llmi3dError):
    """A query that cannot be answered now; the message tells the caller why."""


@dataclass(frozen=True)
class FrameAnswer:
    """What one query produced on one frame, ready to publish.

    `answer.predictions` is empty when nothing matching was found ("not here"). `floor_note`
    says why the floor of `floor_frame` was not used, when it was asked for and was not.
    """

    header: Header
    answer: Answer
    rgb: np.ndarray
    K: np.ndarray
    timings_s: dict[str, float]
    floor_note: str = ""


class Llmi3dNode(LifecycleNode):
    """Lifecycle node wrapping llmi3d_core.Predictor; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        self._params: NodeParams | None = None
        self._predictor: Predictor | None = None
        self._active = False
        self._pairer: StampPairer[Image | CompressedImage, CameraInfo] | None = None
        self._pair_lock = threading.Lock()
        self._standing_query = ""
        self._standing_answered_seq = 0
        self._standing_last_s = 0.0
        self._last_image_s: float | None = None
        self._images_received = 0  # since activate, with the newest one's stamp: diagnostics
        self._last_image_stamp_ns = 0
        self._activated_s = 0.0
        self._warned_sizes: set[tuple[int, int, int, int]] = set()
        self._input_subs: list[Any] = []
        self._input_timers: list[Any] = []
        self._outputs: dict[str, Any] = {}
        self._query_service: Any = None
        self._tf_floor: TfFloor | None = None  # listening to TF while active with floor_frame
        self._tf_lock = threading.Lock()
        super().__init__(NODE_NAME, **kwargs)
        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._standing_group = MutuallyExclusiveCallbackGroup()
        self._calls_waiting = 0  # service calls in progress; the standing query yields to them
        self._calls_lock = threading.Lock()
        declare_params(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------------ parameters

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        # rclpy has already checked the descriptors' ranges (min_score outside [0, 1] is refused
        # with "Parameter min_score out of range ..." before this runs)
        for parameter in parameters:
            reason = validate(parameter.name, parameter.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        for parameter in parameters:
            if parameter.name in NODE_PARAM_NAMES:
                old = self.get_parameter(parameter.name).value
                if old != parameter.value:
                    later = ""
                    if parameter.name in RECONFIGURE_ONLY:
                        later = " (applied on the next configure/activate)"
                    self.get_logger().info(
                        f"parameter {parameter.name}: {old!r} -> {parameter.value!r}{later}"
                    )
            if parameter.name == "floor_frame" and parameter.value and self._active:
                self._floor_listener()  # so that TF is heard before the next query
        return SetParametersResult(successful=True)

    @property
    def params(self) -> NodeParams:
        """Current parameter values (re-read so runtime changes apply to the next query)."""
        return read_params(self)

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model and create outputs; FAILURE leaves the node unconfigured."""
        self.get_logger().info("configuring...")
        try:
            params = read_params(self)
        except ValueError as err:
            self.get_logger().error(f"configure failed: {err}")
            return TransitionCallbackReturn.FAILURE
        if params.num_threads > 0:
            torch.set_num_threads(params.num_threads)
        try:
            start = time.perf_counter()
            if params.checkpoint:
                source = f"checkpoint {params.checkpoint}"
                predictor = Predictor.from_checkpoint(
                    params.checkpoint, device=params.device, dtype=params.dtype
                )
            else:
                source = f"preset {params.preset!r}"
                predictor = Predictor.from_preset(
                    params.preset, device=params.device, dtype=params.dtype
                )
            load_s = time.perf_counter() - start
        except Exception as err:
            self.get_logger().error(f"configure failed: could not load the model: {err}")
            return TransitionCallbackReturn.FAILURE
        self._params = params
        self._predictor = predictor
        self._pairer = StampPairer(slop_ns=int(params.slop_s * 1e9))
        self._outputs = {
            "detections": self.create_lifecycle_publisher(Detection3DArray, "~/detections", 10),
            "markers": self.create_lifecycle_publisher(MarkerArray, "~/markers", 10),
            "debug_image": self.create_lifecycle_publisher(Image, "~/debug_image", 2),
            "diagnostics": self.create_lifecycle_publisher(DiagnosticArray, "diagnostics", 10),
        }
        self._query_service = self.create_service(
            Query, "~/query", self._on_query, callback_group=self._service_group
        )
        fitted = predictor.model.fitted_answer_ratio
        model_ratio = predictor.served_rule.min_ratio_to_nothing
        ratio_source = (
            "given"
            if params.min_ratio_to_nothing >= 0
            else f"the model's: {model_ratio:g}, "
            + ("fitted on its validation split" if fitted is not None else "the default")
        )
        self.get_logger().info(
            f"configured: model from {source} on {params.device}/{params.dtype} in {load_s:.1f} s; "
            f"answering with min_score={params.min_score}, "
            f"min_ratio_to_nothing={params.min_ratio_to_nothing} ({ratio_source}), "
            f"min_score_others={params.min_score_others}, max_results={params.max_results} "
            "(all may change at run time)"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the inputs and start the timers."""
        params = self.params
        qos = params.sensor_qos()
        group = self._sensor_group
        self._input_subs = [
            self.create_subscription(
                Image, params.image_topic, self._on_image, qos, callback_group=group
            ),
            self.create_subscription(
                CameraInfo, params.camera_info_topic, self._on_camera_info, qos,
                callback_group=group,
            ),
            self.create_subscription(
                String, params.standing_query_topic, self._on_standing_query, 10,
                callback_group=group,
            ),
        ]  # fmt: skip
        if params.compressed_image_topic:
            self._input_subs.append(
                self.create_subscription(
                    CompressedImage, params.compressed_image_topic, self._on_image, qos,
                    callback_group=group,
                )
            )  # fmt: skip
        self._input_timers = [
            self.create_timer(0.05, self._on_standing_timer, callback_group=self._standing_group),
            self.create_timer(1.0, self._on_watchdog),
        ]
        if params.floor_frame:
            self._floor_listener()
        self._activated_s = time.monotonic()
        self._last_image_s = None
        self._images_received, self._last_image_stamp_ns = 0, 0
        self._active = True
        topics = [params.image_topic, params.camera_info_topic]
        if params.compressed_image_topic:
            topics.append(params.compressed_image_topic)
        self.get_logger().info(
            f"activated: listening on {', '.join(self.resolve_topic_name(t) for t in topics)} "
            f"with QoS reliability={params.qos_reliability}, history={params.qos_history}, "
            f"depth={params.qos_depth}; slop {params.slop_s * 1e3:.0f} ms"
        )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe and drop buffered frames and cached image features."""
        self._active = False
        self._stop_inputs()
        if self._pairer is not None:
            with self._pair_lock:
                self._pairer.clear()
        if self._predictor is not None:
            self._predictor.clear_cache()
        _empty_device_cache()
        self.get_logger().info("deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy outputs and free the model."""
        self._release()
        self.get_logger().info("cleaned up")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything, whatever the state."""
        self._active = False
        self._stop_inputs()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_inputs(self) -> None:
        with self._tf_lock:
            if self._tf_floor is not None:
                self._tf_floor.destroy()
                self._tf_floor = None
        for subscription in self._input_subs:
            self.destroy_subscription(subscription)
        for timer in self._input_timers:
            self.destroy_timer(timer)
        self._input_subs, self._input_timers = [], []

    def _release(self) -> None:
        for publisher in self._outputs.values():
            self.destroy_publisher(publisher)
        self._outputs = {}
        if self._query_service is not None:
            self.destroy_service(self._query_service)
            self._query_service = None
        self._predictor = None
        self._pairer = None
        _empty_device_cache()

    # ------------------------------------------------------------------ inputs

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self._last_image_s = time.monotonic()
        stamp_ns = stamp_to_ns(msg.header.stamp)
        self._images_received += 1
        self._last_image_stamp_ns = stamp_ns
        if self._pairer is None:
            return
        with self._pair_lock:
            self._pairer.add_image(stamp_ns, msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        if self._pairer is None:
            return
        with self._pair_lock:
            self._pairer.add_info(stamp_to_ns(msg.header.stamp), msg)

    def _on_standing_query(self, msg: String) -> None:
        self._standing_query = msg.data.strip()
        self._standing_answered_seq = 0
        self.get_logger().info(f"standing query set to {self._standing_query!r}")

    def _on_watchdog(self) -> None:
        params = self.params
        now = time.monotonic()
        last = self._last_image_s if self._last_image_s is not None else self._activated_s
        if now - last < params.no_input_warning_s:
            return
        topic = self.resolve_topic_name(params.image_topic)
        what = NO_IMAGE_YET if self._last_image_s is None else "no new image"
        self.get_logger().warning(
            f"{what} on {topic} for {now - last:.0f} s (check the remapping and that the "
            f"publisher's QoS is compatible with reliability={params.qos_reliability})",
            throttle_duration_sec=params.no_input_warning_s,
        )

    # ------------------------------------------------------------------ answering

    def _on_query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        """Service callback: answer on the newest frame; never raises."""
        with self._calls_lock:
            self._calls_waiting += 1
        try:
            return self._handle_query(request, response)
        finally:
            with self._calls_lock:
                self._calls_waiting -= 1

    def _handle_query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        try:
            result = self._answer(
                request.query,
                list(request.box_prompt),
                list(request.point_prompt),
                int(request.max_results),
            )
        except Llmi3dError as err:  # InvalidInputError, ModelOutputError, QueryRejectedError, ...
            response.success = False
            response.message = str(err)
            self.get_logger().warning(f"query {request.query[:80]!r} failed: {err}")
            return response
        except Exception as err:
            response.success = False
            response.message = f"internal error while answering: {type(err).__name__}: {err}"
            self.get_logger().error(f"{response.message}\n{traceback.format_exc()}")
            return response
        self._publish(result)
        answer = result.answer
        response.success = True  # "not here" is an answer too: success with no detections
        response.detections = predictions_to_detections(answer.predictions, result.header)
        if answer.predictions:
            best = answer.predictions[0]
            response.answer = best.answer or best.label
        else:
            response.answer = not_found_answer(request.query)
        response.message = answer.message
        if result.floor_note:
            response.message += f"; {result.floor_note}"
        self.get_logger().info(
            f"query {request.query[:80]!r} -> {response.answer!r}: {answer.message[:160]} "
            f"({_format_timings(result.timings_s)})"
        )
        return response

    def _on_standing_timer(self) -> None:
        """Answer the standing query on a new frame, at most standing_query_max_rate_hz."""
        if not self._standing_query or self._pairer is None or self._calls_waiting:
            return
        latest = self._pairer.latest
        if latest is None or latest.sequence == self._standing_answered_seq:
            return
        params = self.params
        now = time.monotonic()
        if now - self._standing_last_s < 1.0 / params.standing_query_max_rate_hz:
            return
        self._standing_last_s = now
        self._standing_answered_seq = latest.sequence
        try:
            result = self._answer(self._standing_query, [], [], 0)
        except Exception as err:
            self.get_logger().warning(
                f"standing query {self._standing_query[:80]!r} failed: {err}",
                throttle_duration_sec=5.0,
            )
            # no answer on this frame: take the previous answer's boxes off the screen
            self._outputs["markers"].publish(prediction_markers([], latest.image.header))
            return
        self._publish(result)

    def _answer(
        self, query: str, box_prompt: list[float], point_prompt: list[float], max_results: int
    ) -> FrameAnswer:
        """Check the request and the inputs, run the model on the newest frame.

        `max_results` 0 takes the max_results parameter; the answer rule is the parameters' now.

        Raises:
            QueryRejectedError: the node is not active, no frame yet, or a malformed request.
            InvalidInputError: a bad image or CameraInfo, or a prompt outside the image.
            ModelOutputError: the model produced non-finite values.
        """
        params = self.params
        if not self._active or self._predictor is None or self._pairer is None:
            raise QueryRejectedError("llmi3d_node is not active; activate it (lifecycle) and retry")
        text = query.strip()
        if not text:
            raise QueryRejectedError("query is empty; ask for an object, e.g. 'the lamp'")
        if len(text) > params.max_query_chars:
            raise QueryRejectedError(
                f"query is {len(text)} characters long; the limit is max_query_chars="
                f"{params.max_query_chars}"
            )
        if len(box_prompt) not in (0, 4):
            raise QueryRejectedError(
                "box_prompt must be empty or [x_min, y_min, x_max, y_max], got "
                f"{len(box_prompt)} values"
            )
        if len(point_prompt) not in (0, 2):
            raise QueryRejectedError(
                f"point_prompt must be empty or [u, v], got {len(point_prompt)} values"
            )
        with self._pair_lock:
            pair = self._pairer.latest
            has_info = self._pairer.has_info
        if pair is None:
            raise QueryRejectedError(self._why_no_frame(params, has_info))

        timings: dict[str, float] = {}
        start = time.perf_counter()
        image_msg, info = pair.image, pair.info
        if isinstance(image_msg, CompressedImage):
            rgb = compressed_image_to_rgb(image_msg)
        else:
            rgb = image_to_rgb(image_msg)
        K = self._intrinsics_for(info, rgb.shape[1], rgb.shape[0])
        timings["decode_s"] = time.perf_counter() - start
        floor, floor_note = self._floor(params, image_msg.header)  # may wait for TF: not decode

        [answer] = self._predictor.answer_batch(
            [rgb],
            [K],
            [text],
            [np.asarray(box_prompt, dtype=np.float64) if box_prompt else None],
            [np.asarray(point_prompt, dtype=np.float64) if point_prompt else None],
            max_results=max_results or params.max_results,
            # rclpy accepts values within a relative 1e-6 of the range's ends; the core does not
            min_score=min(max(params.min_score, 0.0), 1.0),
            min_ratio_to_nothing=effective_ratio(
                params.min_ratio_to_nothing, self._predictor.served_rule
            ),
            min_score_others=min(max(params.min_score_others, 0.0), 1.0),
            ground_planes=[floor],
        )
        timings.update(self._predictor.last_timings)
        return FrameAnswer(
            header=image_msg.header, answer=answer, rgb=rgb, K=K, timings_s=timings,
            floor_note=floor_note,
        )  # fmt: skip

    def _floor(self, params: NodeParams, image: Header) -> tuple[GroundPlane | None, str]:
        """The floor to stand the boxes on, and why TF's was not used when it was asked for."""
        fallback = params.ground_plane()
        if not params.floor_frame:
            return fallback, ""
        listener = self._floor_listener()
        try:
            stamp_ns = stamp_to_ns(image.stamp)
            return listener.ground_plane(params.floor_frame, image.frame_id, stamp_ns), ""
        except (FrameLookupError, InvalidInputError) as err:
            reason = str(err)
        used = "camera_height_m's floor" if fallback is not None else "no floor"
        note = f"{floor_not_used(params.floor_frame)} ({reason}); {used} instead"
        self.get_logger().warning(note, throttle_duration_sec=5.0)
        return fallback, note

    def _floor_listener(self) -> TfFloor:
        """The TF listener, started on first need (floor_frame may be set at run time)."""
        with self._tf_lock:
            if self._tf_floor is None:
                self._tf_floor = TfFloor(self)
                how = "tf2_ros" if self._tf_floor.uses_tf2_ros else "its own /tf, /tf_static"
                self.get_logger().info(f"listening to TF ({how}) for floor_frame")
            return self._tf_floor

    def _why_no_frame(self, params: NodeParams, has_info: bool) -> str:
        image_topic = self.resolve_topic_name(params.image_topic)
        info_topic = self.resolve_topic_name(params.camera_info_topic)
        if self._last_image_s is None:
            return f"{NO_IMAGE_YET} on {image_topic}"
        if not has_info:
            return f"no CameraInfo received yet on {info_topic}"
        return (
            f"no CameraInfo on {info_topic} within slop_s={params.slop_s} of the newest image "
            f"on {image_topic}; check that both carry the same stamps"
        )

    def _intrinsics_for(self, info: CameraInfo, width: int, height: int) -> np.ndarray:
        """K for an image of width x height: as calibrated, or scaled for a resized image.

        Raises:
            InvalidInputError: uncalibrated CameraInfo, or a size that is not a resize of it.
        """
        K = camera_info_k(info)
        if (info.width, info.height) == (width, height):
            return K
        sx, sy = width / info.width, height / info.height
        if abs(sx - sy) > ASPECT_TOLERANCE * max(sx, sy):
            raise QueryRejectedError(
                f"image is {width}x{height} but its CameraInfo is {info.width}x{info.height}, "
                "which is not a resize (aspect ratios differ); publish the CameraInfo of this image"
            )
        key = (width, height, info.width, info.height)
        if key not in self._warned_sizes:
            self._warned_sizes.add(key)
            self.get_logger().warning(
                f"image is {width}x{height} but CameraInfo is {info.width}x{info.height}; "
                f"scaling K by {sx:.3f}"
            )
        return scale_intrinsics(K, width / info.width, height / info.height)

    # ------------------------------------------------------------------ outputs

    def _publish(self, result: FrameAnswer) -> None:
        """Publish one answer; with no predictions ("not here") every output is cleared."""
        params = self.params
        start = time.perf_counter()
        pubs = self._outputs
        predictions = result.answer.predictions
        pubs["detections"].publish(predictions_to_detections(predictions, result.header))
        # DELETEALL first, so an empty answer removes the previous answer's boxes
        pubs["markers"].publish(
            prediction_markers(predictions, result.header, params.marker_lifetime_s)
        )
        if params.publish_debug_image:
            boxes = [
                (box3d_corners(p.center, p.dims, p.rotation), f"{p.label} {p.score:.2f}")
                for p in predictions
            ]
            debug = draw_boxes(result.rgb, boxes, result.K)
            pubs["debug_image"].publish(rgb_to_image(debug, result.header))
        result.timings_s["publish_s"] = time.perf_counter() - start
        pubs["diagnostics"].publish(self._diagnostics(result))

    def _diagnostics(self, result: FrameAnswer) -> DiagnosticArray:
        status = DiagnosticStatus(
            level=DiagnosticStatus.OK,
            name=f"{self.get_name()}: inference",
            message=f"{len(result.answer.predictions)} detection(s)",
            hardware_id=self.params.device,
        )
        status.values = [
            KeyValue(key=k, value=f"{v * 1e3:.1f} ms") for k, v in result.timings_s.items()
        ]
        # Input health: images received since activate and the newest one's stamp; with the
        # publisher's count this gives dropped frames (benchmarks/bench_soak.py).
        status.values += [
            KeyValue(key="images_received", value=str(self._images_received)),
            KeyValue(key="last_image_stamp_ns", value=str(self._last_image_stamp_ns)),
        ]
        return DiagnosticArray(
            header=Header(stamp=self.get_clock().now().to_msg()), status=[status]
        )


def floor_not_used(floor_frame: str) -> str:
    """The start of what a query's message adds when floor_frame is set but TF had no answer."""
    return f"floor_frame {floor_frame!r} not used"


def _format_timings(timings_s: dict[str, float]) -> str:
    return ", ".join(f"{k.removesuffix('_s')} {v * 1e3:.0f} ms" for k, v in timings_s.items())


def _empty_device_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(args: list[str] | None = None) -> None:
    """Run llmi3d_node (console script `llmi3d_node`)."""
    init_rclpy(args)
    node = Llmi3dNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        if node.params.autostart:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            else:
                node.get_logger().error(
                    "autostart: configure failed (see above); the node stays unconfigured and "
                    "can be configured again through its lifecycle services"
                )
        run_until_shutdown(executor.spin)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # stopped during autostart
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
