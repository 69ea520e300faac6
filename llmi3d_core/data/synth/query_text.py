"""The words of the synthetic queries: descriptions, carrier phrases, needs and prompt texts.

Everything a query's text is made of, and nothing about which object it may denote (that is the
judging in `captions` and `extra_queries`). `NEEDS` is the common-sense table: a need and the
categories that serve it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmi3d_core.data.format import ObjectRecord

SIZE_WORDS = ("small", "large")

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

# The words of the binary relations in captions ("the chair to the left of the lamp").
RELATION_WORDS = {"left_of": "to the left of", "right_of": "to the right of", "behind": "behind"}

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


def with_carrier(phrase: str, carriers: tuple[str, ...], rng: np.random.Generator) -> str:
    """Wrap a noun phrase in a random carrier: "Find the red chair.", "Where is the lamp?"."""
    carrier = carriers[int(rng.integers(len(carriers)))]
    text = carrier.format(phrase)
    text = text[0].upper() + text[1:]
    if not text.endswith("?"):
        text += "."
    return text


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


def descriptions(obj: ObjectRecord) -> list[Desc]:
    """Descriptions of an object, simplest first: category, + colour, + size, + both."""
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
    for desc in descriptions(obj):
        if [o for o in objects if desc.matches(o)] == [obj]:
            return desc
    return None
