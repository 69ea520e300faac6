"""IG3D-Synth scenes: camera groups, rooms and streets, and objects placed on the ground.

Everything is drawn from a `numpy.random.Generator`, so a scene is a pure function of its seed.

Frames: the *level* frame (x right, y down, z forward, origin at the camera, ground plane at
y = +camera height) is the camera frame before pitch; `Camera.R_level_to_cam` pitches it down.
Objects stand on the ground with a random yaw about the vertical axis; their rotation in the
camera frame is ``R_cam = R_level_to_cam @ R_y(yaw)``, so the camera pitch is folded in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from llmi3d_core.data.synth.shapes import (
    COLORS,
    FIXED_ROLE_COLORS,
    Category,
    categories_for_scene,
)
from llmi3d_core.errors import InvalidInputError


@dataclass(frozen=True)
class CameraGroup:
    """A family of cameras: image size, focal-length range, and the side of the domain split.

    Attributes:
        name: group name (the images' "camera_group").
        width: image width, px.
        height: image height, px.
        fx_range: (min, max) focal length f_x in px (f_y = f_x), sampled log-uniformly.
        domain: "source" or "target" for camera-domain splits (train@source, test@target).
        street_share: probability that an image of this group shows a street (else a room).
        description: one line for dataset.json.
    """

    name: str
    width: int
    height: int
    fx_range: tuple[float, float]
    domain: str
    street_share: float
    description: str


CAMERA_GROUPS: dict[str, CameraGroup] = {
    g.name: g
    for g in (
        CameraGroup("vga_normal", 640, 480, (450.0, 900.0), "source", 0.35,
                    "640x480, normal to long lens (f_x 450-900 px)"),
        CameraGroup("kitti_like", 1242, 375, (600.0, 1000.0), "source", 0.75,
                    "KITTI-like 1242x375 strip (f_x 600-1000 px)"),
        CameraGroup("vga_wide", 640, 480, (300.0, 450.0), "target", 0.35,
                    "640x480 wide angle (f_x 300-450 px)"),
        CameraGroup("nuscenes_like", 1600, 900, (1000.0, 1600.0), "target", 0.75,
                    "nuScenes-like 1600x900, long focal (f_x 1000-1600 px)"),
    )
}  # fmt: skip


@dataclass
class Camera:
    """A pinhole camera above the ground.

    Attributes:
        group: its CameraGroup name.
        width: image width, px.
        height: image height, px.
        K: (3, 3) intrinsics; pixel centres at integer coordinates.
        height_m: camera height above the ground, m.
        pitch_rad: downward pitch, radians (positive looks down).
    """

    group: str
    width: int
    height: int
    K: np.ndarray
    height_m: float
    pitch_rad: float

    @property
    def R_level_to_cam(self) -> np.ndarray:
        """(3, 3) rotation level frame -> camera frame (pitch about x)."""
        c, s = math.cos(self.pitch_rad), math.sin(self.pitch_rad)
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_y(yaw: float) -> np.ndarray:
    """(3, 3) rotation about the vertical (y) axis; local x maps to (cos yaw, 0, -sin yaw)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass
class PlacedObject:
    """An object standing on the ground (level frame).

    Attributes:
        category: its Category.
        dims_lwh: (3,) L, W, H in metres.
        yaw: rotation about the vertical axis, radians.
        ground_xz: (2,) position of its centre on the ground (level X, Z), m.
        color: colour word of its main parts.
        size_word: "small", "medium" or "large" relative to the category prior.
        material: a MATERIAL_SHADING key.
        part_colors: (P, 3) base RGB of each part.
    """

    category: Category
    dims_lwh: np.ndarray
    yaw: float
    ground_xz: np.ndarray
    color: str
    size_word: str
    material: str
    part_colors: np.ndarray

    def footprint(self, grow: float = 0.0) -> np.ndarray:
        """(4, 2) ground rectangle corners (X, Z), grown by `grow` metres on every side."""
        length, width = self.dims_lwh[0] / 2 + grow, self.dims_lwh[1] / 2 + grow
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        ax, az = np.array([c, -s]), np.array([s, c])  # local x and z on the ground
        signs = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]])  # (4, 2)
        corners: np.ndarray = (
            self.ground_xz + (signs[:, :1] * length) * ax + (signs[:, 1:] * width) * az
        )
        return corners

    def center_level(self, camera_height: float) -> np.ndarray:
        """(3,) box centre in the level frame: half its height above the ground."""
        return np.array(
            [self.ground_xz[0], camera_height - self.dims_lwh[2] / 2, self.ground_xz[1]]
        )


@dataclass
class Background:
    """What is drawn behind the objects, in drawing order (level frame).

    Attributes:
        sky: (top RGB, bottom RGB) of a vertical gradient filling the image first, or None.
        polygons: (points (n, 3) level frame, RGB) convex planar polygons.
        lines: (p (3,), q (3,), RGB, thickness px) segments, drawn after the polygons.
        overlays: polygons drawn after the lines (rugs, lane marks).
        ground_color: function of ground (X, Z) -> RGB, for shadows.
    """

    sky: tuple[tuple[int, int, int], tuple[int, int, int]] | None
    polygons: list[tuple[np.ndarray, tuple[int, int, int]]] = field(default_factory=list)
    lines: list[tuple[np.ndarray, np.ndarray, tuple[int, int, int], int]] = field(
        default_factory=list
    )
    overlays: list[tuple[np.ndarray, tuple[int, int, int]]] = field(default_factory=list)
    zones: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    ground_rgb: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def ground_color_at(self, x: float, z: float) -> tuple[int, int, int]:
        """RGB of the ground under (x, z): the last zone containing it, else the "ground" colour."""
        color = self.ground_rgb.get("ground", (120, 120, 120))
        for name, (x0, x1, z0, z1) in self.zones.items():
            if x0 <= x <= x1 and z0 <= z <= z1 and name in self.ground_rgb:
                color = self.ground_rgb[name]
        return color


@dataclass
class Scene:
    """A sampled scene: kind, camera, background, light and objects."""

    kind: str
    camera: Camera
    background: Background
    light_level: np.ndarray
    objects: list[PlacedObject]


# ----------------------------------------------------------------------------------------------
# Sampling helpers
# ----------------------------------------------------------------------------------------------


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=float) + rng.normal(0.0, amount, 3), 0, 255)


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    return (int(values[0]), int(values[1]), int(values[2]))


def _shade(rgb: tuple[int, int, int] | np.ndarray, factor: float) -> tuple[int, int, int]:
    return _rgb(np.clip(np.asarray(rgb, dtype=float) * factor, 0, 255))


def _quad_x(x: float, y0: float, y1: float, z0: float, z1: float) -> np.ndarray:
    """Rectangle in the plane X = x (a side wall)."""
    return np.array([[x, y0, z0], [x, y0, z1], [x, y1, z1], [x, y1, z0]], dtype=float)


def _quad_y(y: float, x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
    """Rectangle in the plane Y = y (floor, ceiling, road)."""
    return np.array([[x0, y, z0], [x1, y, z0], [x1, y, z1], [x0, y, z1]], dtype=float)


def _quad_z(z: float, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Rectangle in the plane Z = z (back wall)."""
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=float)


def sample_camera(group: CameraGroup, kind: str, rng: np.random.Generator) -> Camera:
    """A camera of `group` for a scene kind: log-uniform f_x, principal point near the centre."""
    lo, hi = group.fx_range
    fx = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    cx = (group.width - 1) / 2 + rng.normal(0.0, 0.01 * group.width)
    cy = (group.height - 1) / 2 + rng.normal(0.0, 0.01 * group.height)
    K = np.array([[fx, 0.0, cx], [0.0, fx, cy], [0.0, 0.0, 1.0]])
    if kind == "indoor":
        height_m, pitch = rng.uniform(0.9, 1.7), math.radians(rng.uniform(2.0, 22.0))
    else:
        height_m, pitch = rng.uniform(1.2, 2.0), math.radians(rng.uniform(-2.0, 8.0))
    return Camera(group.name, group.width, group.height, K, float(height_m), float(pitch))


_FLOORS = ((150, 110, 70), (190, 160, 120), (120, 120, 125), (205, 200, 190), (90, 70, 60))
_WALLS = ((225, 220, 205), (200, 210, 220), (215, 200, 180), (190, 205, 190), (235, 235, 235))
_RUGS = ((150, 40, 50), (40, 70, 120), (180, 150, 90), (70, 110, 80), (110, 90, 140))
_BUILDINGS = ((170, 150, 130), (140, 120, 110), (200, 190, 170), (120, 130, 140), (180, 110, 90))


def sample_room(camera: Camera, rng: np.random.Generator) -> Background:
    """A box-shaped room around the camera: floor with tiles, three walls, ceiling, decorations.

    Zones: "floor" (where objects may stand).
    """
    h = camera.height_m
    width = rng.uniform(4.5, 9.0)
    x_left = -rng.uniform(1.2, width - 1.2)
    x_right = x_left + width
    depth = rng.uniform(5.0, 11.0)
    z_back = -1.0
    ceiling = h - rng.uniform(2.5, 3.1)
    floor_rgb = _rgb(_jitter(_FLOORS[rng.integers(len(_FLOORS))], rng, 8))
    wall_rgb = _jitter(_WALLS[rng.integers(len(_WALLS))], rng, 6)
    bg = Background(sky=None)
    bg.polygons += [
        (_quad_y(ceiling, x_left, x_right, z_back, depth), _shade(wall_rgb, 0.92)),
        (_quad_x(x_left, ceiling, h, z_back, depth), _shade(wall_rgb, 0.85)),
        (_quad_x(x_right, ceiling, h, z_back, depth), _shade(wall_rgb, 0.8)),
        (_quad_z(depth, x_left, x_right, ceiling, h), _shade(wall_rgb, 1.0)),
    ]
    # A window or a door on the back wall, paintings on the side walls.
    wx0 = rng.uniform(x_left + 0.3, x_right - 2.0)
    if rng.random() < 0.6:
        bg.polygons.append(
            (_quad_z(depth - 0.01, wx0, wx0 + 1.4, h - 2.2, h - 0.9), (170, 205, 235))
        )
    else:
        bg.polygons.append(
            (_quad_z(depth - 0.01, wx0, wx0 + 0.9, h - 2.05, h), _shade(_FLOORS[0], 0.8))
        )
    for side in (x_left + 0.01, x_right - 0.01):
        z0 = rng.uniform(0.5, max(depth - 2.0, 0.6))
        art = _rgb(rng.uniform(40, 230, 3))
        bg.polygons.append((_quad_x(side, h - 1.9, h - 1.2, z0, z0 + 1.0), art))
    bg.polygons.append((_quad_y(h, x_left, x_right, z_back, depth), floor_rgb))
    tile = rng.uniform(0.4, 1.0)
    line_rgb = _shade(floor_rgb, 0.8)
    for x in np.arange(x_left + tile, x_right, tile):
        bg.lines.append((np.array([x, h, 0.0]), np.array([x, h, depth]), line_rgb, 1))
    for z in np.arange(tile, depth, tile):
        bg.lines.append((np.array([x_left, h, z]), np.array([x_right, h, z]), line_rgb, 1))
    for x in (x_left, x_right):  # skirting lines
        bg.lines.append((np.array([x, h, z_back]), np.array([x, h, depth]), (90, 80, 70), 2))
    bg.lines.append((np.array([x_left, h, depth]), np.array([x_right, h, depth]), (90, 80, 70), 2))
    if rng.random() < 0.6:
        rx, rz = rng.uniform(x_left + 0.5, x_right - 2.5), rng.uniform(1.5, max(depth - 3, 1.6))
        rug = _rgb(_jitter(_RUGS[rng.integers(len(_RUGS))], rng, 8))
        bg.overlays.append((_quad_y(h, rx, rx + rng.uniform(1.5, 2.5), rz, rz + 2.0), rug))
    bg.zones["floor"] = (x_left + 0.15, x_right - 0.15, 0.8, depth - 0.15)
    bg.ground_rgb["ground"] = floor_rgb
    return bg


def sample_street(camera: Camera, rng: np.random.Generator) -> Background:
    """A straight street along +Z: road, lane marks, sidewalks, building facades, sky.

    Zones: "road" and "sidewalk_left" / "sidewalk_right".
    """
    h = camera.height_m
    road_half = rng.uniform(3.5, 7.0)
    offset = rng.uniform(-0.6, 0.6) * road_half  # camera's lateral position on the road
    x_road0, x_road1 = -road_half - offset, road_half - offset
    walk = rng.uniform(2.0, 4.0)
    far = 400.0
    top = _jitter((110, 160, 220), rng, 10)
    bg = Background(sky=(_rgb(top), _rgb(np.clip(top + 60, 0, 255))))
    ground_rgb = _rgb(_jitter((120, 128, 100), rng, 8))
    road_rgb = _rgb(_jitter((88, 88, 92), rng, 6))
    walk_rgb = _rgb(_jitter((170, 165, 155), rng, 8))
    bg.polygons.append((_quad_y(h, -200.0, 200.0, -5.0, far), ground_rgb))
    bg.polygons.append((_quad_y(h, x_road0 - walk, x_road0, -5.0, far), walk_rgb))
    bg.polygons.append((_quad_y(h, x_road1, x_road1 + walk, -5.0, far), walk_rgb))
    bg.polygons.append((_quad_y(h, x_road0, x_road1, -5.0, far), road_rgb))
    for side, x in ((-1, x_road0 - walk), (1, x_road1 + walk)):
        z = -5.0
        while z < 160.0:
            length = rng.uniform(8.0, 25.0)
            height = rng.uniform(5.0, 22.0)
            facade = _jitter(_BUILDINGS[rng.integers(len(_BUILDINGS))], rng, 10)
            bg.polygons.append((_quad_x(x, h - height, h, z, z + length), _shade(facade, 0.9)))
            if z < 70.0:
                window = _shade(facade, 0.45)
                for wz in np.arange(z + 1.0, z + length - 1.5, 3.0):
                    for wy in np.arange(h - 2.2, h - height + 1.5, -3.2):
                        quad = _quad_x(x - side * 0.01, wy - 1.4, wy, wz, wz + 1.5)
                        bg.polygons.append((quad, window))
            z += length
    for x in (x_road0, x_road1):  # kerbs
        bg.lines.append((np.array([x, h, -5.0]), np.array([x, h, far]), (200, 200, 195), 2))
    lane_x = (x_road0 + x_road1) / 2
    for z in np.arange(rng.uniform(0.0, 6.0), 120.0, 9.0):
        bg.overlays.append((_quad_y(h, lane_x - 0.08, lane_x + 0.08, z, z + 4.0), (225, 225, 215)))
    bg.zones["road"] = (x_road0 + 0.2, x_road1 - 0.2, 3.0, 80.0)
    bg.zones["sidewalk_left"] = (x_road0 - walk + 0.15, x_road0 - 0.05, 3.0, 80.0)
    bg.zones["sidewalk_right"] = (x_road1 + 0.05, x_road1 + walk - 0.15, 3.0, 80.0)
    bg.ground_rgb.update(
        ground=ground_rgb, road=road_rgb, sidewalk_left=walk_rgb, sidewalk_right=walk_rgb
    )
    return bg


def _size_word(scale: float) -> str:
    if scale < 0.93:
        return "small"
    if scale > 1.07:
        return "large"
    return "medium"


def sample_appearance(
    category: Category, rng: np.random.Generator
) -> tuple[np.ndarray, str, str, str, np.ndarray]:
    """Size, colour, size word, material and part colours of one instance of a category.

    Returns:
        dims_lwh (3,) m, colour word, size word, material, part colours (P, 3).
    """
    scale = float(math.exp(rng.normal(0.0, category.scale_sigma)))
    scale = float(np.clip(scale, 0.7, 1.4))
    dims = np.asarray(category.dims_lwh) * scale * np.exp(rng.normal(0.0, 0.04, 3))
    color = str(category.colors[rng.integers(len(category.colors))])
    material = str(category.materials[rng.integers(len(category.materials))])
    main = _jitter(COLORS[color], rng, 6)
    others = [c for c in COLORS if c != color]
    second = np.asarray(COLORS[others[rng.integers(len(others))]], dtype=float)
    parts = []
    for part in category.parts:
        if part.role == "main":
            parts.append(main)
        elif part.role == "main_light":
            parts.append(np.clip(main * 0.8 + 50, 0, 255))
        elif part.role == "second":
            parts.append(second)
        elif part.role == "random":
            parts.append(np.asarray(list(COLORS.values())[rng.integers(len(COLORS))], float))
        else:
            parts.append(np.asarray(FIXED_ROLE_COLORS[part.role], dtype=float))
    return dims, color, _size_word(scale), material, np.asarray(parts)


def _rectangles_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test of two convex ground polygons (4, 2)."""
    for poly in (a, b):
        for i in range(len(poly)):
            edge = poly[(i + 1) % len(poly)] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


def _zone_for(category: Category, kind: str, rng: np.random.Generator) -> str:
    if kind == "indoor":
        return "floor"
    if category.on_road:
        return "road"
    if category.name in ("person", "traffic cone") and rng.random() < 0.4:
        return "road"
    return "sidewalk_left" if rng.random() < 0.5 else "sidewalk_right"


def place_objects(
    kind: str,
    camera: Camera,
    background: Background,
    count: int,
    rng: np.random.Generator,
    *,
    min_height_px: float = 18.0,
    max_truncation: float = 0.5,
    repeat_share: float = 0.35,
    attempts: int = 30,
) -> list[PlacedObject]:
    """Place up to `count` objects on the ground, inside the view, without overlaps.

    Depth is limited so that an object is at least `min_height_px` tall in the image; a share of
    objects repeats an earlier category so that captions need attributes and relations.
    """
    from llmi3d_core.geometry import box3d_corners, project  # noqa: PLC0415 (torch-free generator workers)

    categories = categories_for_scene(kind)
    R_lc = camera.R_level_to_cam
    fx, cx = camera.K[0, 0], camera.K[0, 2]
    placed: list[PlacedObject] = []
    for _ in range(count):
        if placed and rng.random() < repeat_share:
            category = placed[rng.integers(len(placed))].category
        else:
            category = categories[rng.integers(len(categories))]
        dims, color, size_word, material, part_colors = sample_appearance(category, rng)
        zone_name = _zone_for(category, kind, rng)
        x0, x1, z0, z1 = background.zones[zone_name]
        z_far = min(z1, fx * dims[2] / min_height_px)
        for _attempt in range(attempts):
            if z_far <= z0:
                break
            z = z0 + (z_far - z0) * rng.random() ** 1.3
            u = rng.uniform(-0.05, 1.05) * camera.width
            x = float(np.clip((u - cx) * z / fx, x0, x1))
            if category.on_road:
                yaw = (math.pi / 2 if rng.random() < 0.5 else -math.pi / 2) + rng.normal(0, 0.12)
            else:
                yaw = rng.uniform(-math.pi, math.pi)
            candidate = PlacedObject(
                category,
                dims,
                float(yaw),
                np.array([x, z]),
                color,
                size_word,
                material,
                part_colors,
            )
            foot = candidate.footprint()
            if not (
                (foot[:, 0] >= x0).all()
                and (foot[:, 0] <= x1).all()
                and (foot[:, 1] >= z0 - 0.5).all()
                and (foot[:, 1] <= z1).all()
            ):
                continue
            grown = candidate.footprint(grow=0.08)
            if any(_rectangles_overlap(grown, other.footprint(0.08)) for other in placed):
                continue
            center = R_lc @ candidate.center_level(camera.height_m)
            corners = box3d_corners(center, dims, R_lc @ rotation_y(yaw), validate=False)
            if corners[:, 2].min() < 0.4:
                continue
            uv = project(corners, camera.K, validate=False)  # (8, 2)
            lo, hi = uv.min(axis=0), uv.max(axis=0)
            inside = np.clip(hi, 0, [camera.width, camera.height]) - np.clip(
                lo, 0, [camera.width, camera.height]
            )
            area = float(np.prod(hi - lo))
            if area <= 0 or float(np.prod(np.clip(inside, 0, None))) < (1 - max_truncation) * area:
                continue
            placed.append(candidate)
            break
    return placed


def sample_light(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit vector towards the light in the level frame (from above, random azimuth)."""
    elevation = math.radians(rng.uniform(35.0, 70.0) if kind == "street" else rng.uniform(50, 80))
    azimuth = rng.uniform(-math.pi, math.pi)
    return np.array(
        [
            math.cos(elevation) * math.sin(azimuth),
            -math.sin(elevation),
            -abs(math.cos(elevation) * math.cos(azimuth)),  # lit from the camera's side
        ]
    )


def sample_scene(
    group: CameraGroup,
    rng: np.random.Generator,
    *,
    objects_range: tuple[int, int] = (3, 8),
    kind: str | None = None,
) -> Scene:
    """Sample a whole scene for one image of `group`.

    Args:
        group: the camera group.
        rng: the image's random generator.
        objects_range: (min, max) objects attempted (inclusive).
        kind: "indoor" or "street"; None draws it with the group's street share.

    Raises:
        InvalidInputError: for an unknown scene kind.
    """
    if kind is None:
        kind = "street" if rng.random() < group.street_share else "indoor"
    if kind not in ("indoor", "street"):
        raise InvalidInputError(f"scene kind must be 'indoor' or 'street', got {kind!r}")
    camera = sample_camera(group, kind, rng)
    background = sample_room(camera, rng) if kind == "indoor" else sample_street(camera, rng)
    count = int(rng.integers(objects_range[0], objects_range[1] + 1))
    objects = place_objects(kind, camera, background, count, rng)
    return Scene(kind, camera, background, sample_light(kind, rng), objects)
