"""Single-target captions: referring expressions verified to denote exactly one object.

`RelationJudge` decides the spatial relations with safety margins (True, False or None for
borderline), and `CaptionBuilder` keeps a caption only when exactly one candidate is clearly in
the relation and none is borderline. The negative and multi-target builders (`extra_queries`)
reuse a CaptionBuilder's anchors and judge.
"""

from __future__ import annotations

import numpy as np

from llmi3d_core.data.format import ImageRecord, ObjectRecord
from llmi3d_core.data.synth.query_config import QueryConfig
from llmi3d_core.data.synth.query_text import (
    CARRIERS,
    RELATION_WORDS,
    Desc,
    descriptions,
    unique_description,
    with_carrier,
)

RELATIONS = ("none", "left_of", "right_of", "behind", "between", "nearest", "farthest", "largest")
# Sampling weights of the caption relations (tried in a random order drawn with these weights).
_RELATION_WEIGHTS = np.array([0.22, 0.14, 0.14, 0.1, 0.1, 0.12, 0.1, 0.08])


def _distance(obj: ObjectRecord) -> float:
    return float(np.linalg.norm(obj.center_cam))


def _volume(obj: ObjectRecord) -> float:
    return float(np.prod(obj.dimensions))


def _x_overlap(a: ObjectRecord, b: ObjectRecord) -> float:
    """Overlap in px of two objects' tight boxes along x (negative: the gap)."""
    return float(
        min(a.bbox2D_tight[2], b.bbox2D_tight[2]) - max(a.bbox2D_tight[0], b.bbox2D_tight[0])
    )


class RelationJudge:
    """Three-valued relation tests with margins: True (clearly), False (clearly not), None.

    Each test asks whether candidate `c` is in the relation to anchor `a` (and `b`).
    """

    def __init__(self, image: ImageRecord, config: QueryConfig) -> None:
        self.margin_px = config.lateral_margin * image.width
        self.config = config

    def depth_margin(self, distance: float) -> float:
        """The depth margin (m) at this distance: absolute or relative, whichever is larger."""
        return max(self.config.depth_margin_m, self.config.depth_margin_rel * distance)

    def left_of(self, c: ObjectRecord, a: ObjectRecord) -> bool | None:
        """`c` left of `a`: image columns of the projected 3D centres."""
        du = float(a.center_2D[0] - c.center_2D[0])
        return True if du > self.margin_px else False if du < -self.margin_px else None

    def right_of(self, c: ObjectRecord, a: ObjectRecord) -> bool | None:
        """`c` right of `a`: image columns of the projected 3D centres."""
        du = float(c.center_2D[0] - a.center_2D[0])
        return True if du > self.margin_px else False if du < -self.margin_px else None

    def behind(self, c: ObjectRecord, a: ObjectRecord) -> bool | None:
        """`c` behind `a`: farther from the camera, their 2D boxes overlapping in x."""
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
        """`c` between `a` and `b`: its column strictly between theirs."""
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
        self.judge = RelationJudge(image, config)
        self.anchors = [
            (o, d)
            for o in self.objects
            if o.object_id in self.allowed_ids and o.visibility >= config.min_anchor_visibility
            for d in [unique_description(o, self.objects)]
            if d is not None
        ]

    def _target_descs(self, target: ObjectRecord) -> list[Desc]:
        """Descriptions for a relational target, ambiguous ones (that need the relation) first."""
        descs = descriptions(target)[:2]
        ambiguous = [d for d in descs if sum(d.matches(o) for o in self.objects) >= 2]
        return ambiguous + [d for d in descs if d not in ambiguous]

    def candidates(self, desc: Desc, exclude: tuple[ObjectRecord, ...]) -> list[ObjectRecord]:
        """Objects of the image matching `desc`, except `exclude` (the anchors)."""
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
        order: list[int] = [int(k) for k in self.rng.permutation(len(self.anchors))]
        for desc in self._target_descs(target):
            for k in order:
                anchor, anchor_desc = self.anchors[int(k)]
                if anchor is target:
                    continue
                candidates = self.candidates(desc, (anchor,))
                chosen = _unique_yes([(c, test(c, anchor)) for c in candidates])
                if chosen is target:
                    text = f"{desc.phrase()} {RELATION_WORDS[relation]} {anchor_desc.phrase()}"
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
                candidates = self.candidates(desc, (a, b))
                chosen = _unique_yes([(c, self.judge.between(c, a, b)) for c in candidates])
                if chosen is target:
                    text = f"{desc.phrase()} between {a_desc.phrase()} and {b_desc.phrase()}"
                    return text, [a.object_id, b.object_id]
        return None

    def _superlative(self, target: ObjectRecord, word: str) -> tuple[str, list[str]] | None:
        for desc in descriptions(target)[:2]:
            candidates = self.candidates(desc, ())
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
