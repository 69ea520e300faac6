"""The Predictor: one RGB image + intrinsics + a sentence -> 3D boxes in the camera frame.

    predictor = Predictor.from_preset("smol")              # or .from_checkpoint("runs/x/best")
    [pred] = predictor.predict(image_rgb, K, "find the lamp")
    pred.center, pred.dims, pred.rotation, pred.score      # metres, L/W/H, 3x3, [0, 1]

This is the only entry point the ROS node and the CLI use; they never touch model internals.

What one call does (`last_timings` has the seconds of each stage):

    validate      shapes, dtypes, finite K with positive focal lengths, prompt inside the image
    preprocess    letterbox into the model's canvas (aspect kept) and the LR input, in [0, 1]
    encode_image  ViT + CNN + FPN + dense heads + SECBA + projectors  } skipped when the same
    prefill       LLM over the prompt prefix and the image tokens     } image (and K) was seen
    llm           the query: one pass (+ answer generation for questions), the pointer, and
                  the decoding of the candidates' boxes
    decode        canvas pixels -> pixels of the input image, Predictions

Image features and the LLM's KV cache of the image prefix are kept in a small LRU cache keyed by a
BLAKE2 hash of the image bytes and K (about 1 ms for a VGA frame), so further queries on the same
frame only pay for `llm` and `decode`.

K is the intrinsic matrix of the image as given; the model works in the letterboxed canvas
(llmi3d_core/letterbox.py), and every pixel quantity crosses that boundary here: prompts go in,
2D boxes and projected centres come back in pixels of the given image. 3D boxes need no mapping.

Thread safety: `predict` holds a lock, so the node may call it from several callback groups.
Devices: device="cuda" (or "cuda:N") runs the model on a GPU; dtype "bfloat16" halves memory
(CPU or CUDA) and, on a CPU with bfloat16 units (AMX), about halves a query's LLM time at a
small cost in accuracy (BENCHMARKS.md); "float16" is CUDA-only; decoding always runs in float32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmi3d_core.errors import ConfigError, InvalidInputError, ModelOutputError
from llmi3d_core.geometry import Box3D
from llmi3d_core.ground_plane import GroundPlane, seen_bottom
from llmi3d_core.letterbox import Letterbox
from llmi3d_core.model.checkpoint import load_checkpoint
from llmi3d_core.model.config import ModelConfig
from llmi3d_core.model.inputs import prepare_inputs
from llmi3d_core.model.llm import DTYPES
from llmi3d_core.model.llmi3d import LLMI3D
from llmi3d_core.model.presets import resolve_config
from llmi3d_core.model.sequence import ANSWER_POLICIES, format_query
from llmi3d_core.prediction import Answer, AnswerRule, Prediction

MAX_QUERY_CHARS = 2000
# leading words that are not part of the object phrase (for labels of plain grounding queries)
_COMMAND_WORDS = re.compile(
    r"^(please\s+|find\s+|locate\s+|detect\s+|show\s+me\s+|look\s+for\s+|point\s+to\s+|"
    r"where\s+is\s+|where's\s+|get\s+|give\s+me\s+|the\s+3d\s+box\s+of\s+|the\s+|a\s+|an\s+)+",
    re.IGNORECASE,
)


def object_phrase(query: str) -> str:
    """Object phrase of a plain grounding query: "Find the red lamp." -> "red lamp"."""
    text = _COMMAND_WORDS.sub("", query.strip()).strip(" ?.!,;:")
    return text or query.strip()


def not_found_answer(query: str) -> str:
    """The answer text of "not here": "no 'red lamp' found", or "nothing here answers '...'".

    The second is for a question that names no object ("What could take thirty people across
    town?"), whose object phrase would be the whole question.
    """
    text = query.strip()
    if text.endswith("?") and not _COMMAND_WORDS.match(text):
        return f"nothing here answers {text!r}"
    return f"no {object_phrase(text)!r} found"


def resolve_device(device: str | torch.device) -> torch.device:
    """Check that the device exists.

    Raises:
        ConfigError: an unknown device string, or CUDA asked for where there is none.
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"invalid device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} requested but this torch build sees no CUDA GPU "
            f"(torch {torch.__version__}); use device='cpu'"
        )
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The torch dtype of a name: float32 for None; bfloat16 anywhere; float16 on CUDA only.

    Raises:
        ConfigError: an unknown dtype, or float16 on the CPU.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in DTYPES:
        resolved = DTYPES[dtype]
    else:
        raise ConfigError(f"unknown dtype {dtype!r}; available: {', '.join(DTYPES)}")
    if resolved not in DTYPES.values():
        raise ConfigError(f"unsupported dtype {resolved}; available: {', '.join(DTYPES)}")
    if resolved == torch.float16 and device.type != "cuda":
        raise ConfigError("dtype float16 needs device='cuda'; on the CPU use float32 or bfloat16")
    return resolved


def check_image(image: Any) -> np.ndarray:
    """Check an RGB image: numpy uint8 (H, W, 3) with H, W >= 8.

    Raises:
        InvalidInputError: naming the wrong type, dtype or shape.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(f"image_rgb must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InvalidInputError(f"image_rgb must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(f"image_rgb must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise InvalidInputError(f"image_rgb must be at least 8 x 8 pixels, got {image.shape[:2]}")
    return image


def check_intrinsics(K: Any) -> np.ndarray:
    """Check K: finite 3x3, f_x, f_y > 0, last row (0, 0, 1). Returns float64 (3, 3).

    Raises:
        InvalidInputError: naming the offending entry.
    """
    try:
        matrix = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"K must be a 3x3 array of numbers: {err}") from None
    if matrix.shape != (3, 3):
        raise InvalidInputError(f"K must have shape (3, 3), got {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise InvalidInputError(f"K must be finite, got {matrix.tolist()}")
    if matrix[0, 0] <= 0 or matrix[1, 1] <= 0:
        raise InvalidInputError(
            f"K focal lengths must be > 0 px, got f_x={matrix[0, 0]}, f_y={matrix[1, 1]}"
        )
    if not np.allclose(matrix[2], (0.0, 0.0, 1.0), atol=1e-6):
        raise InvalidInputError(f"K last row must be (0, 0, 1), got {matrix[2].tolist()}")
    return matrix


def check_query(query: Any) -> str:
    """Check the query text: a non-empty string of at most MAX_QUERY_CHARS characters."""
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise InvalidInputError("query must not be empty")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidInputError(
            f"query is {len(query)} characters long; at most {MAX_QUERY_CHARS} are allowed"
        )
    return query


def checked_prompt(values: Any, size: tuple[int, int], what: str) -> np.ndarray | None:
    """Pixel box (x1, y1, x2, y2) or point (u, v) of an image of `size`, checked in-image.

    A tolerance of 1 px is allowed at the border; a box must have x1 < x2 and y1 < y2. `what`
    names the prompt in messages: "box_prompt" or "point_prompt", the fields of the node's
    service (msg/llmi3d_msgs/srv/Query.srv) and of the dataset format.

    Raises:
        InvalidInputError: wrong length, non-finite, degenerate or outside the image.
    """
    if values is None:
        return None
    width, height = size
    length = 4 if what.startswith("box") else 2
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"{what} must be {length} numbers: {err}") from None
    if array.shape != (length,) or not np.all(np.isfinite(array)):
        # tolist(): plain numbers ([nan, 5.0]), not a numpy repr (array([nan,  5.]))
        raise InvalidInputError(f"{what} must be {length} finite numbers, got {array.tolist()}")
    xs, ys = array[0::2], array[1::2]
    if xs.min() < -1 or ys.min() < -1 or xs.max() > width + 1 or ys.max() > height + 1:
        raise InvalidInputError(
            f"{what} {array.tolist()} lies outside the image (width {width}, height {height} px)"
        )
    if length == 4 and (array[2] <= array[0] or array[3] <= array[1]):
        raise InvalidInputError(
            f"{what} must have x_min < x_max and y_min < y_max, got {array.tolist()}"
        )
    limit = np.array([width - 0.5, height - 0.5] * (length // 2), dtype=np.float64)
    return np.clip(array, -0.5, limit)


def _per_item(values: Sequence[Any] | None, count: int, name: str) -> list[Any]:
    """One value per item (None: None for each); a sequence of another length is an error."""
    if values is None:
        return [None] * count
    if len(values) != count:
        raise InvalidInputError(f"{name} has {len(values)} entries for {count} queries")
    return list(values)


def _on_ground(prediction: Prediction, plane: GroundPlane, item: _Item) -> Prediction:
    """The prediction with its box stood on the floor (GroundPlane.place); 2D outputs kept."""
    seen = seen_bottom(item.K, prediction.box2d, item.image.shape[0])
    box = plane.place(Box3D(prediction.center, prediction.dims, prediction.rotation), seen)
    return dataclasses.replace(prediction, center=box.center, dims=box.dims_lwh, rotation=box.R)


@dataclass(frozen=True)
class _Item:
    """One checked request: the image, its K (float64), the raw query, the model text, its key.

    Prompts are normalised to the model's canvas (NaN-free arrays, or None).
    """

    image: np.ndarray
    K: np.ndarray
    query: str
    text: str
    key: str
    letterbox: Letterbox
    box_prompt: np.ndarray | None
    point_prompt: np.ndarray | None


def image_key(image: np.ndarray, K: np.ndarray) -> str:
    """Content hash of an image and its K (BLAKE2b over the raw bytes, ~1 ms per VGA frame)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    digest.update(K.astype(np.float64).tobytes())
    return digest.hexdigest()


class Predictor:
    """Runs an LLMI3D model on numpy images; see the module docstring.

    Args:
        model: an LLMI3D model (it is moved to `device` / `dtype` and set to eval mode).
        device: "cpu", "cuda" or "cuda:N".
        dtype: "float32", "bfloat16" or "float16" (CUDA only), or a torch dtype; None takes the
            config's llm.dtype (float32 for the tiny and smol presets).
        cache_size: images whose features are kept (LRU).
        answer_policy: "auto" (the LLM decides whether a query needs an answer first, as
            trained), "ground" (never generate: one pass per query) or "answer" (always).
            None: "auto" for a model trained to answer (config.answer_types not empty), else
            "ground" (a model that never learned when to answer would ramble).
        merge_lora: fold the LoRA adapter into the LLM weights (~18% faster per LLM step on a
            CPU); the Predictor then owns the model: do not train it further (or call
            `model.llm.unmerge_lora()` first). Checkpoints are saved unmerged either way.
    """

    def __init__(
        self,
        model: Any,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        *,
        cache_size: int = 4,
        answer_policy: str | None = None,
        merge_lora: bool = True,
    ) -> None:
        if answer_policy is None:
            answer_policy = "auto" if model.config.answer_types else "ground"
        if answer_policy not in ANSWER_POLICIES:
            raise ConfigError(
                f"unknown answer_policy {answer_policy!r}; available: {', '.join(ANSWER_POLICIES)}"
            )
        if cache_size < 1:
            raise ConfigError(f"cache_size must be >= 1, got {cache_size}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(model.config.llm.dtype if dtype is None else dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        if merge_lora:
            self.model.llm.merge_lora()
        self.cache_size = cache_size
        self.answer_policy = answer_policy
        self.last_timings: dict[str, float] = {}
        self.last_cache_hit = False
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_preset(
        cls,
        name: str,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """Build the model of a preset ("tiny", "smol", "hf") or a YAML config file path.

        A preset model has untrained heads: its boxes are only meaningful after training.

        Raises:
            ConfigError: unknown preset or invalid config.
        """
        config = resolve_config(name)
        return cls(LLMI3D(config), device=device, dtype=dtype, **kwargs)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """Load a checkpoint directory written by `save_checkpoint`.

        Raises:
            CheckpointError: missing or mismatching checkpoint files.
        """
        return cls(load_checkpoint(path), device=device, dtype=dtype, **kwargs)

    @property
    def config(self) -> ModelConfig:
        """The model's configuration."""
        return self.model.config  # type: ignore[no-any-return]

    @property
    def served_rule(self) -> AnswerRule:
        """The node's answer rule for this model: its own fitted ratio when it has one."""
        return AnswerRule.served(self.model.fitted_answer_ratio)

    def clear_cache(self) -> None:
        """Forget all cached image features (frees their memory)."""
        with self._lock:
            self._cache.clear()

    # ------------------------------------------------------------------ public API

    def predict(  # noqa: PLR0917 (the signature is the node's contract)
        self,
        image_rgb: np.ndarray,
        K: Any,
        query: str,
        box2d: Any = None,
        point2d: Any = None,
        max_results: int = 1,
        min_score: float = 0.0,
        *,
        min_ratio_to_nothing: float = 0.0,
        min_score_others: float = 0.0,
        ground_plane: GroundPlane | None = None,
    ) -> list[Prediction]:
        """Find the object described by `query` in one image.

        Args:
            image_rgb: (H, W, 3) uint8 RGB image.
            K: (3, 3) intrinsics of that image, pixels.
            query: the sentence ("find the lamp", "what should I use to read?").
            box2d: optional (4,) box prompt x1, y1, x2, y2 in pixels of the image.
            point2d: optional (2,) point prompt u, v in pixels.
            max_results: most predictions to return, best first (the pointer ranks every object
                the detector found; the MLP read-out gives one box).
            min_score: the AnswerRule's: no prediction scoring below it is returned (all three
                0: every prediction; an empty list is the answer "not here", see `answer_batch`).
            min_ratio_to_nothing: the AnswerRule's: the best prediction is returned only when it
                scores at least this many times the probability that nothing matches.
            min_score_others: the AnswerRule's: the predictions after the best need at least it.
            ground_plane: where the floor is relative to this camera, when known: every box is
                moved along its viewing ray to stand on it (llmi3d_core.ground_plane).

        Returns:
            At most `max_results` predictions, best first, duplicates of one object removed.

        Raises:
            InvalidInputError: bad image, K, query, prompt or max_results.
            ModelOutputError: the model produced NaN/inf or an unparsable answer.
        """
        answers = self.answer_batch(
            [image_rgb], [K], [query], [box2d], [point2d], max_results, min_score,
            min_ratio_to_nothing=min_ratio_to_nothing, min_score_others=min_score_others,
            ground_planes=[ground_plane],
        )  # fmt: skip
        return answers[0].predictions

    def predict_batch(  # noqa: PLR0917 (mirrors predict)
        self,
        images: Sequence[np.ndarray],
        Ks: Sequence[Any],
        queries: Sequence[str],
        box2ds: Sequence[Any] | None = None,
        point2ds: Sequence[Any] | None = None,
        max_results: int = 1,
        min_score: float = 0.0,
        *,
        min_ratio_to_nothing: float = 0.0,
        min_score_others: float = 0.0,
        ground_planes: Sequence[GroundPlane | None] | None = None,
    ) -> list[list[Prediction]]:
        """Batched `predict`: item i is (images[i], Ks[i], queries[i], box2ds[i], point2ds[i])."""
        answers = self.answer_batch(
            images, Ks, queries, box2ds, point2ds, max_results, min_score,
            min_ratio_to_nothing=min_ratio_to_nothing, min_score_others=min_score_others,
            ground_planes=ground_planes,
        )  # fmt: skip
        return [answer.predictions for answer in answers]

    def answer_batch(  # noqa: PLR0917 (mirrors predict)
        self,
        images: Sequence[np.ndarray],
        Ks: Sequence[Any],
        queries: Sequence[str],
        box2ds: Sequence[Any] | None = None,
        point2ds: Sequence[Any] | None = None,
        max_results: int = 1,
        min_score: float = 0.0,
        *,
        min_ratio_to_nothing: float = 0.0,
        min_score_others: float = 0.0,
        ground_planes: Sequence[GroundPlane | None] | None = None,
    ) -> list[Answer]:
        """Answer queries: their predictions and, for "not here", the best candidate turned down.

        Item i is (images[i], Ks[i], queries[i], box2ds[i], point2ds[i]). The three thresholds
        make the AnswerRule (llmi3d_core.prediction; `served_rule` holds the node's).
        `ground_planes[i]`, when given and not None, stands item i's boxes on that floor
        (`predict`).

        New images are encoded together in one vision pass; identical images (same bytes and K)
        are encoded once. Each query then runs on its image's cached LLM prefix.

        Raises:
            InvalidInputError: mismatched lengths or any bad item (nothing is computed then).
            ModelOutputError: NaN/inf model output.
        """
        start = time.perf_counter()
        if isinstance(max_results, bool) or not isinstance(max_results, int) or max_results < 1:
            raise InvalidInputError(f"max_results must be an integer >= 1, got {max_results!r}")
        rule = AnswerRule(min_score, min_ratio_to_nothing, min_score_others)
        items = self._validate(images, Ks, queries, box2ds, point2ds)
        planes = _per_item(ground_planes, len(items), "ground_planes")
        timings = dict.fromkeys(("preprocess", "encode_image", "prefill", "llm", "decode"), 0.0)
        timings["validate"] = time.perf_counter() - start
        with self._lock:
            contexts = self._contexts(items, timings)
            results = []
            for item, plane in zip(items, planes, strict=True):
                tick = time.perf_counter()
                context = contexts[item.key]
                located = self.model.locate(
                    context,
                    item.text,
                    self.answer_policy,
                    box_prompt=self._prompt_tensor(item.box_prompt),
                    point_prompt=self._prompt_tensor(item.point_prompt),
                )
                timings["llm"] += time.perf_counter() - tick
                tick = time.perf_counter()
                ranked = self._to_predictions(located, item)
                answer = Answer.select(
                    item.query, ranked, located, max_results=max_results, rule=rule
                )
                if plane is not None:  # after the choice: the floor moves boxes, not answers
                    answer.predictions = [_on_ground(p, plane, item) for p in answer.predictions]
                    if answer.best is not None:
                        answer.best = _on_ground(answer.best, plane, item)
                results.append(answer)
                timings["decode"] += time.perf_counter() - tick
        timings["total"] = time.perf_counter() - start
        self.last_timings = timings
        return results

    # ------------------------------------------------------------------ internals

    def _validate(
        self,
        images: Sequence[np.ndarray],
        Ks: Sequence[Any],
        queries: Sequence[str],
        box2ds: Sequence[Any] | None,
        point2ds: Sequence[Any] | None,
    ) -> list[_Item]:
        """Check every input and format the query texts (prompts included)."""
        count = len(images)
        boxes = [None] * count if box2ds is None else list(box2ds)
        points = [None] * count if point2ds is None else list(point2ds)
        if not (len(Ks) == len(queries) == len(boxes) == len(points) == count):
            raise InvalidInputError(
                f"predict_batch needs equally long lists, got {count} images, {len(Ks)} K, "
                f"{len(queries)} queries, {len(boxes)} box2ds, {len(points)} point2ds"
            )
        items = []
        canvas_h, canvas_w = self.config.high_res.image_size
        for raw_image, K, query, box, point in zip(images, Ks, queries, boxes, points, strict=True):
            image = check_image(raw_image)
            matrix = check_intrinsics(K)
            size = (image.shape[1], image.shape[0])
            box_px = checked_prompt(box, size, "box_prompt")
            point_px = checked_prompt(point, size, "point_prompt")
            letterbox = Letterbox.fit(size[0], size[1], canvas_w, canvas_h)
            canvas = letterbox.canvas_size
            box_norm = (
                None if box_px is None else letterbox.boxes_to_canvas(box_px) / np.tile(canvas, 2)
            )
            point_norm = None if point_px is None else letterbox.points_to_canvas(point_px) / canvas
            text = format_query(check_query(query), box_norm, point_norm)
            items.append(
                _Item(
                    image,
                    matrix,
                    query,
                    text,
                    image_key(image, matrix),
                    letterbox,
                    box_norm,
                    point_norm,
                )
            )
        return items

    def _prompt_tensor(self, values: np.ndarray | None) -> torch.Tensor | None:
        return None if values is None else torch.as_tensor(values, dtype=torch.float32)

    def _contexts(self, items: list[_Item], timings: dict[str, float]) -> dict[str, Any]:
        """Image contexts for every item: from the cache, or encoded together and cached."""
        contexts = {item.key: self._cache[item.key] for item in items if item.key in self._cache}
        self.last_cache_hit = len(contexts) == len({item.key for item in items})
        for key in contexts:
            self._cache.move_to_end(key)
        new = {item.key: item for item in items if item.key not in contexts}
        if not new:
            return contexts
        tick = time.perf_counter()
        prepared = [prepare_inputs(item.image, item.K, self.config) for item in new.values()]
        image_lr = torch.stack([p.image_lr for p in prepared])
        image_hr = torch.stack([p.image_hr for p in prepared])
        K = torch.as_tensor(np.stack([p.K for p in prepared]), dtype=torch.float32)
        size = torch.as_tensor(
            np.stack([p.letterbox.canvas_size for p in prepared]), dtype=torch.float32
        )
        timings["preprocess"] = time.perf_counter() - tick
        tick = time.perf_counter()
        with torch.no_grad():
            features = self.model.encode_image(image_lr, image_hr, K, size)
        timings["encode_image"] = time.perf_counter() - tick
        tick = time.perf_counter()
        for index, key in enumerate(new):
            contexts[key] = self.model.prepare_context(features, index)
            self._cache[key] = contexts[key]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        timings["prefill"] = time.perf_counter() - tick
        return contexts

    def _to_predictions(self, located: Any, item: _Item) -> list[Prediction]:
        """Every located box (best first) as a Prediction in the input image; reject NaN/inf."""
        boxes = {k: v.detach().cpu().double().numpy() for k, v in located.boxes.items()}
        scores = located.scores.detach().cpu().double().numpy()
        for name in ("center", "R", "dims", "box2d_px", "center_uv_px"):
            if not np.all(np.isfinite(boxes[name])):
                raise ModelOutputError(
                    f"decoded {name} is not finite: {boxes[name].tolist()} (query {item.query!r})"
                )
        if not np.all(np.isfinite(scores)):
            raise ModelOutputError(f"model scores are not finite: {scores.tolist()}")
        answer = located.answer if located.answered else ""
        categories = self.model.category_names(located.categories)
        predictions = []
        for index in range(len(scores)):
            category = categories[index]
            predictions.append(
                Prediction(
                    label=answer or category or object_phrase(item.query),
                    answer=answer,
                    center=boxes["center"][index],
                    dims=boxes["dims"][index],
                    rotation=boxes["R"][index],
                    score=float(scores[index]),
                    box2d=item.letterbox.boxes_to_image(boxes["box2d_px"][index], clip=True),
                    center_uv=item.letterbox.points_to_image(boxes["center_uv_px"][index]),
                    category=category,
                )
            )
        return predictions
