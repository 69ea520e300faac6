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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from llmi3d_core.data.format import ImageRecord, ObjectRecord, QueryRecord
from llmi3d_core.data.synth_shapes import CATEGORIES, COLORS
from llmi3d_core.errors import ConfigError

SIZE_WORDS = ("small", "large")
RELATIONS = ("none", "left_of", "right_of", "behind", "between", "nearest", "farthest", "largest")
# Sampling weights of the caption relations (tried in a random order drawn with these weights).
_RELATION_WEIGHTS = np.array([0.22, 0.14, 0.14, 0.1, 0.1, 0.12, 0.1, 0.08])

CARRIERS = ("{}", "find {}", "where is {}?", "locate {}", "show me {}", "give me the 3D box of {}")
# Carriers of plural phrases ("the chairs on the left"), and of "every CATEGORY" (singular verb).
PLURAL_CARRIERS = (
    "{}",
    "find {}",
    "where are {}?",
    "locate {}",
    "show me {}",
    "give me the 3D boxes of {}",
)
EVERY_CARRIERS = ("{}", "find {}", "locate {}", "show me {}")

NEGATIVE_KINDS = ("absent", "wrong_color", "wrong_size", "wrong_relation", "question")
_NEGATIVE_WEIGHTS = np.array([0.3, 0.2, 0.1, 0.2, 0.2])
MULTI_RELATIONS = ("all", "left_half", "right_half", "left_of", "right_of")
_MULTI_WEIGHTS = np.array([0.4, 0.15, 0.15, 0.15, 0.15])
_IRREGULAR_PLURALS = {"person": "people", "bookshelf": "bookshelves"}


def plural(category: str) -> str:
    """English plural of a category name: "chair" -> "chairs", "bus" -> "buses"."""
    if category in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[category]
    if category.endswith(("s", "sh", "ch", "x")):
        return category + "es"
    return category + "s"


@dataclass(frozen=True)
class Need:
    """A need and the categories that meet it (common-sense questions)."""

    key: str
    texts: tuple[str, ...]
    categories: tuple[str, ...]


NEEDS: tuple[Need, ...] = (
    Need("reading in the dark", ("I want to read but it is too dark. What should I use?",
                                 "It is getting dark and I want to read. What can help?"),
         ("lamp",)),
    Need("sitting", ("My legs are tired. Where can I sit?", "Where could I sit down?"),
         ("chair", "sofa", "stool", "bench")),
    Need("sleeping", ("I am exhausted and want to lie down. What can I use?",), ("bed",)),
    Need("eating", ("Where can I put my plate to have dinner?",), ("table",)),
    Need("working", ("I need to write a report. Where can I work?",), ("desk",)),
    Need("watching the news", ("I want to watch the news. What should I turn on?",),
         ("television",)),
    Need("cold drinks", ("Where can I keep my drinks cold?",), ("refrigerator",)),
    Need("rubbish", ("Where can I throw away this wrapper?",), ("bin",)),
    Need("storing books", ("Where can I put away my books?",), ("bookshelf",)),
    Need("storing things", ("Where can I store these dishes out of sight?",), ("cabinet",)),
    Need("dirty clothes", ("My clothes are dirty. What do I need?",), ("washing machine",)),
    Need("cooling down", ("It is hot in here. What could cool me down?",), ("fan",)),
    Need("watering", ("Which thing here needs to be watered?",), ("plant",)),
    Need("driving", ("I need to drive my family to the station. What can I use?",), ("car",)),
    Need("moving furniture", ("What could carry a whole load of furniture?",), ("truck",)),
    Need("public transport", ("What could take thirty people across town?",), ("bus",)),
    Need("cycling", ("I want to ride somewhere without using fuel. What can I use?",),
         ("bicycle",)),
    Need("motorbike", ("What has two wheels and an engine?",), ("motorcycle",)),
    Need("asking the way", ("Who could I ask for directions?",), ("person",)),
    Need("crossing", ("What tells me when I may cross the street?",), ("traffic light",)),
    Need("fire", ("Where would firefighters connect their hose?",), ("fire hydrant",)),
    Need("road works", ("What marks a spot that cars should avoid?",), ("traffic cone",)),
    Need("resting outside", ("Where can I sit while I wait outside?",), ("bench",)),
)  # fmt: skip

BOX_TEXTS = (
    "What is the object in the box?",
    "Find the object inside the given 2D box.",
    "What is in the marked region, and where is it in 3D?",
)
POINT_TEXTS = (
    "What is the object at the marked point?",
    "Find the object under the given point.",
    "What is at this point, and where is it in 3D?",
)


@dataclass(frozen=True)
class QueryConfig:
    """How many queries of each kind an image gets, and the safety margins of captions.

    Attributes:
        captions_per_image: referring expressions per image (fewer when none can be verified).
        questions_per_image: common-sense questions per image.
        box_prompts_per_image: 2D-box prompts per image.
        point_prompts_per_image: 2D-point prompts per image.
        min_target_visibility: targets must be at least this visible.
        max_target_truncation: and at most this truncated.
        min_target_height_px: and at least this tall in the image (tight box).
        min_anchor_visibility: anchors of relations must be at least this visible.
        lateral_margin: left/right/between margin, a fraction of the image width.
        depth_margin_m: nearest/farthest/behind margin in metres ...
        depth_margin_rel: ... or this fraction of the distance, whichever is larger.
        volume_ratio: "largest" needs this volume ratio to the runner-up.
        box_jitter: relative jitter of box prompts (of the box size).
        negatives_per_image: negative queries per image (no target; captions and questions).
        multi_target_per_image: multi-target captions per image (fewer when none is verified).

    Raises:
        ConfigError: a negative count.
    """

    captions_per_image: int = 3
    questions_per_image: int = 1
    box_prompts_per_image: int = 1
    point_prompts_per_image: int = 1
    min_target_visibility: float = 0.3
    max_target_truncation: float = 0.5
    min_target_height_px: float = 14.0
    min_anchor_visibility: float = 0.2
    lateral_margin: float = 0.03
    depth_margin_m: float = 0.5
    depth_margin_rel: float = 0.1
    volume_ratio: float = 1.3
    box_jitter: float = 0.04
    negatives_per_image: int = 0
    multi_target_per_image: int = 0

    def __post_init__(self) -> None:
        for name in (
            "captions_per_image",
            "questions_per_image",
            "box_prompts_per_image",
            "point_prompts_per_image",
            "negatives_per_image",
            "multi_target_per_image",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"QueryConfig.{name} must be an integer >= 0, got {value!r}")


@dataclass(frozen=True)
class Desc:
    """A description "the [size] [colour] category"; None parts are left out."""

    category: str
    color: str | None = None
    size: str | None = None

    def words(self) -> str:
        """The words after "the"."""
        return " ".join(w for w in (self.size, self.color, self.category) if w)

    def phrase(self) -> str:
        """The noun phrase, e.g. "the small red chair"."""
        return f"the {self.words()}"

    def plural_phrase(self) -> str:
        """The plural noun phrase, e.g. "the small red chairs"."""
        return " ".join(w for w in ("the", self.size, self.color, plural(self.category)) if w)

    def matches(self, obj: ObjectRecord) -> bool:
        """True when the object is of this category and has the given attributes."""
        return (
            obj.category_name == self.category
            and (self.color is None or obj.attributes.get("color") == self.color)
            and (self.size is None or obj.attributes.get("size") == self.size)
        )


def _distance(obj: ObjectRecord) -> float:
    return float(np.linalg.norm(obj.center_cam))


def _volume(obj: ObjectRecord) -> float:
    return float(np.prod(obj.dimensions))


def _x_overlap(a: ObjectRecord, b: ObjectRecord) -> float:
    """Overlap in px of two objects' tight boxes along x (negative: the gap)."""
    return float(
        min(a.bbox2D_tight[2], b.bbox2D_tight[2]) - max(a.bbox2D_tight[0], b.bbox2D_tight[0])
    )


class _Judge:
    """Three-valued relation tests with margins: True (clearly), False (clearly not), None."""

    def __init__(self, image: ImageRecord, config: QueryConfig) -> None:
        self.margin_px = config.lateral_margin * image.width
        self.config = config

    def depth_margin(self, distance: float) -> float:
        return max(self.config.depth_margin_m, self.config.depth_margin_rel * distance)

    def left_of(self, c: ObjectRecord, a: ObjectRecord) -> bool | None:
        du = float(a.center_2D[0] - c.center_2D[0])
        return True if du > self.margin_px else False if du < -self.margin_px else None

    def right_of(self, c: ObjectRecord, a: ObjectRecord) -> bool | None:
        du = float(c.center_2D[0] - a.center_2D[0])
        return True if du > self.margin_px else False if du < -self.margin_px else None

    def behind(self, c: ObjectRecord, a: ObjectRecord) -> bool | None:
        dd = _distance(c) - _distance(a)
        overlap = _x_overlap(c, a)
        narrow = min(c.bbox2D_tight[2] - c.bbox2D_tight[0], a.bbox2D_tight[2] - a.bbox2D_tight[0])
        margin = self.depth_margin(_distance(a))
        if dd > margin and overlap >= 0.3 * narrow:
            return True
        if dd < -margin or overlap < -2.0:
            return False
        return None

    def between(self, c: ObjectRecord, a: ObjectRecord, b: ObjectRecord) -> bool | None:
        lo, hi = sorted((float(a.center_2D[0]), float(b.center_2D[0])))
        u = float(c.center_2D[0])
        if lo + self.margin_px < u < hi - self.margin_px:
            return True
        if u < lo - self.margin_px or u > hi + self.margin_px:
            return False
        return None


def _unique_yes(results: list[tuple[ObjectRecord, bool | None]]) -> ObjectRecord | None:
    """The one candidate judged True, if exactly one is and none is borderline."""
    yes = [obj for obj, verdict in results if verdict is True]
    unclear = [obj for obj, verdict in results if verdict is None]
    return yes[0] if len(yes) == 1 and not unclear else None


def _descriptions(obj: ObjectRecord) -> list[Desc]:
    """Descriptions of an object, simplest first."""
    color = obj.attributes.get("color")
    size = obj.attributes.get("size")
    out = [Desc(obj.category_name)]
    if color:
        out.append(Desc(obj.category_name, color=color))
    if size in SIZE_WORDS:
        out.append(Desc(obj.category_name, size=size))
        if color:
            out.append(Desc(obj.category_name, color=color, size=size))
    return out


def unique_description(obj: ObjectRecord, objects: list[ObjectRecord]) -> Desc | None:
    """The simplest description that only `obj` matches among `objects`, or None."""
    for desc in _descriptions(obj):
        if [o for o in objects if desc.matches(o)] == [obj]:
            return desc
    return None


class CaptionBuilder:
    """Builds verified captions for one image.

    Args:
        image: the image record (final ground truth).
        allowed: objects that may be targets or anchors (e.g. no novel categories in train).
        config: margins and thresholds.
        rng: random generator of the image.
    """

    def __init__(
        self,
        image: ImageRecord,
        allowed: list[ObjectRecord],
        config: QueryConfig,
        rng: np.random.Generator,
    ) -> None:
        self.image = image
        self.objects = image.objects
        self.allowed_ids = {o.object_id for o in allowed}
        self.config = config
        self.rng = rng
        self.judge = _Judge(image, config)
        self.anchors = [
            (o, d)
            for o in self.objects
            if o.object_id in self.allowed_ids and o.visibility >= config.min_anchor_visibility
            for d in [unique_description(o, self.objects)]
            if d is not None
        ]

    def _target_descs(self, target: ObjectRecord) -> list[Desc]:
        """Descriptions for a relational target, ambiguous ones (that need the relation) first."""
        descs = _descriptions(target)[:2]
        ambiguous = [d for d in descs if sum(d.matches(o) for o in self.objects) >= 2]
        return ambiguous + [d for d in descs if d not in ambiguous]

    def _candidates(self, desc: Desc, exclude: tuple[ObjectRecord, ...]) -> list[ObjectRecord]:
        ids = {o.object_id for o in exclude}
        return [o for o in self.objects if desc.matches(o) and o.object_id not in ids]

    def none(self, target: ObjectRecord) -> tuple[str, list[str]] | None:
        """Caption by attributes alone: (phrase, no anchors) or None."""
        desc = unique_description(target, self.objects)
        if desc is None:
            return None
        if desc.color is None and self.rng.random() < 0.3:  # sometimes name the colour anyway
            coloured = Desc(desc.category, color=target.attributes.get("color"), size=desc.size)
            if coloured.color and [o for o in self.objects if coloured.matches(o)] == [target]:
                desc = coloured
        return desc.phrase(), []

    def _binary(self, target: ObjectRecord, relation: str) -> tuple[str, list[str]] | None:
        test = getattr(self.judge, relation)
        word = {"left_of": "to the left of", "right_of": "to the right of", "behind": "behind"}
        order: list[int] = [int(k) for k in self.rng.permutation(len(self.anchors))]
        for desc in self._target_descs(target):
            for k in order:
                anchor, anchor_desc = self.anchors[int(k)]
                if anchor is target:
                    continue
                candidates = self._candidates(desc, (anchor,))
                chosen = _unique_yes([(c, test(c, anchor)) for c in candidates])
                if chosen is target:
                    text = f"{desc.phrase()} {word[relation]} {anchor_desc.phrase()}"
                    return text, [anchor.object_id]
        return None

    def left_of(self, target: ObjectRecord) -> tuple[str, list[str]] | None:
        """Caption "... to the left of <anchor>": (phrase, [anchor id]) or None."""
        return self._binary(target, "left_of")

    def right_of(self, target: ObjectRecord) -> tuple[str, list[str]] | None:
        """Caption "... to the right of <anchor>": (phrase, [anchor id]) or None."""
        return self._binary(target, "right_of")

    def behind(self, target: ObjectRecord) -> tuple[str, list[str]] | None:
        """Caption "... behind <anchor>": (phrase, [anchor id]) or None."""
        return self._binary(target, "behind")

    def between(self, target: ObjectRecord) -> tuple[str, list[str]] | None:
        """Caption "... between <a> and <b>": (phrase, [a id, b id]) or None."""
        pairs = [
            (i, j)
            for i in range(len(self.anchors))
            for j in range(i + 1, len(self.anchors))
            if target not in (self.anchors[i][0], self.anchors[j][0])
        ]
        if not pairs:
            return None
        for p in self.rng.permutation(len(pairs)):
            i, j = pairs[int(p)]
            (a, a_desc), (b, b_desc) = self.anchors[i], self.anchors[j]
            for desc in self._target_descs(target):
                candidates = self._candidates(desc, (a, b))
                chosen = _unique_yes([(c, self.judge.between(c, a, b)) for c in candidates])
                if chosen is target:
                    text = f"{desc.phrase()} between {a_desc.phrase()} and {b_desc.phrase()}"
                    return text, [a.object_id, b.object_id]
        return None

    def _superlative(self, target: ObjectRecord, word: str) -> tuple[str, list[str]] | None:
        for desc in _descriptions(target)[:2]:
            candidates = self._candidates(desc, ())
            if len(candidates) < 2:
                continue
            if word == "largest":
                ranked = sorted(candidates, key=_volume, reverse=True)
                clear = _volume(ranked[0]) >= self.config.volume_ratio * _volume(ranked[1])
            else:
                ranked = sorted(candidates, key=_distance, reverse=word == "farthest")
                gap = abs(_distance(ranked[1]) - _distance(ranked[0]))
                clear = gap >= self.judge.depth_margin(_distance(ranked[0]))
            if clear and ranked[0] is target:
                return f"the {word} {desc.words()}", []
        return None

    def nearest(self, target: ObjectRecord) -> tuple[str, list[str]] | None:
        """Caption "the nearest ...": (phrase, []) or None."""
        return self._superlative(target, "nearest")

    def farthest(self, target: ObjectRecord) -> tuple[str, list[str]] | None:
        """Caption "the farthest ...": (phrase, []) or None."""
        return self._superlative(target, "farthest")

    def largest(self, target: ObjectRecord) -> tuple[str, list[str]] | None:
        """Caption "the largest ...": (phrase, []) or None."""
        return self._superlative(target, "largest")

    def caption(self, target: ObjectRecord) -> tuple[str, str, list[str]] | None:
        """(text, relation, anchor ids) of a verified caption for `target`, or None."""
        weights = _RELATION_WEIGHTS / _RELATION_WEIGHTS.sum()
        order = self.rng.choice(len(RELATIONS), size=len(RELATIONS), replace=False, p=weights)
        for k in order:
            relation = RELATIONS[int(k)]
            found = getattr(self, relation)(target)
            if found is not None:
                phrase, anchors = found
                return with_carrier(phrase, CARRIERS, self.rng), relation, anchors
        return None


def with_carrier(phrase: str, carriers: tuple[str, ...], rng: np.random.Generator) -> str:
    """Wrap a noun phrase in a random carrier: "Find the red chair.", "Where is the lamp?"."""
    carrier = carriers[int(rng.integers(len(carriers)))]
    text = carrier.format(phrase)
    text = text[0].upper() + text[1:]
    if not text.endswith("?"):
        text += "."
    return text


@dataclass
class ExtraQuery:
    """A negative or multi-target query before it becomes a QueryRecord.

    Attributes:
        type: "caption" or "question".
        text: the sentence.
        answer: the category named (for a negative: the one asked for and not there).
        targets: the objects denoted ([] for a negative), in image order.
        extra: "relation" / "negative" / "need" / "anchor_object_ids" keys for the record.
    """

    type: str
    text: str
    answer: str
    targets: list[ObjectRecord]
    extra: dict[str, Any]


_CATEGORY_BY_NAME = {c.name: c for c in CATEGORIES}


class NegativeBuilder:
    """Builds verified negative queries (no object answers them) for one image.

    Args:
        captions: the image's CaptionBuilder (its anchors, margins and random generator).
        unnameable: categories no query of this image may name (novel ones in "train").
    """

    def __init__(self, captions: CaptionBuilder, unnameable: frozenset[str]) -> None:
        self.captions = captions
        self.image = captions.image
        self.rng = captions.rng
        self.unnameable = unnameable
        self.present = sorted({o.category_name for o in self.image.objects})
        # Categories with objects here that a query may name (their objects are all allowed).
        self.nameable_present = [c for c in self.present if c not in unnameable]

    def _scene_categories(self) -> list[str]:
        """Nameable categories of the image's scene kind that have no object in the image."""
        fitting = [c.name for c in CATEGORIES if self.image.scene in c.scenes]
        names = fitting or [c.name for c in CATEGORIES]
        return [n for n in names if n not in self.present and n not in self.unnameable]

    def _of(self, category: str) -> list[ObjectRecord]:
        return [o for o in self.image.objects if o.category_name == category]

    def _pick(self, options: list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def absent(self) -> tuple[str, str, list[str], str] | None:
        """A category that fits the scene and has no object here (sometimes with a colour)."""
        options = self._scene_categories()
        if not options:
            return None
        name = self._pick(options)
        category = _CATEGORY_BY_NAME.get(name)
        color = None
        if category is not None and self.rng.random() < 0.3:
            color = self._pick(list(category.colors))
        return Desc(name, color=color).phrase(), "none", [], name

    def wrong_color(self) -> tuple[str, str, list[str], str] | None:
        """A present category in a colour none of its objects has (one it could have)."""
        options: list[tuple[str, str]] = []
        for name in self.nameable_present:
            seen = {o.attributes.get("color") for o in self._of(name)}
            category = _CATEGORY_BY_NAME.get(name)
            palette = category.colors if category is not None else tuple(COLORS)
            options += [(name, c) for c in palette if c not in seen]
        if not options:
            return None
        name, color = options[int(self.rng.integers(len(options)))]
        return Desc(name, color=color).phrase(), "none", [], name

    def wrong_size(self) -> tuple[str, str, list[str], str] | None:
        """A present category whose objects are all "large" asked as "small" (or the reverse)."""
        options: list[tuple[str, str]] = []
        for name in self.nameable_present:
            sizes = {o.attributes.get("size") for o in self._of(name)}
            if sizes == {"large"}:
                options.append((name, "small"))
            elif sizes == {"small"}:
                options.append((name, "large"))
        if not options:
            return None
        name, size = options[int(self.rng.integers(len(options)))]
        return Desc(name, size=size).phrase(), "none", [], name

    def wrong_relation(self) -> tuple[str, str, list[str], str] | None:
        """DESC in a relation to anchors that every object of DESC clearly does not satisfy."""
        builder, judge = self.captions, self.captions.judge
        anchors = builder.anchors
        if not anchors or not self.nameable_present:
            return None
        word = {"left_of": "to the left of", "right_of": "to the right of", "behind": "behind"}
        relations = ("left_of", "right_of", "behind", "between")
        for r in self.rng.permutation(len(relations)):
            relation = relations[int(r)]
            for c in self.rng.permutation(len(self.nameable_present)):
                desc = Desc(self.nameable_present[int(c)])
                for a in self.rng.permutation(len(anchors)):
                    anchor, anchor_desc = anchors[int(a)]
                    if relation == "between":
                        pairs = [anchors[int(b)] for b in range(len(anchors)) if int(b) != int(a)]
                        if not pairs:
                            continue
                        other, other_desc = pairs[int(self.rng.integers(len(pairs)))]
                        group: tuple[ObjectRecord, ...] = (anchor, other)
                        candidates = builder._candidates(desc, group)
                        verdicts = [judge.between(o, anchor, other) for o in candidates]
                        phrase = (
                            f"{desc.phrase()} between {anchor_desc.phrase()} and "
                            f"{other_desc.phrase()}"
                        )
                    else:
                        group = (anchor,)
                        candidates = builder._candidates(desc, group)
                        test = getattr(judge, relation)
                        verdicts = [test(o, anchor) for o in candidates]
                        phrase = f"{desc.phrase()} {word[relation]} {anchor_desc.phrase()}"
                    if candidates and all(v is False for v in verdicts):
                        return phrase, relation, [o.object_id for o in group], desc.category
        return None

    def question(self) -> ExtraQuery | None:
        """A one-category need (fitting the scene) that no object in the image serves."""
        options = [
            need
            for need in NEEDS
            if len(need.categories) == 1
            and need.categories[0] not in self.present
            and need.categories[0] not in self.unnameable
            and self.image.scene in getattr(_CATEGORY_BY_NAME.get(need.categories[0]), "scenes", ())
        ]
        if not options:
            return None
        need = options[int(self.rng.integers(len(options)))]
        text = need.texts[int(self.rng.integers(len(need.texts)))]
        return ExtraQuery(
            "question", text, need.categories[0], [], {"need": need.key, "negative": "absent"}
        )

    def negative(self, used: set[str]) -> ExtraQuery | None:
        """One negative query whose phrase is not in `used` (the kinds tried in random order)."""
        weights = _NEGATIVE_WEIGHTS / _NEGATIVE_WEIGHTS.sum()
        count = len(NEGATIVE_KINDS)
        for k in self.rng.choice(count, size=count, replace=False, p=weights):
            kind = NEGATIVE_KINDS[int(k)]
            if kind == "question":
                query = self.question()
                if query is not None and query.extra["need"] not in used:
                    used.add(query.extra["need"])
                    return query
                continue
            found = getattr(self, kind)()
            if found is None or found[0] in used:
                continue
            phrase, relation, anchors, category = found
            used.add(phrase)
            extra = {"relation": relation, "negative": kind, "anchor_object_ids": anchors}
            return ExtraQuery("caption", with_carrier(phrase, CARRIERS, self.rng), category, [],
                              extra)  # fmt: skip
        return None


class MultiTargetBuilder:
    """Builds verified multi-target captions ("all the chairs") for one image.

    Args:
        captions: the image's CaptionBuilder (its anchors, margins and random generator).
        eligible: objects that may be targets; every object a phrase denotes must be one.
    """

    def __init__(self, captions: CaptionBuilder, eligible: list[ObjectRecord]) -> None:
        self.captions = captions
        self.image = captions.image
        self.rng = captions.rng
        self.eligible_ids = {o.object_id for o in eligible}
        self.margin_px = captions.judge.margin_px
        descs: list[Desc] = []
        for obj in eligible:
            for desc in _descriptions(obj)[:3]:  # category, + colour, + size
                if desc not in descs:
                    descs.append(desc)
        self.descs = descs

    def _targets_ok(self, targets: list[ObjectRecord]) -> bool:
        return len(targets) >= 2 and all(o.object_id in self.eligible_ids for o in targets)

    def all(self, desc: Desc) -> tuple[str, list[ObjectRecord], list[str]] | None:
        """Every object matching DESC: "all the red chairs" or "every red chair"."""
        targets = [o for o in self.image.objects if desc.matches(o)]
        if not self._targets_ok(targets):
            return None
        if self.rng.random() < 0.3:
            return f"every {desc.words()}", targets, []
        return f"all {desc.plural_phrase()}", targets, []

    def _half(self, desc: Desc, side: str) -> tuple[str, list[ObjectRecord], list[str]] | None:
        matching = [o for o in self.image.objects if desc.matches(o)]
        middle = self.image.width / 2.0
        offsets = [float(o.center_2D[0]) - middle for o in matching]
        if any(abs(d) <= self.margin_px for d in offsets):
            return None  # one is near the middle: borderline
        targets = [o for o, d in zip(matching, offsets, strict=True) if (d < 0) == (side == "left")]
        if not self._targets_ok(targets):
            return None
        return f"{desc.plural_phrase()} on the {side}", targets, []

    def left_half(self, desc: Desc) -> tuple[str, list[ObjectRecord], list[str]] | None:
        """Objects matching DESC in the left half of the image: "the chairs on the left"."""
        return self._half(desc, "left")

    def right_half(self, desc: Desc) -> tuple[str, list[ObjectRecord], list[str]] | None:
        """Objects matching DESC in the right half of the image: "the chairs on the right"."""
        return self._half(desc, "right")

    def _of_anchor(
        self, desc: Desc, relation: str
    ) -> tuple[str, list[ObjectRecord], list[str]] | None:
        builder = self.captions
        test = getattr(builder.judge, relation)
        word = {"left_of": "to the left of", "right_of": "to the right of"}[relation]
        for k in self.rng.permutation(len(builder.anchors)):
            anchor, anchor_desc = builder.anchors[int(k)]
            candidates = builder._candidates(desc, (anchor,))
            verdicts = [test(o, anchor) for o in candidates]
            if any(v is None for v in verdicts):
                continue  # a borderline candidate
            targets = [o for o, v in zip(candidates, verdicts, strict=True) if v]
            if self._targets_ok(targets):
                phrase = f"{desc.plural_phrase()} {word} {anchor_desc.phrase()}"
                return phrase, targets, [anchor.object_id]
        return None

    def left_of(self, desc: Desc) -> tuple[str, list[ObjectRecord], list[str]] | None:
        """Objects matching DESC left of an anchor: "the chairs to the left of the lamp"."""
        return self._of_anchor(desc, "left_of")

    def right_of(self, desc: Desc) -> tuple[str, list[ObjectRecord], list[str]] | None:
        """Objects matching DESC right of an anchor: "the chairs to the right of the lamp"."""
        return self._of_anchor(desc, "right_of")

    def multi(self, used: set[str]) -> ExtraQuery | None:
        """One multi-target caption whose phrase is not in `used`, or None."""
        if not self.descs:
            return None
        weights = _MULTI_WEIGHTS / _MULTI_WEIGHTS.sum()
        count = len(MULTI_RELATIONS)
        for k in self.rng.choice(count, size=count, replace=False, p=weights):
            relation = MULTI_RELATIONS[int(k)]
            for d in self.rng.permutation(len(self.descs)):
                desc = self.descs[int(d)]
                found = getattr(self, relation)(desc)
                if found is None or found[0] in used:
                    continue
                phrase, targets, anchors = found
                used.add(phrase)
                carriers = EVERY_CARRIERS if phrase.startswith("every ") else PLURAL_CARRIERS
                extra = {"relation": relation, "anchor_object_ids": anchors}
                text = with_carrier(phrase, carriers, self.rng)
                return ExtraQuery("caption", text, desc.category, targets, extra)
        return None


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


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
    allowed = [o for o in image.objects if split != "train" or o.category_name not in novel]
    eligible = [
        o
        for o in allowed
        if o.visibility >= config.min_target_visibility
        and o.truncation <= config.max_target_truncation
        and o.bbox2D_tight[3] - o.bbox2D_tight[1] >= config.min_target_height_px
    ]
    made: list[tuple[str, str, ObjectRecord, dict[str, Any]]] = []
    order = [eligible[int(k)] for k in rng.permutation(len(eligible))]

    builder = CaptionBuilder(image, allowed, config, rng)
    captions = 0
    for target in order:
        if captions >= config.captions_per_image:
            break
        found = builder.caption(target)
        if found is not None:
            text, relation, anchors = found
            extra = {"relation": relation, "anchor_object_ids": anchors}
            made.append(("caption", text, target, extra))
            captions += 1

    questions = 0
    for k in rng.permutation(len(NEEDS)):
        if questions >= config.questions_per_image:
            break
        need = NEEDS[int(k)]
        serving = [o for o in image.objects if o.category_name in need.categories]
        if len(serving) == 1 and serving[0] in eligible:
            text = need.texts[int(rng.integers(len(need.texts)))]
            made.append(("question", text, serving[0], {"need": need.key}))
            questions += 1

    boxes = 0
    for target in order:
        if boxes >= config.box_prompts_per_image:
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
        boxes += 1

    point_count = 0
    for target in order[::-1]:
        if point_count >= config.point_prompts_per_image:
            break
        candidates = points.get(target.object_id)
        if candidates is None or len(candidates) == 0:
            continue
        point = np.asarray(candidates[int(rng.integers(len(candidates)))], dtype=np.float64)
        text = POINT_TEXTS[int(rng.integers(len(POINT_TEXTS)))]
        made.append(("point_prompt", text, target, {"point_prompt": point}))
        point_count += 1

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
        negatives = NegativeBuilder(builder, novel if split == "train" else frozenset())
        for _ in range(config.negatives_per_image):
            query = negatives.negative(used)
            if query is None:
                break
            extras.append(query)

    out = []
    for index, (qtype, text, target, made_extra) in enumerate(made):
        fields: dict[str, Any] = dict(made_extra)
        box_prompt: np.ndarray | None = fields.pop("box_prompt", None)
        point_prompt: np.ndarray | None = fields.pop("point_prompt", None)
        out.append(
            QueryRecord(
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
        )
    for index, query in enumerate(extras, start=len(made)):
        out.append(
            QueryRecord(
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
        )
    return out
