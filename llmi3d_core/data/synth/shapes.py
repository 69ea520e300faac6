"""IG3D-Synth object catalogue: categories with real-world size priors and multi-primitive meshes.

Each category is drawn as a handful of primitives (boxes, prisms standing in for cylinders,
frustums, low-poly ellipsoids), so that a lamp is a base, a pole and a shade and a car a body, a
cabin and wheels. Parts are placed in a *normalised object box*:

    x in [-0.5, 0.5]  along the object's length L (object x axis)
    u in [0, 1]       up from the ground, in units of the height H
                      (object y points DOWN: y = (0.5 - u) H)
    z in [-0.5, 0.5]  along the object's width W (object z axis)

`build_mesh` renormalises the union of parts to exactly fill that box, so the ground-truth 3D
box (L, W, H) is tight around what is drawn. Size priors are typical real sizes in metres
(IKEA/street furniture catalogues, vehicle spec sheets), rounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np

# name -> RGB; the words captions use for colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (196, 38, 38),
    "green": (46, 150, 62),
    "blue": (38, 82, 192),
    "yellow": (232, 198, 44),
    "orange": (240, 128, 30),
    "purple": (128, 58, 160),
    "pink": (232, 130, 172),
    "brown": (128, 82, 48),
    "black": (36, 36, 40),
    "white": (236, 236, 230),
    "grey": (128, 130, 132),
    "beige": (214, 194, 158),
}

# Fixed colours of parts that do not carry the object's colour word.
FIXED_ROLE_COLORS: dict[str, tuple[int, int, int]] = {
    "tyre": (30, 30, 32),
    "glass": (70, 96, 120),
    "metal": (150, 152, 158),
    "screen": (18, 22, 34),
    "leaf": (52, 128, 48),
    "skin": (214, 166, 132),
    "hair": (52, 36, 26),
    "wood": (150, 104, 62),
    "white": (236, 236, 230),
    "lamp_red": (230, 40, 30),
    "lamp_yellow": (240, 190, 30),
    "lamp_green": (40, 200, 80),
    "headlight": (250, 246, 220),
    "taillight": (180, 20, 20),
    "dark": (40, 40, 44),
}

# Material -> (ambient, diffuse) of the Lambert shading; "shade" is a lit lampshade.
MATERIAL_SHADING: dict[str, tuple[float, float]] = {
    "wood": (0.6, 0.45),
    "metal": (0.48, 0.65),
    "plastic": (0.58, 0.47),
    "fabric": (0.68, 0.32),
    "leather": (0.55, 0.52),
    "ceramic": (0.6, 0.45),
    "paint": (0.55, 0.55),
}


@dataclass(frozen=True)
class Part:
    """One primitive of a category, in the normalised object box.

    Attributes:
        kind: "box", "cyl_y" (vertical prism), "cyl_x" / "cyl_z" (prism along x / z),
            "frustum_y" (vertical, top radius = top_scale * bottom radius), "sphere" (ellipsoid).
        center: (x, u, z) centre.
        size: (sx, su, sz) full extent along x, u, z.
        role: "main" (the colour word), "second" (a second random colour), "main_light"
            (main colour, lighter), "random" (any colour, e.g. book spines) or a
            FIXED_ROLE_COLORS key.
        top_scale: top/bottom radius ratio of a frustum.
    """

    kind: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    role: str = "main"
    top_scale: float = 1.0


@dataclass(frozen=True)
class Category:
    """A category: name, scenes, size prior, colours, materials and parts.

    Attributes:
        name: the object phrase (answers and captions use it).
        scenes: scene kinds it appears in ("indoor", "street").
        dims_lwh: typical (L, W, H) in metres.
        scale_sigma: log-normal spread of the overall scale (also decides "small"/"large").
        colors: colour words the main parts may take.
        materials: materials it may be made of (shading and the "material" attribute).
        parts: the primitives.
        on_road: vehicles: placed on the road, yaw along the street.
    """

    name: str
    scenes: tuple[str, ...]
    dims_lwh: tuple[float, float, float]
    scale_sigma: float
    colors: tuple[str, ...]
    materials: tuple[str, ...]
    parts: tuple[Part, ...]
    on_road: bool = False


def _legs(x: float, z: float, height: float, thick: float, role: str = "metal") -> list[Part]:
    """Four legs at (+-x, +-z), from the ground up to `height` (fractions of the object box)."""
    return [
        Part("box", (sx * x, height / 2, sz * z), (thick, height, thick), role)
        for sx in (-1, 1)
        for sz in (-1, 1)
    ]


def _books(u0: float, height: float) -> list[Part]:
    """A row of book spines standing on a shelf at height u0."""
    xs = np.linspace(-0.4, 0.4, 7)
    return [
        Part("box", (float(x), u0 + height * (0.42 + 0.08 * (k % 3)), 0.05),
             (0.1, height * (0.84 + 0.16 * (k % 3)), 0.8), "random")
        for k, x in enumerate(xs)
    ]  # fmt: skip


_WOOD = ("brown", "beige", "black", "white")
_BRIGHT = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "grey")
_VEHICLE = ("red", "blue", "white", "black", "grey", "yellow", "green", "orange")

CATEGORIES: tuple[Category, ...] = (
    Category("chair", ("indoor",), (0.48, 0.5, 0.9), 0.1, (*_WOOD, "red", "blue", "green"),
             ("wood", "plastic", "fabric"),
             (Part("box", (0, 0.5, 0.02), (1, 0.07, 0.96)),
              Part("box", (0, 0.76, -0.46), (1, 0.48, 0.08)),
              *_legs(0.45, 0.42, 0.47, 0.08, "main_light"))),
    Category("table", ("indoor",), (1.4, 0.8, 0.75), 0.15, _WOOD, ("wood", "metal"),
             (Part("box", (0, 0.96, 0), (1, 0.08, 1)),
              *_legs(0.46, 0.44, 0.92, 0.05, "main_light"))),
    Category("sofa", ("indoor",), (2.0, 0.9, 0.85), 0.12,
             ("grey", "blue", "red", "green", "beige", "brown", "black"), ("fabric", "leather"),
             (Part("box", (0, 0.25, 0.05), (0.8, 0.5, 0.9)),
              Part("box", (0, 0.56, 0.12), (0.8, 0.12, 0.76), "main_light"),
              Part("box", (0, 0.7, -0.4), (1, 0.6, 0.2)),
              Part("box", (-0.45, 0.35, 0.05), (0.1, 0.7, 0.9)),
              Part("box", (0.45, 0.35, 0.05), (0.1, 0.7, 0.9)))),
    Category("bed", ("indoor",), (2.1, 1.6, 1.0), 0.08,
             ("blue", "red", "green", "white", "grey", "pink", "purple", "yellow"),
             ("wood", "fabric"),
             (Part("box", (0, 0.15, 0), (1, 0.3, 1), "wood"),
              Part("box", (0.03, 0.38, 0), (0.93, 0.18, 0.96), "white"),
              Part("box", (0.16, 0.49, 0), (0.66, 0.04, 0.98)),
              Part("box", (-0.47, 0.5, 0), (0.06, 1.0, 1), "wood"),
              Part("box", (-0.36, 0.52, -0.22), (0.14, 0.08, 0.36), "white"),
              Part("box", (-0.36, 0.52, 0.22), (0.14, 0.08, 0.36), "white"))),
    Category("lamp", ("indoor",), (0.45, 0.45, 1.6), 0.12,
             ("white", "beige", "red", "yellow", "orange", "green", "blue"), ("metal", "fabric"),
             (Part("cyl_y", (0, 0.015, 0), (0.6, 0.03, 0.6), "metal"),
              Part("cyl_y", (0, 0.4, 0), (0.06, 0.76, 0.06), "metal"),
              Part("frustum_y", (0, 0.87, 0), (1, 0.26, 1), "main", 0.6))),
    Category("bookshelf", ("indoor",), (0.9, 0.35, 1.8), 0.15, _WOOD, ("wood",),
             (Part("box", (-0.48, 0.5, 0), (0.04, 1, 1)),
              Part("box", (0.48, 0.5, 0), (0.04, 1, 1)),
              Part("box", (0, 0.98, 0), (1, 0.04, 1)),
              Part("box", (0, 0.02, 0), (1, 0.04, 1)),
              Part("box", (0, 0.5, -0.48), (1, 1, 0.04), "main_light"),
              *[Part("box", (0, u, 0), (0.96, 0.025, 0.96)) for u in (0.26, 0.5, 0.74)],
              *_books(0.04, 0.17), *_books(0.27, 0.17), *_books(0.51, 0.17))),
    Category("cabinet", ("indoor",), (0.8, 0.45, 0.9), 0.15, (*_WOOD, "grey", "blue"),
             ("wood", "metal"),
             (Part("box", (0, 0.5, 0), (1, 1, 0.94)),
              Part("box", (-0.25, 0.5, 0.48), (0.47, 0.9, 0.04), "main_light"),
              Part("box", (0.25, 0.5, 0.48), (0.47, 0.9, 0.04), "main_light"),
              Part("box", (-0.06, 0.62, 0.51), (0.03, 0.16, 0.03), "metal"),
              Part("box", (0.06, 0.62, 0.51), (0.03, 0.16, 0.03), "metal"))),
    Category("television", ("indoor",), (1.1, 0.26, 0.75), 0.2, ("black", "grey", "white"),
             ("plastic",),
             (Part("box", (0, 0.6, 0), (1, 0.76, 0.3)),
              Part("box", (0, 0.61, 0.16), (0.93, 0.66, 0.02), "screen"),
              Part("box", (0, 0.13, -0.05), (0.08, 0.22, 0.16), "metal"),
              Part("box", (0, 0.015, -0.05), (0.42, 0.03, 0.9), "metal"))),
    Category("plant", ("indoor", "street"), (0.5, 0.5, 1.0), 0.25,
             ("white", "brown", "grey", "orange", "blue", "black"), ("ceramic", "plastic"),
             (Part("frustum_y", (0, 0.16, 0), (0.56, 0.32, 0.56), "main", 1.3),
              Part("sphere", (0, 0.62, 0), (1, 0.62, 1), "leaf"),
              Part("sphere", (0.12, 0.86, 0.08), (0.56, 0.28, 0.56), "leaf"))),
    Category("refrigerator", ("indoor",), (0.7, 0.7, 1.8), 0.1, ("white", "grey", "black", "red"),
             ("metal",),
             (Part("box", (0, 0.5, 0), (1, 1, 0.96)),
              Part("box", (0, 0.66, 0.485), (0.98, 0.012, 0.03), "dark"),
              Part("box", (0.4, 0.82, 0.5), (0.04, 0.2, 0.04), "metal"),
              Part("box", (0.4, 0.42, 0.5), (0.04, 0.26, 0.04), "metal"))),
    Category("desk", ("indoor",), (1.2, 0.6, 0.75), 0.12, _WOOD, ("wood",),
             (Part("box", (0, 0.96, 0), (1, 0.08, 1)),
              Part("box", (0.31, 0.46, 0), (0.36, 0.92, 0.95)),
              *[Part("box", (0.31, u, 0.48), (0.32, 0.24, 0.03), "main_light")
                for u in (0.17, 0.45, 0.74)],
              *[Part("box", (-0.46, 0.46, sz * 0.43), (0.06, 0.92, 0.08), "metal")
                for sz in (-1, 1)])),
    Category("bin", ("indoor", "street"), (0.35, 0.35, 0.6), 0.2,
             ("grey", "green", "blue", "black", "white", "orange"), ("plastic", "metal"),
             (Part("frustum_y", (0, 0.45, 0), (0.9, 0.9, 0.9), "main", 1.15),
              Part("cyl_y", (0, 0.95, 0), (1, 0.1, 1), "main_light"))),
    Category("washing machine", ("indoor",), (0.6, 0.6, 0.85), 0.06, ("white", "grey"),
             ("metal",),
             (Part("box", (0, 0.5, 0), (1, 1, 0.96)),
              Part("cyl_z", (0, 0.45, 0.49), (0.6, 0.42, 0.03), "glass"),
              Part("box", (0, 0.91, 0.49), (0.98, 0.14, 0.02), "main_light"),
              Part("cyl_z", (0.3, 0.91, 0.5), (0.1, 0.07, 0.03), "dark"))),
    Category("stool", ("indoor",), (0.4, 0.4, 0.65), 0.12, (*_WOOD, "red", "blue", "grey"),
             ("wood", "metal", "plastic"),
             (Part("cyl_y", (0, 0.95, 0), (1, 0.1, 1)),
              *_legs(0.3, 0.3, 0.9, 0.09, "main_light"),
              Part("box", (0, 0.35, 0), (0.7, 0.04, 0.05), "main_light"))),
    Category("fan", ("indoor",), (0.45, 0.34, 1.3), 0.12, ("white", "black", "grey", "blue"),
             ("plastic", "metal"),
             (Part("cyl_y", (0, 0.02, 0), (0.8, 0.04, 0.8), "main"),
              Part("cyl_y", (0, 0.4, 0), (0.07, 0.75, 0.08), "metal"),
              Part("cyl_z", (0, 0.82, 0.12), (1, 0.35, 0.3), "main"),
              Part("box", (0, 0.82, -0.3), (0.35, 0.13, 0.4), "main_light"))),
    Category("car", ("street",), (4.3, 1.8, 1.5), 0.08, _VEHICLE, ("paint",),
             (Part("box", (0, 0.33, 0), (1, 0.36, 0.98)),
              Part("box", (-0.05, 0.7, 0), (0.55, 0.38, 0.86), "glass"),
              Part("box", (-0.05, 0.9, 0), (0.5, 0.04, 0.84)),
              *[Part("cyl_z", (sx * 0.32, 0.23, sz * 0.45), (0.16, 0.46, 0.12), "tyre")
                for sx in (-1, 1) for sz in (-1, 1)],
              Part("box", (0.5, 0.42, -0.34), (0.01, 0.08, 0.16), "headlight"),
              Part("box", (0.5, 0.42, 0.34), (0.01, 0.08, 0.16), "headlight"),
              Part("box", (-0.5, 0.42, -0.36), (0.01, 0.07, 0.14), "taillight"),
              Part("box", (-0.5, 0.42, 0.36), (0.01, 0.07, 0.14), "taillight")),
             on_road=True),
    Category("truck", ("street",), (7.0, 2.4, 3.2), 0.12, _VEHICLE, ("paint",),
             (Part("box", (0.38, 0.5, 0), (0.24, 0.74, 1)),
              Part("box", (0.5, 0.7, 0), (0.01, 0.24, 0.82), "glass"),
              Part("box", (-0.13, 0.57, 0), (0.74, 0.82, 1), "second"),
              Part("box", (0, 0.16, 0), (1, 0.08, 0.9), "dark"),
              *[Part("cyl_z", (x, 0.155, sz * 0.43), (0.14, 0.31, 0.12), "tyre")
                for x in (0.36, -0.2, -0.38) for sz in (-1, 1)]),
             on_road=True),
    Category("bus", ("street",), (11.0, 2.5, 3.2), 0.08,
             ("red", "blue", "yellow", "white", "green"), ("paint",),
             (Part("box", (0, 0.56, 0), (1, 0.8, 1)),
              Part("box", (0, 0.72, -0.5), (0.92, 0.24, 0.02), "glass"),
              Part("box", (0, 0.72, 0.5), (0.92, 0.24, 0.02), "glass"),
              Part("box", (0.5, 0.62, 0), (0.02, 0.42, 0.9), "glass"),
              *[Part("cyl_z", (sx * 0.34, 0.155, sz * 0.44), (0.09, 0.31, 0.12), "tyre")
                for sx in (-1, 1) for sz in (-1, 1)]),
             on_road=True),
    Category("bicycle", ("street",), (1.7, 0.55, 1.05), 0.08, _BRIGHT, ("metal",),
             (Part("cyl_z", (-0.31, 0.32, 0), (0.38, 0.64, 0.06), "tyre"),
              Part("cyl_z", (0.31, 0.32, 0), (0.38, 0.64, 0.06), "tyre"),
              Part("box", (0.02, 0.55, 0), (0.5, 0.04, 0.08)),
              Part("box", (-0.08, 0.55, 0), (0.04, 0.5, 0.08)),
              Part("box", (-0.06, 0.34, 0), (0.5, 0.04, 0.06)),
              Part("box", (-0.1, 0.83, 0), (0.15, 0.04, 0.3), "dark"),
              Part("box", (0.26, 0.66, 0), (0.04, 0.6, 0.08)),
              Part("box", (0.26, 0.96, 0), (0.04, 0.04, 1), "dark"))),
    Category("motorcycle", ("street",), (2.0, 0.75, 1.2), 0.1, _VEHICLE, ("paint",),
             (Part("cyl_z", (-0.33, 0.27, 0), (0.32, 0.54, 0.2), "tyre"),
              Part("cyl_z", (0.33, 0.27, 0), (0.32, 0.54, 0.2), "tyre"),
              Part("box", (0, 0.48, 0), (0.5, 0.28, 0.44)),
              Part("box", (0.08, 0.68, 0), (0.3, 0.14, 0.46)),
              Part("box", (-0.18, 0.66, 0), (0.34, 0.08, 0.4), "dark"),
              Part("box", (0.34, 0.62, 0), (0.05, 0.5, 0.1), "metal"),
              Part("box", (0.32, 0.88, 0), (0.05, 0.05, 1), "metal"))),
    Category("person", ("street", "indoor"), (0.5, 0.3, 1.7), 0.07, _BRIGHT, ("fabric",),
             (Part("box", (-0.19, 0.24, 0), (0.3, 0.48, 0.7), "second"),
              Part("box", (0.19, 0.24, 0), (0.3, 0.48, 0.7), "second"),
              Part("box", (0, 0.64, 0), (0.74, 0.34, 0.9)),
              Part("box", (-0.43, 0.61, 0), (0.14, 0.36, 0.5)),
              Part("box", (0.43, 0.61, 0), (0.14, 0.36, 0.5)),
              Part("sphere", (0, 0.9, 0), (0.42, 0.14, 0.72), "skin"),
              Part("sphere", (0, 0.955, -0.03), (0.44, 0.09, 0.74), "hair"))),
    Category("traffic light", ("street",), (0.35, 0.35, 3.0), 0.1, ("black", "yellow", "grey"),
             ("metal",),
             (Part("cyl_y", (0, 0.38, 0), (0.36, 0.76, 0.36), "metal"),
              Part("box", (0, 0.88, 0), (1, 0.24, 0.8)),
              Part("cyl_z", (0, 0.955, 0.43), (0.55, 0.06, 0.1), "lamp_red"),
              Part("cyl_z", (0, 0.88, 0.43), (0.55, 0.06, 0.1), "lamp_yellow"),
              Part("cyl_z", (0, 0.805, 0.43), (0.55, 0.06, 0.1), "lamp_green"))),
    Category("bench", ("street",), (1.6, 0.6, 0.85), 0.1, (*_WOOD, "green", "red", "blue"),
             ("wood", "metal"),
             (Part("box", (0, 0.5, 0.1), (1, 0.06, 0.7)),
              Part("box", (0, 0.78, -0.42), (1, 0.36, 0.08)),
              Part("box", (-0.44, 0.25, 0), (0.05, 0.5, 0.84), "dark"),
              Part("box", (0.44, 0.25, 0), (0.05, 0.5, 0.84), "dark"))),
    Category("fire hydrant", ("street",), (0.4, 0.4, 0.8), 0.1, ("red", "yellow", "green"),
             ("metal",),
             (Part("cyl_y", (0, 0.03, 0), (0.8, 0.06, 0.8), "main_light"),
              Part("cyl_y", (0, 0.42, 0), (0.6, 0.74, 0.6)),
              Part("frustum_y", (0, 0.85, 0), (0.62, 0.12, 0.62), "main", 0.4),
              Part("cyl_x", (0, 0.58, 0), (1, 0.18, 0.28), "main_light"))),
    Category("traffic cone", ("street",), (0.4, 0.4, 0.7), 0.15, ("orange", "red", "yellow"),
             ("plastic",),
             (Part("box", (0, 0.02, 0), (1, 0.04, 1), "dark"),
              Part("frustum_y", (0, 0.5, 0), (0.7, 0.96, 0.7), "main", 0.12))),
)  # fmt: skip

CATEGORY_BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}


@dataclass
class Mesh:
    """A category's mesh in the normalised object box, ready to be scaled and posed.

    Attributes:
        vertices: (V, 3) normalised (x, u, z).
        faces: list of vertex-index arrays, one convex planar polygon each.
        face_sizes: vertex count of each face.
        normals: (F, 3) outward unit normals in normalised coordinates.
        centroids: (F, 3) face centroids, normalised.
        face_part: (F,) index of the part each face belongs to.
        part_roles: role of each part.
    """

    vertices: np.ndarray
    faces: list[np.ndarray]
    normals: np.ndarray
    centroids: np.ndarray
    face_part: np.ndarray
    part_roles: list[str]
    by_size: dict[int, np.ndarray] = field(default_factory=dict)


def _ring(n: int, phase: float = 0.0) -> np.ndarray:
    """(n, 2) unit circle points, counter-clockwise."""
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _prism(axis: int, r_bottom: float, r_top: float, n: int) -> tuple[np.ndarray, list[list[int]]]:
    """A prism/frustum of unit length along `axis` (0=x, 1=u, 2=z), centred at 0, radius 0.5.

    Returns vertices (2n, 3) and faces (side quads + two n-gon caps).
    """
    ring = _ring(n, math.pi / n) * 0.5
    others = [a for a in range(3) if a != axis]
    verts = np.zeros((2 * n, 3))
    for k, (r, h) in enumerate(((r_bottom, -0.5), (r_top, 0.5))):
        verts[k * n : (k + 1) * n, others[0]] = ring[:, 0] * r
        verts[k * n : (k + 1) * n, others[1]] = ring[:, 1] * r
        verts[k * n : (k + 1) * n, axis] = h
    faces = [[i, (i + 1) % n, n + (i + 1) % n, n + i] for i in range(n)]
    faces += [list(range(n)), list(range(n, 2 * n))]
    return verts, faces


def _box() -> tuple[np.ndarray, list[list[int]]]:
    """Unit cube centred at 0: 8 vertices, 6 quads."""
    verts = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    faces = [[0, 1, 3, 2], [4, 5, 7, 6], [0, 1, 5, 4], [2, 3, 7, 6], [0, 2, 6, 4], [1, 3, 7, 5]]
    return verts, faces


def _sphere(n_lat: int = 4, n_lon: int = 8) -> tuple[np.ndarray, list[list[int]]]:
    """Low-poly unit-diameter sphere: poles plus n_lat - 1 rings of n_lon points."""
    verts = [[0.0, -0.5, 0.0]]
    for i in range(1, n_lat):
        phi = math.pi * i / n_lat - math.pi / 2
        for x, z in _ring(n_lon):
            verts.append([0.5 * math.cos(phi) * x, 0.5 * math.sin(phi), 0.5 * math.cos(phi) * z])
    verts.append([0.0, 0.5, 0.0])
    top = len(verts) - 1
    faces = [[0, 1 + (j + 1) % n_lon, 1 + j] for j in range(n_lon)]
    for i in range(n_lat - 2):
        a, b = 1 + i * n_lon, 1 + (i + 1) * n_lon
        faces += [[a + j, a + (j + 1) % n_lon, b + (j + 1) % n_lon, b + j] for j in range(n_lon)]
    last = 1 + (n_lat - 2) * n_lon
    faces += [[last + j, last + (j + 1) % n_lon, top] for j in range(n_lon)]
    return np.asarray(verts), faces


def _primitive(part: Part) -> tuple[np.ndarray, list[list[int]]]:
    """Vertices (already placed in the normalised box) and faces of one part."""
    if part.kind == "box":
        verts, faces = _box()
    elif part.kind in ("cyl_x", "cyl_y", "cyl_z"):
        verts, faces = _prism("xyz".index(part.kind[-1]), 1.0, 1.0, 12)
    elif part.kind == "frustum_y":
        verts, faces = _prism(1, 1.0, part.top_scale, 12)
    elif part.kind == "sphere":
        verts, faces = _sphere()
    else:
        raise ValueError(f"unknown part kind {part.kind!r}; known: box, cyl_*, frustum_y, sphere")
    verts = verts * np.asarray(part.size, dtype=float) + np.asarray(part.center, dtype=float)
    return verts, faces


def _newell_normal(points: np.ndarray) -> np.ndarray:
    """Unnormalised normal of a planar polygon (n, 3) by Newell's method."""
    nxt = np.roll(points, -1, axis=0)
    return np.array(
        [
            np.sum((points[:, 1] - nxt[:, 1]) * (points[:, 2] + nxt[:, 2])),
            np.sum((points[:, 2] - nxt[:, 2]) * (points[:, 0] + nxt[:, 0])),
            np.sum((points[:, 0] - nxt[:, 0]) * (points[:, 1] + nxt[:, 1])),
        ]
    )


@cache
def build_mesh(name: str) -> Mesh:
    """Build (once) the mesh of a category, renormalised to fill the normalised box exactly.

    Normals are made to point away from their part's centre, so winding does not matter.
    """
    category = CATEGORY_BY_NAME[name]
    all_verts: list[np.ndarray] = []
    faces: list[np.ndarray] = []
    face_part: list[int] = []
    part_centres: list[np.ndarray] = []
    offset = 0
    for index, part in enumerate(category.parts):
        verts, part_faces = _primitive(part)
        all_verts.append(verts)
        part_centres.append(verts.mean(axis=0))
        faces += [np.asarray(f) + offset for f in part_faces]
        face_part += [index] * len(part_faces)
        offset += len(verts)
    vertices = np.concatenate(all_verts)
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    target_lo, target_hi = np.array([-0.5, 0.0, -0.5]), np.array([0.5, 1.0, 0.5])
    scale = (target_hi - target_lo) / (hi - lo)
    vertices = (vertices - lo) * scale + target_lo
    centres = (np.asarray(part_centres) - lo) * scale + target_lo
    normals = np.zeros((len(faces), 3))
    centroids = np.zeros((len(faces), 3))
    for k, face in enumerate(faces):
        points = vertices[face]
        centroids[k] = points.mean(axis=0)
        normal = _newell_normal(points)
        if normal @ (centroids[k] - centres[face_part[k]]) < 0:
            normal = -normal
        normals[k] = normal / max(np.linalg.norm(normal), 1e-12)
    mesh = Mesh(
        vertices=vertices,
        faces=faces,
        normals=normals,
        centroids=centroids,
        face_part=np.asarray(face_part),
        part_roles=[p.role for p in category.parts],
    )
    return mesh


def categories_for_scene(scene: str) -> list[Category]:
    """Categories that may appear in a scene kind ("indoor" or "street"), in catalogue order."""
    return [c for c in CATEGORIES if scene in c.scenes]
