"""llmi3d_demo: the README's main job, end to end on this machine.

    llmi3d_demo                      # default model: trained on first run, cached afterwards
    llmi3d_demo --preset tiny        # untrained tiny model, only to see the plumbing (seconds)

1. makes sure the default model exists (`llmi3d train` with config/train/smol_synth.yaml on first
   run, progress bar included; reused afterwards from the cache directory),
2. starts llmi3d_node and llmi3d_synthetic_camera (as `llmi3d_bringup --synthetic-camera` does),
   the camera playing held-out synthetic scenes,
3. asks several queries per scene through the ~/query service from a client in this process,
   prints each answer, its 3D box and the IoU against the ground truth the camera publishes, and
4. saves the debug images (prediction in colour, ground truth in white) as PNGs, in a new
   folder out/demo/<date>-<time>/ for each run (printed at the start and at the end), and
5. asks each scene's queries again with the node told where the floor is: its parameter
   floor_frame set to base_footprint, under which the camera publishes its pose on /tf as a
   robot's robot_state_publisher would, so that both are seen side by side: the model's own boxes
   and the boxes stood on the floor (`--no-floor` skips this).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rclpy
from llmi3d_msgs.srv import Query
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection3DArray

from llmi3d_core.data.format import QUERY_TYPES, ImageRecord, QueryRecord
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.geometry import Box3D, box3d_corners
from llmi3d_core.ground_plane import GroundPlane, record_ground_plane
from llmi3d_core.iou import box3d_iou
from llmi3d_core.messages import detection_box, image_to_rgb, stamp_to_ns
from llmi3d_core.visualize import draw_box3d
from llmi3d_ros.bringup import (
    BringupOptions,
    StopRequested,
    StopSignals,
    deferred_stop_signals,
    exit_by_signal,
    start,
    stop,
)
from llmi3d_ros.dds_env import startup_lines
from llmi3d_ros.llmi3d_node import NO_IMAGE_YET, floor_not_used
from llmi3d_ros.synthetic_camera_node import FLOOR_FRAME, ensure_dataset

NOT_FOUND = "not found"  # the node answered "not here" (success, no box)
ANSWERED = ("ok", NOT_FOUND)  # Outcome.message of a query the node answered


@dataclass
class Outcome:
    """One demo query and how it went."""

    image_id: str
    kind: str
    text: str
    answer: str
    iou: float | None
    latency_s: float
    message: str
    grounded: bool | None = None  # the box is on the asked-for object (None: no ground truth)
    held_out: str = ""  # the asked-for category when the served model was not trained on it
    floor_iou: float | None = None  # the same query, the node told where the floor is
    floor_grounded: bool | None = None


def trained_categories(checkpoint: str) -> frozenset[str]:
    """The categories the served checkpoint's detector was trained on (empty for a preset).

    The demo's scenes come from their own seed, so some of their queries name a category the
    default recipe held out of training: the model has never seen one and cannot name it.
    """
    if not checkpoint:
        return frozenset()
    from llmi3d_core.model.checkpoint import read_checkpoint_meta  # noqa: PLC0415 (loads torch: only a served checkpoint needs it)

    config, _ = read_checkpoint_meta(checkpoint)
    return frozenset(config.detector.categories)


def held_out_category(query: QueryRecord, categories: frozenset[str]) -> str:
    """The query's category when `categories` are known and it is not among them, else ""."""
    return query.answer if categories and query.answer not in categories else ""


def chosen_object(center: np.ndarray, truth: Detection3DArray) -> str:
    """Id of the ground-truth object whose centre lies in the direction closest to `center`.

    The direction of a box from the camera is where it is in the image, whatever its depth:
    the object a prediction points at, even when its depth is off.
    """
    best, best_angle = "", np.inf
    ray = center / max(float(np.linalg.norm(center)), 1e-9)
    for det in truth.detections:
        other, _, _ = detection_box(det)
        cosine = float(ray @ (other / max(float(np.linalg.norm(other)), 1e-9)))
        angle = float(np.arccos(np.clip(cosine, -1.0, 1.0)))
        if angle < best_angle:
            best, best_angle = det.id, angle
    return best


def ensure_model(args: argparse.Namespace) -> str:
    """Return the checkpoint to serve ('' when a preset is used), training it on first run."""
    if args.checkpoint:
        return str(args.checkpoint)
    if args.preset:
        return ""
    from llmi3d_core.default_model import default_model_dir, ensure_default_model  # noqa: PLC0415 (loads torch and the trainer: only the default model needs them)

    model_dir = args.model_dir or default_model_dir()
    print(f"[demo] default model: {model_dir} (trained on first run, then reused)")
    return str(ensure_default_model(model_dir))


def new_run_dir(parent: Path) -> Path:
    """A new folder under `parent` for one run's pictures: <date>-<time>, or with -2, -3, ...

    One folder per run, so pictures of earlier runs (and runs with fewer queries) never mix.
    """
    parent.mkdir(parents=True, exist_ok=True)
    name = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", *(f"-{n}" for n in range(2, 1000))):
        try:
            (parent / (name + suffix)).mkdir()
        except FileExistsError:
            continue
        return parent / (name + suffix)
    raise FileExistsError(f"no free run folder {name}-N under {parent}")


def pick_queries(queries: list[QueryRecord], per_image: int) -> list[QueryRecord]:
    """Up to `per_image` queries of one image, one of each type first."""
    chosen: list[QueryRecord] = []
    for kind in QUERY_TYPES:
        chosen += [q for q in queries if q.type == kind][:1]
    chosen += [q for q in queries if q not in chosen]
    return chosen[:per_image]


class DemoClient(Node):
    """Calls ~/query and keeps the camera's ground truth and the node's debug images by stamp."""

    def __init__(self, namespace: str) -> None:
        super().__init__("llmi3d_demo_client", namespace=namespace)
        self.truth: dict[int, Detection3DArray] = {}
        self.debug: dict[int, Image] = {}
        self.debug_received = 0  # debug images received so far
        self.answered = 0  # successful answers received so far (the node draws one for each)
        self.client = self.create_client(Query, "llmi3d_node/query")
        self.set_parameters = self.create_client(SetParameters, "llmi3d_node/set_parameters")
        self.create_subscription(
            Detection3DArray, "llmi3d_synthetic_camera/ground_truth", self.on_truth, 10
        )
        self.create_subscription(Image, "llmi3d_node/debug_image", self.on_debug, 10)

    def on_truth(self, msg: Detection3DArray) -> None:
        """Keep the ground truth of the last 200 frames by stamp."""
        self.truth[stamp_to_ns(msg.header.stamp)] = msg
        while len(self.truth) > 200:
            self.truth.pop(next(iter(self.truth)))

    def on_debug(self, msg: Image) -> None:
        """Keep the last 20 debug images by stamp."""
        self.debug[stamp_to_ns(msg.header.stamp)] = msg
        self.debug_received += 1
        while len(self.debug) > 20:
            self.debug.pop(next(iter(self.debug)))


def spin_until(
    executor: SingleThreadedExecutor, done: Callable[[], bool], timeout_s: float
) -> bool:
    """Spin until done() or timeout; return done().

    A stop signal waits until spin_once returns (bringup.StopSignals.deferred).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not done():
        with deferred_stop_signals():
            executor.spin_once(timeout_sec=0.05)
    return bool(done())


FIRST_FRAME_WAIT_S = 60.0
# How long to wait for an answer's debug image (a few MB, reliable). A fragment lost on the way is
# sent again after the writer's next heartbeat (Fast DDS: every 3 s), so an image can come more
# than 3 s after its answer: a wait of 2 s once lost a CI run's floor picture.
DEBUG_WAIT_S = 7.0
SCENE_WAIT_S = 6.0  # within the camera's hold of a scene (llmi3d_synthetic_camera hold_s: 8 s)


def ask(
    client: DemoClient, executor: SingleThreadedExecutor, query: QueryRecord, timeout_s: float
) -> tuple[Query.Response | None, float]:
    """Send one query; return the response (None on timeout) and the round-trip time."""
    request = Query.Request(query=query.text, max_results=1)
    if query.box_prompt is not None:
        request.box_prompt = [float(v) for v in query.box_prompt]
    if query.point_prompt is not None:
        request.point_prompt = [float(v) for v in query.point_prompt]
    return call(client, executor, request, timeout_s)


def call(
    client: DemoClient, executor: SingleThreadedExecutor, request: Query.Request, timeout_s: float
) -> tuple[Query.Response | None, float]:
    """Send one request once the debug images of earlier answers are in.

    Returns the response (None on timeout) and the round trip from sending it.

    Every answer on one frame has that frame's stamp, and the node publishes each answer's debug
    image before it responds, but a large image can arrive after the response: it would then be
    taken for the next answer's picture. Waiting for those images and forgetting them leaves
    only this answer's image to come.
    """
    if not spin_until(executor, lambda: client.debug_received >= client.answered, DEBUG_WAIT_S):
        client.answered = client.debug_received  # an image was lost: count on from here
    client.debug.clear()
    start_s = time.monotonic()
    future = client.client.call_async(request)
    if not spin_until(executor, future.done, timeout_s):
        return None, time.monotonic() - start_s
    response: Query.Response = future.result()
    if response.success:
        client.answered += 1
    return response, time.monotonic() - start_s


def set_floor_frame(client: DemoClient, executor: SingleThreadedExecutor, frame: str) -> bool:
    """Set llmi3d_node's floor_frame ("" : none), as `ros2 param set` would; whether it took it."""
    request = SetParameters.Request(
        parameters=[Parameter("floor_frame", value=frame).to_parameter_msg()]
    )
    if not client.set_parameters.wait_for_service(timeout_sec=5.0):
        return False
    future = client.set_parameters.call_async(request)
    if not spin_until(executor, future.done, 10.0):
        return False
    return all(result.successful for result in future.result().results)


def wait_for_first_frame(
    client: DemoClient, executor: SingleThreadedExecutor, timeout_s: float
) -> None:
    """Ask a warm-up query until the node has a frame (and its model has answered once).

    On a loaded CPU the node's first frames can queue behind its start; a scene asked about
    before that would be answered on a later scene.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        request = Query.Request(query="warm-up", max_results=1)
        response, _ = call(client, executor, request, max(deadline - time.monotonic(), 0.1))
        if response is None:
            raise TimeoutError(f"llmi3d_node did not answer a warm-up query within {timeout_s} s")
        if response.success or not response.message.startswith(NO_IMAGE_YET):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"llmi3d_node: {response.message} within {timeout_s:.0f} s")
        spin_until(executor, lambda: False, 0.5)


def scene_shown(
    truth: Detection3DArray | None, image_of_object: dict[str, ImageRecord]
) -> ImageRecord | None:
    """The scene a frame's ground truth belongs to (by its first object), None if unknown."""
    if truth is None or not truth.detections:
        return None
    return image_of_object.get(truth.detections[0].id)


def scene_of_stamp(
    client: DemoClient,
    executor: SingleThreadedExecutor,
    image_of_object: dict[str, ImageRecord],
    stamp_ns: int,
) -> str | None:
    """The scene (image id) the camera showed in the frame of this stamp, None if unknown.

    Waits up to a second for that frame's ground truth (it may still be on its way).
    """
    spin_until(executor, lambda: stamp_ns in client.truth, 1.0)
    image = scene_shown(client.truth.get(stamp_ns), image_of_object)
    return None if image is None else image.image_id


def wait_for_scene(
    client: DemoClient,
    executor: SingleThreadedExecutor,
    image_of_object: dict[str, ImageRecord],
    image_id: str,
    timeout_s: float,
) -> bool:
    """Ask warm-up queries until the node answers on a frame of scene `image_id`.

    The camera's ground truth of a new scene can arrive before the node has taken in the new
    image (a busy node reads its next frame late): a query asked then is answered on the
    previous scene, and its picture and IoU would be of the wrong image.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        request = Query.Request(query="warm-up", max_results=1)
        response, _ = call(client, executor, request, max(deadline - time.monotonic(), 0.1))
        if response is None:
            return False
        stamp = stamp_to_ns(response.detections.header.stamp)
        if scene_of_stamp(client, executor, image_of_object, stamp) == image_id:
            return True
        spin_until(executor, lambda: False, 0.2)
    return False


def save_picture(  # noqa: PLR0917 (the answer, its truth and where the picture goes)
    client: DemoClient,
    executor: SingleThreadedExecutor,
    response: Query.Response,
    truth_box: Box3D | None,
    K: np.ndarray,
    path: Path,
) -> Path | None:
    """Save the node's debug image for this answer with the ground truth added in white.

    Waits up to DEBUG_WAIT_S for the image; returns `path`, or None when it never came. The
    truth's label goes under its box: the node's labels sit above theirs, and a right answer's
    box is where the truth's is.
    """
    stamp = stamp_to_ns(response.detections.header.stamp)
    spin_until(executor, lambda: stamp in client.debug, DEBUG_WAIT_S)
    msg = client.debug.get(stamp)
    if msg is None:
        return None
    rgb = image_to_rgb(msg)
    if truth_box is not None:
        draw_box3d(
            rgb, truth_box.corners(), K, (255, 255, 255), "ground truth", thickness=1,
            label_at="bottom",
        )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def run_queries(
    args: argparse.Namespace, client: DemoClient, dataset_dir: Path, categories: frozenset[str]
) -> list[Outcome]:
    """Wait for scenes from the camera and ask about each; return the outcomes.

    `categories`: those the served model was trained on (empty: unknown), to mark the queries
    that name another.
    """
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    dataset = read_dataset(dataset_dir)
    image_of_object = {o.object_id: im for im in dataset.images for o in im.objects}
    outcomes: list[Outcome] = []
    print("[demo] waiting for llmi3d_node to load the model and offer its service...")
    if not client.client.wait_for_service(timeout_sec=args.startup_timeout_s):
        raise TimeoutError(
            f"llmi3d_node offered no service within {args.startup_timeout_s:.0f} s; "
            "see its log above"
        )
    # The service exists from `configure`; the image subscription only from `activate`.
    if not spin_until(executor, lambda: client.count_subscribers("/image_raw") > 0, 60.0):
        raise TimeoutError("llmi3d_node did not subscribe to /image_raw (is it active?)")
    wait_for_first_frame(client, executor, FIRST_FRAME_WAIT_S)
    spin_until(executor, lambda: bool(client.truth), 10.0)
    # the scene on show now may be near the end of its hold: start with the next one
    current = client.truth[max(client.truth)] if client.truth else None
    done_images: set[str] = set()
    shown = scene_shown(current, image_of_object)
    if shown is not None and len(dataset.images) > args.images:
        done_images.add(shown.image_id)
    wanted = args.images + len(done_images)
    deadline = time.monotonic() + args.run_timeout_s
    while len(done_images) < wanted and time.monotonic() < deadline:
        if not spin_until(executor, lambda: bool(client.truth), 10.0):
            raise TimeoutError("no ground truth from llmi3d_synthetic_camera within 10 s")
        latest = client.truth[max(client.truth)]
        image = scene_shown(latest, image_of_object)
        if image is None or image.image_id in done_images:
            with deferred_stop_signals():
                executor.spin_once(timeout_sec=0.2)
            continue
        done_images.add(image.image_id)
        queries = [q for q in dataset.queries if q.image_id == image.image_id]
        print(f"\n[demo] scene {image.image_id} ({image.width}x{image.height}, "
              f"fx={image.K[0, 0]:.0f} px, {len(image.objects)} objects)")  # fmt: skip
        if not wait_for_scene(client, executor, image_of_object, image.image_id, SCENE_WAIT_S):
            print(f"  llmi3d_node answered on no frame of this scene within {SCENE_WAIT_S:.0f} s "
                  "(the camera moved on first); skipped")  # fmt: skip
            continue
        asked: list[tuple[QueryRecord, Outcome]] = []
        for query in pick_queries(queries, args.queries_per_image):
            response, latency_s = ask(client, executor, query, args.query_timeout_s)
            if response is not None and response.success:
                stamp = stamp_to_ns(response.detections.header.stamp)
                answered_on = scene_of_stamp(client, executor, image_of_object, stamp)
                if answered_on != image.image_id:
                    print(f"  Q ({query.type}): {query.text}")
                    print(f"  -> answered on a frame of another scene ({answered_on}); not counted")
                    continue
            outcome = report(
                client, executor, query,
                response=response, latency_s=latency_s, image=image, args=args,
            )  # fmt: skip
            outcome.held_out = held_out_category(query, categories)
            if outcome.held_out:
                print(f"     ('{outcome.held_out}' was held out of the model's training)")
            outcomes.append(outcome)
            asked.append((query, outcome))
        floor = None if args.no_floor else record_ground_plane(image.extra)
        if floor is not None and asked:
            ask_on_floor(client, executor, image_of_object, image, floor, asked, args)
    return outcomes


def ask_on_floor(  # noqa: PLR0917 (the scene's context, every argument named by its one caller)
    client: DemoClient,
    executor: SingleThreadedExecutor,
    image_of_object: dict[str, ImageRecord],
    image: ImageRecord,
    floor: GroundPlane,
    asked: list[tuple[QueryRecord, Outcome]],
    args: argparse.Namespace,
) -> None:
    """Ask a scene's answered queries again with the node told where the floor is (TF).

    `floor` is the scene's own, for the printout; the node reads it from the camera's /tf.
    Fills each outcome's floor_iou / floor_grounded; the node's floor is unknown again after.
    """
    if not set_floor_frame(client, executor, FLOOR_FRAME):
        print("  (llmi3d_node did not take floor_frame: no second answers)")
        return
    print(f"  asked again with the node told where the floor is (floor_frame {FLOOR_FRAME}: "
          f"the camera's pose on /tf, {floor.height_m:.2f} m up, pitched "
          f"{floor.pitch_deg:.1f} deg):")  # fmt: skip
    try:
        for query, outcome in asked:
            if outcome.message not in ANSWERED:
                continue
            response, _ = ask(client, executor, query, args.query_timeout_s)
            if response is None or not response.success:
                print(f"  Q ({query.type}): no answer this time; not counted")
                continue
            stamp = stamp_to_ns(response.detections.header.stamp)
            if scene_of_stamp(client, executor, image_of_object, stamp) != image.image_id:
                print(f"  Q ({query.type}): answered on a frame of another scene; not counted")
                continue
            if floor_not_used(FLOOR_FRAME) in response.message:  # the node says why
                print(f"  Q ({query.type}): {response.message}; not counted")
                continue
            outcome.floor_iou, outcome.floor_grounded = report_on_floor(
                client, executor, query, response, image, args
            )
    finally:
        set_floor_frame(client, executor, "")


def truth_of(
    client: DemoClient, response: Query.Response, query: QueryRecord
) -> tuple[Detection3DArray | None, Box3D | None]:
    """The ground truth of the answer's frame, and the query's target box in it."""
    truth = client.truth.get(stamp_to_ns(response.detections.header.stamp))
    if truth is None:
        return None, None
    for det in truth.detections:
        if det.id == query.target_object_id:
            return truth, Box3D(*detection_box(det))
    return truth, None


def report_on_floor(  # noqa: PLR0917 (mirrors report)
    client: DemoClient,
    executor: SingleThreadedExecutor,
    query: QueryRecord,
    response: Query.Response,
    image: ImageRecord,
    args: argparse.Namespace,
) -> tuple[float | None, bool | None]:
    """Print a floor answer's box and IoU, save its picture (*_floor.png); (IoU, grounded)."""
    truth, truth_box = truth_of(client, response, query)
    picture = save_picture(
        client, executor, response, truth_box, image.K,
        picture_path(args.run_dir, image, query, "_floor"),
    )  # fmt: skip
    if not response.detections.detections:
        print(f"  Q ({query.type}): {response.answer}")
        return (None if truth_box is None else 0.0), (None if truth_box is None else False)
    center, dims, iou, grounded = judged(response, truth, truth_box, query)
    shown = "-" if iou is None else f"{iou:.3f}"
    print(f"  Q ({query.type}): box: centre {np.round(center, 2).tolist()} m, "
          f"L W H {np.round(dims, 2).tolist()} m, 3D IoU {shown}")  # fmt: skip
    print_picture(picture)
    return iou, grounded


def judged(
    response: Query.Response,
    truth: Detection3DArray | None,
    truth_box: Box3D | None,
    query: QueryRecord,
) -> tuple[np.ndarray, np.ndarray, float | None, bool | None]:
    """The answer's first box (centre, dims), its 3D IoU with the target, whether it is on it.

    IoU and grounded are None where the ground truth is missing.
    """
    center, dims, R = detection_box(response.detections.detections[0])
    iou = None
    if truth_box is not None:
        iou = float(box3d_iou(box3d_corners(center, dims, R), truth_box.corners()))
    grounded = None if truth is None else chosen_object(center, truth) == query.target_object_id
    return center, dims, iou, grounded


def report(
    client: DemoClient,
    executor: SingleThreadedExecutor,
    query: QueryRecord,
    *,
    response: Query.Response | None,
    latency_s: float,
    image: ImageRecord,
    args: argparse.Namespace,
) -> Outcome:
    """Print one answer with its IoU against the ground truth, save its picture."""
    prompt = ""
    if query.box_prompt is not None:
        prompt = f" [box {np.round(query.box_prompt).astype(int).tolist()}]"
    if query.point_prompt is not None:
        prompt = f" [point {np.round(query.point_prompt).astype(int).tolist()}]"
    print(f"  Q ({query.type}): {query.text}{prompt}")
    if response is None:
        print(f"  -> no answer within {args.query_timeout_s:.0f} s")
        return Outcome(image.image_id, query.type, query.text, "", None, latency_s, "timeout")
    if not response.success:
        print(f"  -> failed: {response.message}")
        return Outcome(
            image.image_id, query.type, query.text, "", None, latency_s, response.message
        )
    truth, truth_box = truth_of(client, response, query)
    if not response.detections.detections:
        return report_not_found(
            client, executor, response,
            latency_s=latency_s, image=image, query=query, truth_box=truth_box, args=args,
        )  # fmt: skip
    center, dims, iou, grounded = judged(response, truth, truth_box, query)
    picture = save_picture(
        client, executor, response, truth_box, image.K, picture_path(args.run_dir, image, query)
    )
    score = response.detections.detections[0].results[0].hypothesis.score
    print(f"  -> answer: {response.answer!r} (expected {query.answer!r}), score {score:.2f}, "
          f"{latency_s:.2f} s")  # fmt: skip
    print(f"     box: centre {np.round(center, 2).tolist()} m, "
          f"L W H {np.round(dims, 2).tolist()} m")  # fmt: skip
    if truth_box is not None:
        print(f"     truth: centre {np.round(truth_box.center, 2).tolist()} m, "
              f"L W H {np.round(truth_box.dims_lwh, 2).tolist()} m, 3D IoU {iou:.3f}")  # fmt: skip
    print_picture(picture)
    return Outcome(
        image.image_id, query.type, query.text, response.answer, iou, latency_s, "ok", grounded
    )


def report_not_found(
    client: DemoClient,
    executor: SingleThreadedExecutor,
    response: Query.Response,
    *,
    latency_s: float,
    image: ImageRecord,
    query: QueryRecord,
    truth_box: Box3D | None,
    args: argparse.Namespace,
) -> Outcome:
    """The node answered "not here" (success, no box): a miss when the target is in the scene.

    The demo's queries all have a target, so its IoU counts as 0; the picture shows the debug
    image (no box) with the ground truth.
    """
    picture = save_picture(
        client, executor, response, truth_box, image.K, picture_path(args.run_dir, image, query)
    )
    print(f"  -> {response.answer} (expected {query.answer!r}): {response.message}, "
          f"{latency_s:.2f} s")  # fmt: skip
    print_picture(picture)
    iou = 0.0 if truth_box is not None else None
    return Outcome(
        image.image_id, query.type, query.text, response.answer, iou, latency_s, NOT_FOUND,
        None if truth_box is None else False,
    )  # fmt: skip


def print_picture(picture: Path | None) -> None:
    """Say where an answer's picture is, or that its debug image never came."""
    if picture is None:
        print(f"     picture: none (no debug image from the node within {DEBUG_WAIT_S:.0f} s)")
    else:
        print(f"     picture: {picture}")


def picture_path(run_dir: Path, image: ImageRecord, query: QueryRecord, suffix: str = "") -> Path:
    """The next picture's path: NN_<image>_<query type><suffix>.png, NN counting the run's."""
    index = len(list(run_dir.glob("*.png"))) if run_dir.is_dir() else 0
    return run_dir / f"{index:02d}_{image.image_id}_{query.type}{suffix}.png"


def summary(outcomes: list[Outcome]) -> str:
    """A markdown table of the outcomes and the headline numbers.

    Queries that name a category held out of the model's training are starred, and the numbers
    are given again without them.
    """
    lines = [
        "| scene | type | query | answer | 3D IoU | 3D IoU, floor given | latency |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        iou = f"{o.iou:.3f}" if o.iou is not None else "-"
        floor_iou = f"{o.floor_iou:.3f}" if o.floor_iou is not None else "-"
        kind = f"{o.kind} *" if o.held_out else o.kind
        lines.append(
            f"| {o.image_id} | {kind} | {o.text[:48]} | {o.answer or o.message[:30]} | {iou} "
            f"| {floor_iou} | {o.latency_s:.2f} s |"
        )
    answered = sum(o.message in ANSWERED for o in outcomes)
    lines.append("")
    lines.append(f"answered {answered}/{len(outcomes)} queries")
    overall = headline(outcomes)
    if overall:
        lines.append(f"summary: {overall}")
    on_floor = [
        dataclasses.replace(o, iou=o.floor_iou, grounded=o.floor_grounded)
        for o in outcomes
        if o.floor_iou is not None
    ]
    floor_line = headline(on_floor)
    if floor_line:
        lines.append(
            "with the camera's floor given (node parameter floor_frame, the camera's pose on "
            f"/tf; README): {floor_line}"
        )
    held_out = sorted({o.held_out for o in outcomes if o.held_out})
    if held_out:
        lines.append(
            f"* names a category held out of the model's training ({', '.join(held_out)}): "
            "the model has never seen one, so it cannot name it (it may still find it as a "
            "look-alike, e.g. a bus as a truck)"
        )
        trained = headline([o for o in outcomes if not o.held_out])
        if trained:
            lines.append(f"on the categories it was trained on: {trained}")
    return "\n".join(lines)


def headline(outcomes: list[Outcome]) -> str:
    """Acc@0.25, grounding, mean 3D IoU and Acc@0.5 of the outcomes with an IoU ("" if none)."""
    ious = [o.iou for o in outcomes if o.iou is not None]
    if not ious:
        return ""
    grounded = [o.grounded for o in outcomes if o.grounded is not None]
    hits = int(np.sum(np.array(ious) > 0.25))
    on_target = f"grounding {sum(grounded)}/{len(grounded)} " if grounded else ""
    return (
        f"Acc@0.25 {hits}/{len(ious)} ({100 * hits / len(ious):.0f} %), "
        f"{on_target}(box on the asked-for object), mean 3D IoU {np.mean(ious):.3f}, "
        f"Acc@0.5 {np.mean(np.array(ious) > 0.5):.2f} (exact oriented IoU)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the demo's command line."""
    parser = argparse.ArgumentParser(prog="llmi3d_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="", help="serve an untrained preset (tiny, smol)")
    parser.add_argument("--checkpoint", default="", help="serve this checkpoint")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="run directory of the default model (default: ~/.cache/llmi3d/default_model-<hash>)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out") / "demo",
        help="debug pictures go to a new folder OUT/<date>-<time> for each run (default: out/demo)",
    )
    parser.add_argument("--images", type=int, default=3, help="scenes to ask about")
    parser.add_argument("--queries-per-image", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1000, help="seed of the demo scenes")
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="do not ask each scene's queries again with the node told where the floor is",
    )
    parser.add_argument("--startup-timeout-s", type=float, default=180.0)
    parser.add_argument("--query-timeout-s", type=float, default=60.0)
    parser.add_argument("--run-timeout-s", type=float, default=300.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit status 0 when every query was answered ("not here" included).

    SIGINT, SIGTERM and SIGHUP stop the node processes (llmi3d_bringup's `stop`) and end the
    demo by the same signal, whatever it was doing (training on first run included).
    """
    args = parse_args(argv)
    processes: list[subprocess.Popen[bytes]] = []
    with StopSignals(processes) as signals:
        try:
            return run_demo(args, processes)
        except StopRequested as stop_request:
            stopped_by = stop_request.signum
        finally:
            signals.stopping = True
            stop(processes)
    print(f"[demo] stopped by {signal.Signals(stopped_by).name}", file=sys.stderr)
    exit_by_signal(stopped_by)


def run_demo(args: argparse.Namespace, processes: list[subprocess.Popen[bytes]]) -> int:
    """Train or find the model, start the nodes into `processes`, ask, print the summary."""
    for line in startup_lines("demo", os.environ):
        print(line, flush=True)
    args.run_dir = new_run_dir(args.out)
    print(f"[demo] debug pictures of this run go to {args.run_dir.resolve()}")
    checkpoint = ensure_model(args)
    categories = trained_categories(checkpoint)
    dataset_dir = ensure_dataset("", args.seed, max(args.images, 4))
    options = BringupOptions(
        checkpoint=checkpoint, preset=args.preset, synthetic_camera=True,
        synthetic_dataset=str(dataset_dir), log_level="warn",
    )  # fmt: skip
    print(f"[demo] starting llmi3d_node ({checkpoint or 'preset ' + args.preset}) and the camera")
    start(options, processes)
    # Our own handlers (StopSignals) stop the nodes; rclpy's would only shut this client down.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    client = DemoClient(namespace="/")
    try:
        outcomes = run_queries(args, client, dataset_dir, categories)
    except TimeoutError as err:
        print(f"[demo] error: {err}", file=sys.stderr)
        return 1
    finally:
        client.destroy_node()
        rclpy.try_shutdown()
    print("\n" + summary(outcomes))
    print(f"\n[demo] debug pictures of this run in {args.run_dir.resolve()}")
    return 0 if outcomes and all(o.message in ANSWERED for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
