"""Predictions of a dataset split, query by query, in the form `llmi3d eval` scores them.

A model runs its real inference path (`Predictor.answer_batch`, which answers questions
itself; an empty list means "not here"); `predict_at_true_cells` reads the dense heads at each
target's own cell (the upper bound of pointing); `predict_with_true_names` runs the model with
each candidate named by the object it boxes (the upper bound of naming); a baseline always gives
one box. Each query becomes a QueryResult: its targets and its answers, best first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from llmi3d_core.data.format import Dataset, ImageRecord, QueryRecord
from llmi3d_core.data.images import load_rgb
from llmi3d_core.errors import InvalidInputError
from llmi3d_core.geometry import Box3D, project
from llmi3d_core.ground_plane import GroundPlane, record_ground_plane
from llmi3d_core.inference import Predictor
from llmi3d_core.letterbox import Letterbox
from llmi3d_core.metrics import ScoredBox
from llmi3d_core.model.checkpoint import load_checkpoint, read_checkpoint_meta
from llmi3d_core.model.decode import decode_boxes
from llmi3d_core.model.inputs import prepare_inputs
from llmi3d_core.model.losses import box_iou_2d
from llmi3d_core.prediction import AnswerRule
from llmi3d_core.visualize import BOX3D_EDGES

__all__ = [
    "MAX_RESULTS",
    "Answer",
    "QueryResult",
    "TrueNames",
    "load_predictor",
    "predict_at_true_cells",
    "predict_with_baseline",
    "predict_with_model",
    "predict_with_true_names",
    "projected_box2d",
    "target_boxes",
]

MAX_RESULTS = 10  # answers kept per query ("all the chairs" needs several)
MIN_DIM_M = 1e-3  # predicted sizes are clamped to this so that a box can be scored
NEAR_PLANE_M = 0.05  # box edges are cut here before projecting a 2D box
# `predict_with_true_names`: a named candidate's probability of its object's category (colour);
# the rest is spread evenly (a sure name, as the crop heads give their surest)
TRUE_NAME_PROB = 0.98


@dataclass
class Answer:
    """One returned prediction of a query.

    Attributes:
        box: the predicted 3D box.
        box2d: (4,) [x1, y1, x2, y2] px of the image (the model's 2D box; for a baseline the
            projection of its 3D box).
        score: confidence in [0, 1].
        label: the predicted object phrase (or a baseline's label).
        answer: the generated answer text ('' when none).
    """

    box: Box3D
    box2d: np.ndarray
    score: float
    label: str
    answer: str = ""


@dataclass
class QueryResult:
    """One evaluated query: its targets and its answers (best first; [] is "not here").

    The properties keep the single-target view that callers written before lists existed use
    (`pred`, `gt`, `label`, `score`, `answer`): the first answer and the one target.

    Attributes:
        query: the query record.
        targets: one ScoredBox a target (its 3D box and tight 2D box), [] for a negative query.
        answers: the predictions, best first.
        nothing_score: the model's probability that nothing matches (0 for a baseline).
    """

    query: QueryRecord
    targets: list[ScoredBox]
    answers: list[Answer]
    nothing_score: float = 0.0

    @property
    def kind(self) -> str:
        """The query's kind by its number of targets: "single", "negative" or "multi"."""
        count = len(self.targets)
        return "single" if count == 1 else "negative" if count == 0 else "multi"

    @property
    def gt(self) -> Box3D:
        """The target box of a single-target query.

        Raises:
            InvalidInputError: for a negative or multi-target query.
        """
        if len(self.targets) != 1:
            raise InvalidInputError(
                f"query {self.query.query_id!r} has {len(self.targets)} targets; .gt is for "
                "single-target queries, use .targets"
            )
        return self.targets[0].box

    @property
    def pred(self) -> Box3D | None:
        """The first predicted box, None when the answer is "not here"."""
        return self.answers[0].box if self.answers else None

    @property
    def label(self) -> str:
        """The first answer's label ('' when none)."""
        return self.answers[0].label if self.answers else ""

    @property
    def score(self) -> float:
        """The first answer's score (0 when none)."""
        return self.answers[0].score if self.answers else 0.0

    @property
    def answer(self) -> str:
        """The first answer's generated text ('' when none)."""
        return self.answers[0].answer if self.answers else ""

    def under(self, rule: AnswerRule) -> QueryResult:
        """The answers a stricter rule would have given (AnswerRule.keep on these answers).

        Exact for answers made under a looser rule (e.g. the all-zero one) with the same
        max_results: the predictor's duplicate suppression is greedy, best first, so a box above
        min_score is only ever removed by better boxes, which are above it too, and every rule
        keeps a prefix of the list.
        """
        kept = rule.keep(self.answers, self.nothing_score)
        return QueryResult(self.query, self.targets, kept, self.nothing_score)


def target_box(dataset: Dataset, query: QueryRecord) -> Box3D:
    """The ground-truth Box3D of a single-target query's target object."""
    obj = dataset.target(query)
    return Box3D(obj.center_cam, obj.dims_lwh, obj.R_cam)


def target_boxes(dataset: Dataset, query: QueryRecord) -> list[ScoredBox]:
    """Every target of a query as (3D box, tight 2D box), [] for a negative query."""
    return [
        ScoredBox(Box3D(o.center_cam, o.dims_lwh, o.R_cam), np.asarray(o.bbox2D_tight, float))
        for o in dataset.targets(query)
    ]


def projected_box2d(box: Box3D, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """The 2D box [x1, y1, x2, y2] px of a 3D box's projection, clipped to the image.

    Edges are cut at a near plane first, so a box reaching behind the camera still gives the
    box of its visible part; a box wholly behind the camera gives a zero-area box.
    """
    corners = box.corners()  # (8, 3)
    points = []
    for i, j in BOX3D_EDGES:
        p, q = corners[i], corners[j]
        if p[2] < NEAR_PLANE_M and q[2] < NEAR_PLANE_M:
            continue
        if p[2] < NEAR_PLANE_M or q[2] < NEAR_PLANE_M:
            cut = p + (NEAR_PLANE_M - p[2]) / (q[2] - p[2]) * (q - p)
            p, q = (cut, q) if p[2] < NEAR_PLANE_M else (p, cut)
        points += [p, q]
    if not points:
        return np.zeros(4)
    uvw = np.stack(points) @ np.asarray(K, dtype=np.float64).T  # (M, 3)
    uv = uvw[:, :2] / uvw[:, 2:3]  # (M, 2)
    lo = np.clip(uv.min(axis=0), -0.5, [width - 0.5, height - 0.5])
    hi = np.clip(uv.max(axis=0), -0.5, [width - 0.5, height - 0.5])
    return np.concatenate([lo, hi])


def predict_with_baseline(
    baseline: Any, dataset: Dataset, queries: Sequence[QueryRecord]
) -> list[QueryResult]:
    """Run a fitted baseline (llmi3d_core.baselines) on every query: one box each, score 1.

    The baselines never answer "not here"; their 2D box is the projection of their 3D box.
    """
    results = []
    for query in queries:
        box, label = baseline.predict(dataset, query)
        image = dataset.image(query.image_id)
        box2d = projected_box2d(box, image.K, image.width, image.height)
        answers = [Answer(box, box2d, 1.0, label)]
        results.append(QueryResult(query, target_boxes(dataset, query), answers))
    return results


def _answer(prediction: Any, K: np.ndarray, width: int, height: int) -> Answer:
    """An Answer from a prediction.Prediction (sizes clamped so that the box can be scored)."""
    box = Box3D(prediction.center, np.maximum(prediction.dims, MIN_DIM_M), prediction.rotation)
    box2d = getattr(prediction, "box2d", None)
    if box2d is None:
        box2d = projected_box2d(box, K, width, height)
    return Answer(
        box,
        np.asarray(box2d, dtype=np.float64),
        float(prediction.score),
        prediction.label,
        prediction.answer,
    )


def _by_image(queries: Sequence[QueryRecord]) -> dict[str, list[QueryRecord]]:
    """The queries grouped by image, images in order of first appearance (one encoding each)."""
    by_image: dict[str, list[QueryRecord]] = {}
    for query in queries:
        by_image.setdefault(query.image_id, []).append(query)
    return by_image


def predict_with_model(
    predictor: Any,
    dataset: Dataset,
    queries: Sequence[QueryRecord],
    *,
    progress: bool = True,
    max_results: int = MAX_RESULTS,
    rule: AnswerRule | None = None,
    ground_plane: bool = False,
) -> list[QueryResult]:
    """Run a `Predictor` on every query, the queries of one image in one batch (one encoding).

    Every prediction the predictor answers for a query is kept, in its order (best first); an
    empty list is the answer "not here". Prompts are passed in pixels of the image, as the ROS
    node would. `rule` None takes the node's (the predictor's `served_rule`). With
    `ground_plane`, each image's boxes are stood on the floor its record gives
    (`record_ground_plane`); an image without one is an error.
    """
    if rule is None:  # a predictor-like without a rule of its own (a test's) gets the default
        rule = getattr(predictor, "served_rule", AnswerRule.SERVED)
    by_image = _by_image(queries)
    results: dict[str, QueryResult] = {}
    with tqdm(total=len(queries), disable=not progress, desc="eval", unit="query") as bar:
        for image_id, group in by_image.items():
            image = load_rgb(dataset.image_path(image_id))
            record = dataset.image(image_id)
            # only when asked: a predictor-like without floors (a test's) keeps working
            floors = {"ground_planes": [_record_plane(record)] * len(group)} if ground_plane else {}
            answered = predictor.answer_batch(
                [image] * len(group),
                [record.K] * len(group),
                [q.text for q in group],
                [q.box_prompt for q in group],
                [q.point_prompt for q in group],
                max_results=max_results,
                **asdict(rule),  # the rule's fields are the Predictor's keyword names
                **floors,
            )
            for query, answer in zip(group, answered, strict=True):
                boxes = [
                    _answer(p, record.K, record.width, record.height) for p in answer.predictions
                ]
                results[query.query_id] = QueryResult(
                    query, target_boxes(dataset, query), boxes, answer.nothing_score
                )
            bar.update(len(group))
    return [results[q.query_id] for q in queries]


def _record_plane(record: ImageRecord) -> GroundPlane:
    """The ground plane an image record gives; InvalidInputError when it gives none."""
    plane = record_ground_plane(record.extra)
    if plane is None:
        raise InvalidInputError(
            f"image {record.image_id!r} has no camera_height_m in its record: the ground plane "
            "is unknown (only the synthetic generator writes it)"
        )
    return plane


def predict_at_true_cells(
    predictor: Any,
    dataset: Dataset,
    queries: Sequence[QueryRecord],
    *,
    progress: bool = True,
) -> list[QueryResult]:
    """The upper bound of pointing: the dense heads read at each target's own cell.

    (With crop heads, the candidate there is also named and its 2D box corrected from its crop,
    as the model's own candidates are.)

    Every single-target query is answered by the heads at the cell holding its target's
    projected centre, with score 1: what a perfect pointer would reach with this detector. The
    gap to `predict_with_model` is the cost of pointing at the wrong object. Negative and
    multi-target queries get no answer.
    """
    model = predictor.model
    by_image = _by_image(queries)
    results: dict[str, QueryResult] = {}
    with (
        tqdm(total=len(queries), disable=not progress, desc="eval (true cells)") as bar,
        torch.no_grad(),
    ):
        for image_id, group in by_image.items():
            record = dataset.image(image_id)
            inputs = prepare_inputs(load_rgb(dataset.image_path(image_id)), record.K, model.config)
            K = torch.as_tensor(inputs.K, dtype=torch.float32, device=model.device)[None]
            size = torch.as_tensor(inputs.letterbox.canvas_size, dtype=torch.float32)[None]
            features = model.image_side(inputs.image_hr[None], K, size)
            grid = model._grid(features.hr_map, features.image_size)
            for query in group:
                answers = []
                if len(query.target_object_ids) == 1:
                    target = dataset.targets(query)[0]
                    centre = project(target.center_cam, inputs.K)
                    cell = grid.cell_of(torch.as_tensor(centre, dtype=torch.float32)[None, None])
                    cands = model.candidates(
                        features.hr_map, features.dense, features.K, features.image_size, cell,
                        image_hr=inputs.image_hr[None],
                    )  # fmt: skip
                    outputs = {k: v[:, 0].float() for k, v in cands.outputs.items()}
                    boxes = decode_boxes(outputs, features.K, features.image_size, model.config)
                    box = Box3D(
                        boxes["center"][0].double().cpu().numpy(),
                        np.maximum(boxes["dims"][0].double().cpu().numpy(), MIN_DIM_M),
                        boxes["R"][0].double().cpu().numpy(),
                    )
                    box2d = inputs.letterbox.boxes_to_image(
                        boxes["box2d_px"][0].double().cpu().numpy(), clip=True
                    )
                    answers.append(Answer(box, box2d, 1.0, target.category_name, ""))
                results[query.query_id] = QueryResult(query, target_boxes(dataset, query), answers)
                bar.update(1)
    return [results[q.query_id] for q in queries]


class TrueNames:
    """Names candidates after the objects of one image they box (`predict_with_true_names`).

    Called by the model (LLMI3D.rename_candidates) with a batch's candidate outputs: each
    candidate whose 2D box overlaps an object's tight box by IoU > 0.5 (the grounding test) gets
    that object's category and colour, where the detector has the word (a held-out category
    keeps the names the model gave it), with probability TRUE_NAME_PROB.
    """

    def __init__(self, record: ImageRecord, config: Any) -> None:
        canvas_h, canvas_w = config.high_res.image_size
        letterbox = Letterbox.fit(record.width, record.height, canvas_w, canvas_h)
        boxes = [letterbox.boxes_to_canvas(o.bbox2D_tight) for o in record.objects]
        scale = np.tile(letterbox.canvas_size, 2)
        self.boxes = torch.as_tensor(np.stack(boxes) / scale if boxes else np.zeros((0, 4)))
        self.words = {
            "category": _indices([o.category_name for o in record.objects],
                                 config.detector.categories),
            "color": _indices([o.attributes.get("color") for o in record.objects],
                              config.detector.colors),
        }  # fmt: skip

    def __call__(self, outputs: dict[str, torch.Tensor]) -> None:
        """Replace, in place, the category and colour logits (B, N, k) of the named candidates."""
        if not len(self.boxes):
            return
        boxes = outputs["box2d"].float()  # (B, N, 4), normalised canvas
        iou = box_iou_2d(boxes[:, :, None, :], self.boxes.to(boxes)[None, None])  # (B, N, M)
        best_iou, best = iou.max(-1)
        for name, indices in self.words.items():
            if name not in outputs:
                continue
            logits = outputs[name]
            word = indices.to(best.device)[best]  # (B, N): -1 where the detector has no word
            named = (best_iou > 0.5) & (word >= 0)
            device = logits.device
            sure = torch.full(logits.shape, (1 - TRUE_NAME_PROB) / logits.shape[-1], device=device)
            chosen = torch.full((*word.shape, 1), TRUE_NAME_PROB, device=device)
            sure.scatter_add_(-1, word.clamp(min=0)[..., None], chosen)
            outputs[name] = torch.where(named[..., None], sure.log().to(logits), logits)


def _indices(words: Sequence[str | None], vocabulary: Sequence[str]) -> torch.Tensor:
    """Each word's index in `vocabulary`, -1 where it is missing (or None)."""
    index = {word: i for i, word in enumerate(vocabulary)}
    return torch.tensor([index.get(w, -1) if w is not None else -1 for w in words])


def predict_with_true_names(
    predictor: Predictor,
    dataset: Dataset,
    queries: Sequence[QueryRecord],
    *,
    progress: bool = True,
    rule: AnswerRule | None = None,
) -> list[QueryResult]:
    """`predict_with_model` with every candidate named by the object it boxes (`TrueNames`).

    The upper bound of naming: what the pointer would reach if the detector's category and
    colour of each object it found were right, with everything else (boxes, depths, the
    pointer's weights, the answer rule) as it is. The gap to `predict_with_model` is what the
    model's misnaming costs. The predictor's feature cache is cleared before and after, so no
    image's candidates cross between the two.
    """
    model = predictor.model
    by_image = _by_image(queries)
    results: dict[str, QueryResult] = {}
    predictor.clear_cache()
    try:
        with tqdm(total=len(queries), disable=not progress, desc="eval (true names)") as bar:
            for image_id, group in by_image.items():
                model.rename_candidates = TrueNames(dataset.image(image_id), model.config)
                for result in predict_with_model(predictor, dataset, group, progress=False,
                                                 rule=rule):  # fmt: skip
                    results[result.query.query_id] = result
                bar.update(len(group))
    finally:
        model.rename_candidates = None
        predictor.clear_cache()
    return [results[q.query_id] for q in queries]


def load_predictor(checkpoint: Path, device: str = "cpu", dtype: str | None = None) -> Predictor:
    """A Predictor for a model checkpoint.

    The run seed stored in the checkpoint is set before the model is rebuilt, so that parts
    that checkpoints reference instead of storing (the randomly initialised "tiny" LLM) come
    out as in training.
    """
    _, extra = read_checkpoint_meta(checkpoint)
    torch.manual_seed(int(extra.get("seed", 0)))
    return Predictor(load_checkpoint(checkpoint), device=device, dtype=dtype, cache_size=2)
