"""Negative queries and multi-target captions, the kinds drawn after the single-target queries.

Both are verified with the single-target captions' anchors and margins (a `CaptionBuilder`):
a negative is asked only when no object answers it, a multi-target caption only when every object
it denotes is a clear target and none is borderline. See `queries` for the grammar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from llmi3d_core.data.format import ObjectRecord
from llmi3d_core.data.synth.captions import CaptionBuilder
from llmi3d_core.data.synth.query_text import (
    CARRIERS,
    EVERY_CARRIERS,
    NEEDS,
    PLURAL_CARRIERS,
    RELATION_WORDS,
    Desc,
    descriptions,
    with_carrier,
)
from llmi3d_core.data.synth.shapes import CATEGORIES, COLORS

NEGATIVE_KINDS = ("absent", "wrong_color", "wrong_size", "wrong_relation", "question")
_NEGATIVE_WEIGHTS = np.array([0.3, 0.2, 0.1, 0.2, 0.2])
MULTI_RELATIONS = ("all", "left_half", "right_half", "left_of", "right_of")
_MULTI_WEIGHTS = np.array([0.4, 0.15, 0.15, 0.15, 0.15])

_CATEGORY_BY_NAME = {c.name: c for c in CATEGORIES}


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
                        candidates = builder.candidates(desc, group)
                        verdicts = [judge.between(o, anchor, other) for o in candidates]
                        phrase = (
                            f"{desc.phrase()} between {anchor_desc.phrase()} and "
                            f"{other_desc.phrase()}"
                        )
                    else:
                        group = (anchor,)
                        candidates = builder.candidates(desc, group)
                        test = getattr(judge, relation)
                        verdicts = [test(o, anchor) for o in candidates]
                        words = RELATION_WORDS[relation]
                        phrase = f"{desc.phrase()} {words} {anchor_desc.phrase()}"
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
            for desc in descriptions(obj)[:3]:  # category, + colour, + size
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
        for k in self.rng.permutation(len(builder.anchors)):
            anchor, anchor_desc = builder.anchors[int(k)]
            candidates = builder.candidates(desc, (anchor,))
            verdicts = [test(o, anchor) for o in candidates]
            if any(v is None for v in verdicts):
                continue  # a borderline candidate
            targets = [o for o, v in zip(candidates, verdicts, strict=True) if v]
            if self._targets_ok(targets):
                phrase = f"{desc.plural_phrase()} {RELATION_WORDS[relation]} {anchor_desc.phrase()}"
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
