"""Queries over one image: captions, common-sense questions, box/point prompts; 0, 1 or n targets.

Captions are referring expressions over the image's ground truth:

    DESC      = "the [small|large] [COLOUR] CATEGORY"
    caption   = DESC                                  relation "none"
              | DESC "to the left of" DESC            "left_of"   (image column of 3D centres)
              | DESC "to the right of" DESC           "right_of"
              | DESC "behind" DESC                    "behind"    (farther, 2D boxes overlap in x)
              | DESC "between" DESC "and" DESC        "between"   (column strictly between)
              | "the nearest|farthest|largest" [COLOUR] CATEGORY  (distance of the box centre
                                                                   from the camera; volume L W H)

wrapped in a few carrier phrases ("Find ...", "Where is ...?"). Anchors are described so that
they alone match their DESC; candidates are the other objects matching the target's DESC.
A caption is kept only if, with safety margins (a few % of the image width, 0.5 m in depth,
30 % in volume), exactly one candidate satisfies the relation and no candidate is borderline —
so a plain, margin-free reading of the text over the stored ground truth also picks exactly one
object (test/core/data/test_synth.py checks this with its own parser).

Questions need common sense (NEEDS: "I want to read but it is too dark" -> lamp); one is asked
only when exactly one object in the image serves the need. Prompts give the target's 2D box
(jittered) or a point on its visible pixels. Novel-category objects are never targets or anchors
of training queries, and no training query names a novel category (negatives included).

Negative queries (no target: the right answer is "not here"; `QueryConfig.negatives_per_image`)
read like the positive ones, in the same carriers:

    "absent"          DESC of a category with no object in the image (one that fits the scene)
    "wrong_color"     "the COLOUR CATEGORY": the category is there, never in that colour
    "wrong_size"      "the small|large CATEGORY": every object of the category has the other size
                      word (a "medium" one would be borderline, so it blocks the query)
    "wrong_relation"  DESC "to the left of|to the right of|behind" DESC, or "between": objects
                      of the category are there, and every one is judged clearly NOT in the
                      relation (the same margins as positive captions; none is borderline)
    question          a need of one category (NEEDS) that no object in the image serves

Multi-target captions (several targets, every object the phrase denotes;
`QueryConfig.multi_target_per_image`), PLURAL = "the [small|large] [COLOUR] CATEGORY-plural":

    "all"                  "all" PLURAL | "every [small|large] [COLOUR] CATEGORY"
    "left_half|right_half" PLURAL "on the left|right": projected centres in that half of the
                           image, none within the lateral margin of the middle
    "left_of|right_of"     PLURAL "to the left|right of" DESC (an anchor), none borderline

with at least two targets, each visible enough to be a target. Both kinds are drawn after the
single-target queries, and only when their counts are > 0, so datasets made with the default
counts (0) are the same, byte for byte, as before the kinds existed.

The words are in `query_text`, counts and margins in `query_config`, the single-target captions
and the relation judging that verifies them in `captions`, negatives and multi-target captions in
`extra_queries`; `make_queries` draws them all for one image, in a fixed order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmi3d_core.data.format import ImageRecord, ObjectRecord, QueryRecord
from llmi3d_core.data.synth.captions import CaptionBuilder
from llmi3d_core.data.synth.extra_queries import ExtraQuery, MultiTargetBuilder, NegativeBuilder
from llmi3d_core.data.synth.query_config import QueryConfig
from llmi3d_core.data.synth.query_text import BOX_TEXTS, NEEDS, POINT_TEXTS

# A single-target query before it becomes a QueryRecord: (type, text, target, extra keys; the
# prompt arrays ride in the extras as "box_prompt" / "point_prompt").
_SingleQuery = tuple[str, str, ObjectRecord, dict[str, Any]]


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _eligible_targets(allowed: list[ObjectRecord], config: QueryConfig) -> list[ObjectRecord]:
    """The allowed objects visible, untruncated and tall enough to be a query's target."""
    return [
        o
        for o in allowed
        if o.visibility >= config.min_target_visibility
        and o.truncation <= config.max_target_truncation
        and o.bbox2D_tight[3] - o.bbox2D_tight[1] >= config.min_target_height_px
    ]


def _captions(
    builder: CaptionBuilder, order: list[ObjectRecord], config: QueryConfig
) -> list[_SingleQuery]:
    """Up to `captions_per_image` verified captions, one per target, targets in `order`."""
    made: list[_SingleQuery] = []
    for target in order:
        if len(made) >= config.captions_per_image:
            break
        found = builder.caption(target)
        if found is not None:
            text, relation, anchors = found
            made.append(
                ("caption", text, target, {"relation": relation, "anchor_object_ids": anchors})
            )
    return made


def _questions(
    image: ImageRecord,
    eligible: list[ObjectRecord],
    config: QueryConfig,
    rng: np.random.Generator,
) -> list[_SingleQuery]:
    """Up to `questions_per_image` needs (in random order) that exactly one object serves."""
    made: list[_SingleQuery] = []
    for k in rng.permutation(len(NEEDS)):
        if len(made) >= config.questions_per_image:
            break
        need = NEEDS[int(k)]
        serving = [o for o in image.objects if o.category_name in need.categories]
        if len(serving) == 1 and serving[0] in eligible:
            text = need.texts[int(rng.integers(len(need.texts)))]
            made.append(("question", text, serving[0], {"need": need.key}))
    return made


def _box_prompts(
    image: ImageRecord,
    order: list[ObjectRecord],
    config: QueryConfig,
    rng: np.random.Generator,
) -> list[_SingleQuery]:
    """Up to `box_prompts_per_image` jittered tight boxes that still single out their target."""
    made: list[_SingleQuery] = []
    for target in order:
        if len(made) >= config.box_prompts_per_image:
            break
        box = target.bbox2D_tight.copy()
        size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
        box = box + rng.uniform(-config.box_jitter, config.box_jitter, 4) * size
        box = np.clip(box, -0.5, [image.width - 0.5, image.height - 0.5] * 2)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        ious = {o.object_id: _box_iou(box, o.bbox2D_tight) for o in image.objects}
        if ious[target.object_id] < 0.7 or any(
            v >= 0.5 for oid, v in ious.items() if oid != target.object_id
        ):
            continue
        text = BOX_TEXTS[int(rng.integers(len(BOX_TEXTS)))]
        made.append(("box_prompt", text, target, {"box_prompt": box}))
    return made


def _point_prompts(
    order: list[ObjectRecord],
    points: dict[str, np.ndarray],
    config: QueryConfig,
    rng: np.random.Generator,
) -> list[_SingleQuery]:
    """Up to `point_prompts_per_image` visible pixels of targets, taken in reverse `order`."""
    made: list[_SingleQuery] = []
    for target in order[::-1]:
        if len(made) >= config.point_prompts_per_image:
            break
        candidates = points.get(target.object_id)
        if candidates is None or len(candidates) == 0:
            continue
        point = np.asarray(candidates[int(rng.integers(len(candidates)))], dtype=np.float64)
        text = POINT_TEXTS[int(rng.integers(len(POINT_TEXTS)))]
        made.append(("point_prompt", text, target, {"point_prompt": point}))
    return made


def _extra_queries(
    builder: CaptionBuilder,
    eligible: list[ObjectRecord],
    unnameable: frozenset[str],
    config: QueryConfig,
) -> list[ExtraQuery]:
    """Multi-target captions, then negatives, each kind only when its count is > 0."""
    extras: list[ExtraQuery] = []
    used: set[str] = set()
    if config.multi_target_per_image > 0:
        multi = MultiTargetBuilder(builder, eligible)
        for _ in range(config.multi_target_per_image):
            query = multi.multi(used)
            if query is None:
                break
            extras.append(query)
    if config.negatives_per_image > 0:
        negatives = NegativeBuilder(builder, unnameable)
        for _ in range(config.negatives_per_image):
            query = negatives.negative(used)
            if query is None:
                break
            extras.append(query)
    return extras


def _single_target_record(
    made: _SingleQuery, index: int, image: ImageRecord, split: str, novel: frozenset[str]
) -> QueryRecord:
    qtype, text, target, made_extra = made
    fields: dict[str, Any] = dict(made_extra)
    box_prompt: np.ndarray | None = fields.pop("box_prompt", None)
    point_prompt: np.ndarray | None = fields.pop("point_prompt", None)
    return QueryRecord(
        query_id=f"{image.image_id}_q{index}",
        image_id=image.image_id,
        split=split,
        type=qtype,
        text=text,
        answer=target.category_name,
        target_object_id=target.object_id,
        box_prompt=box_prompt,
        point_prompt=point_prompt,
        novel_category=target.category_name in novel,
        camera_group=image.camera_group,
        extra=fields,
    )


def _extra_record(
    query: ExtraQuery, index: int, image: ImageRecord, split: str, novel: frozenset[str]
) -> QueryRecord:
    return QueryRecord(
        query_id=f"{image.image_id}_q{index}",
        image_id=image.image_id,
        split=split,
        type=query.type,
        text=query.text,
        answer=query.answer,
        novel_category=query.answer in novel,
        camera_group=image.camera_group,
        extra=dict(query.extra),
        target_object_ids=tuple(o.object_id for o in query.targets),
    )


def make_queries(
    image: ImageRecord,
    points: dict[str, np.ndarray],
    split: str,
    novel: frozenset[str],
    rng: np.random.Generator,
    *,
    config: QueryConfig | None = None,
) -> list[QueryRecord]:
    """All queries of one image.

    Args:
        image: the image record with its final objects.
        points: object_id -> (k, 2) [u, v] visible pixels (point prompts come from here).
        split: the image's split; in "train", novel-category objects are never targets/anchors
            and novel categories are never named.
        novel: the held-out category names.
        rng: the image's random generator.
        config: counts and margins (defaults: QueryConfig()).

    Returns:
        QueryRecords with ids "<image_id>_q<k>", in a fixed order (captions, questions, box
        prompts, point prompts, multi-target captions, negative queries). The last two kinds
        draw from `rng` only when their counts are > 0, after everything else, so turning them
        on leaves the other queries of the image unchanged.
    """
    config = config or QueryConfig()
    # The steps below draw from `rng` in this order; changing it changes every dataset.
    allowed = [o for o in image.objects if split != "train" or o.category_name not in novel]
    eligible = _eligible_targets(allowed, config)
    order = [eligible[int(k)] for k in rng.permutation(len(eligible))]
    builder = CaptionBuilder(image, allowed, config, rng)
    made = _captions(builder, order, config)
    made += _questions(image, eligible, config, rng)
    made += _box_prompts(image, order, config, rng)
    made += _point_prompts(order, points, config, rng)
    unnameable = novel if split == "train" else frozenset()
    extras = _extra_queries(builder, eligible, unnameable, config)
    out = [_single_target_record(m, i, image, split, novel) for i, m in enumerate(made)]
    out += [_extra_record(q, i, image, split, novel) for i, q in enumerate(extras, start=len(made))]
    return out
