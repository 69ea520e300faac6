"""IG3D-Synth rasteriser: flat-shaded convex polygons in painter's order, plus an owner map.

No ray tracing: every face of every primitive is projected with K and filled with OpenCV's
`fillConvexPoly` (sub-pixel precision via `shift`), farthest first. Object faces are filled a
second time into an owner map (object index per pixel), from which visibility, tight 2D boxes
and prompt points follow exactly.

Frames: the *level* frame is the camera frame before pitch (x right, y down, z forward, origin at
the camera, ground plane y = +camera height); the camera frame is the level frame pitched down.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from llmi3d_core.data.synth.shapes import MATERIAL_SHADING, Mesh

NEAR_PLANE_M = 0.1
_SHIFT = 4  # fillConvexPoly fixed-point bits: 1/16 px vertex precision
_SCALE = float(1 << _SHIFT)
_COORD_LIMIT = 4.0e6  # px; larger coordinates are clipped in 2D before the int32 fixed-point cast


def clip_polygon_near(points: np.ndarray, near: float = NEAR_PLANE_M) -> np.ndarray:
    """Clip a planar convex 3D polygon (n, 3), camera frame, to z >= near (Sutherland-Hodgman).

    Returns the clipped polygon (m, 3); m = 0 when it lies wholly behind the plane.
    """
    inside = points[:, 2] >= near
    if inside.all():
        return points
    if not inside.any():
        return points[:0]
    out = []
    n = len(points)
    for i in range(n):
        p, q = points[i], points[(i + 1) % n]
        p_in, q_in = inside[i], inside[(i + 1) % n]
        if p_in:
            out.append(p)
        if p_in != q_in:
            t = (near - p[2]) / (q[2] - p[2])
            out.append(p + t * (q - p))
    return np.asarray(out)


def _clip_polygon_2d(points: np.ndarray, limit: float) -> np.ndarray:
    """Clip a convex 2D polygon (n, 2) to the square [-limit, limit]^2."""
    poly = points
    for axis in (0, 1):
        for sign in (1.0, -1.0):
            if len(poly) == 0:
                return poly
            value = sign * poly[:, axis]
            inside = value <= limit
            if inside.all():
                continue
            out = []
            n = len(poly)
            for i in range(n):
                p, q = poly[i], poly[(i + 1) % n]
                if inside[i]:
                    out.append(p)
                if inside[i] != inside[(i + 1) % n]:
                    t = (limit - value[i]) / (value[(i + 1) % n] - value[i])
                    out.append(p + t * (q - p))
            poly = np.asarray(out).reshape(-1, 2)
    return poly


def to_fixed(uv: np.ndarray) -> np.ndarray | None:
    """(n, 2) float pixels -> (n, 2) int32 fixed-point for cv2 (None when clipped away)."""
    if np.abs(uv).max() > _COORD_LIMIT:
        uv = _clip_polygon_2d(uv, _COORD_LIMIT)
        if len(uv) < 3:
            return None
    return np.round(uv * _SCALE).astype(np.int32)


class Canvas:
    """The picture being drawn plus an owner map (which object each pixel shows, 0 = scene).

    Polygons are filled in painter's order; an object's polygons are also filled into the owner
    map with its index, so nearer objects overwrite both colour and owner of farther ones.

    Args:
        width: image width, px.
        height: image height, px.
        clear_color: RGB of pixels nothing is drawn on.
    """

    def __init__(self, width: int, height: int, clear_color: tuple[int, int, int]) -> None:
        self.width = width
        self.height = height
        self.image = np.empty((height, width, 3), dtype=np.uint8)
        # cv2 fills are ~50x faster than numpy's broadcast assignment of a colour tuple
        cv2.rectangle(self.image, (0, 0), (width - 1, height - 1), clear_color, cv2.FILLED)
        self.owner = np.zeros((height, width), dtype=np.uint8)

    def fill_fixed(self, pts: np.ndarray, color: tuple[int, int, int], owner: int = 0) -> None:
        """Fill a convex polygon already in fixed point (see `to_fixed`)."""
        cv2.fillConvexPoly(self.image, pts, color, cv2.LINE_8, _SHIFT)
        if owner:
            cv2.fillConvexPoly(self.owner, pts, owner, cv2.LINE_8, _SHIFT)

    def fill(self, uv: np.ndarray, color: tuple[int, int, int], owner: int = 0) -> None:
        """Fill a convex polygon given in pixels (n, 2)."""
        pts = to_fixed(uv)
        if pts is not None and len(pts) >= 3:
            self.fill_fixed(pts, color, owner)

    def line(
        self, p: np.ndarray, q: np.ndarray, color: tuple[int, int, int], thickness: int = 1
    ) -> None:
        """Draw a scene segment between pixels p and q."""
        pts = to_fixed(np.stack([p, q]))
        if pts is not None:
            cv2.line(self.image, pts[0], pts[1], color, thickness, cv2.LINE_8, _SHIFT)

    def rows(self, top: int, bottom: int, color: tuple[int, int, int]) -> None:
        """Fill image rows [top, bottom) (the sky gradient)."""
        top, bottom = max(top, 0), min(bottom, self.height)
        if bottom > top:
            cv2.rectangle(self.image, (0, top), (self.width - 1, bottom - 1), color, cv2.FILLED)


@dataclass
class Light:
    """Directional light: `direction` is a unit vector towards the light (level frame)."""

    direction: np.ndarray
    ambient_scale: float = 1.0


@dataclass
class ObjectInstance:
    """One posed, coloured object to draw.

    Attributes:
        mesh: the category mesh (normalised box).
        dims_lwh: (3,) L, W, H in metres.
        R_cam: (3, 3) object-to-camera rotation.
        center_cam: (3,) box centre, camera frame, metres.
        part_colors: (P, 3) base RGB per part.
        material: a MATERIAL_SHADING key.
        shadow_polygon: (4, 3) camera-frame ground polygon for its shadow, or None.
    """

    mesh: Mesh
    dims_lwh: np.ndarray
    R_cam: np.ndarray
    center_cam: np.ndarray
    part_colors: np.ndarray
    material: str
    shadow_polygon: np.ndarray | None = None


@dataclass
class ObjectPixels:
    """What the renderer measured for one object.

    Attributes:
        visible_px: pixels showing the object in the final image.
        own_px: pixels its silhouette would cover alone on an unbounded image.
        tight_box: [x1, y1, x2, y2] of its visible pixels (pixel centres at integers), or None.
        points: (k, 2) [u, v] visible pixels away from its outline, for point prompts.
    """

    visible_px: int
    own_px: float
    tight_box: np.ndarray | None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    @property
    def visibility(self) -> float:
        """Visible fraction of the object's own silhouette, 0..1."""
        return float(min(1.0, self.visible_px / self.own_px)) if self.own_px > 0 else 0.0


def pose_vertices(instance: ObjectInstance) -> np.ndarray:
    """(V, 3) mesh vertices in the camera frame: local = (x L, (0.5 - u) H, z W)."""
    length, width, height = instance.dims_lwh
    normalised = instance.mesh.vertices  # (V, 3) (x, u, z)
    local = np.empty_like(normalised)
    local[:, 0] = normalised[:, 0] * length
    local[:, 1] = (0.5 - normalised[:, 1]) * height
    local[:, 2] = normalised[:, 2] * width
    posed: np.ndarray = local @ instance.R_cam.T + instance.center_cam  # (V, 3)
    return posed


def shade_faces(
    instance: ObjectInstance, light_cam: np.ndarray, up_cam: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face normals, centroids (camera frame) and Lambert-shaded colours of an object.

    Returns:
        normals (F, 3), centroids (F, 3) and colours (F, 3) uint8.
    """
    length, width, height = instance.dims_lwh
    mesh = instance.mesh
    # Normals of a non-uniformly scaled mesh transform with the inverse transpose,
    # diag(1/L, -1/H, 1/W) (the -1 because y points down).
    normals = mesh.normals * np.array([1.0 / length, -1.0 / height, 1.0 / width])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    normals = normals @ instance.R_cam.T  # (F, 3)
    cent = mesh.centroids
    local = np.stack([cent[:, 0] * length, (0.5 - cent[:, 1]) * height, cent[:, 2] * width], 1)
    centroids = local @ instance.R_cam.T + instance.center_cam  # (F, 3)
    ambient, diffuse = MATERIAL_SHADING[instance.material]
    lambert = np.clip(normals @ light_cam, 0.0, None)
    sky = 0.12 * np.clip(normals @ up_cam, 0.0, None)
    intensity = ambient + diffuse * lambert + sky  # (F,)
    base = instance.part_colors[mesh.face_part]  # (F, 3)
    colors = np.clip(base * intensity[:, None], 0, 255).astype(np.uint8)
    return normals, centroids, colors


def draw_object(
    canvas: Canvas,
    instance: ObjectInstance,
    owner: int,
    K: np.ndarray,
    *,
    light_cam: np.ndarray,
    up_cam: np.ndarray,
) -> list[np.ndarray]:
    """Draw an object's front faces, far to near; return their fixed-point polygons.

    Faces are sorted by centroid distance, which is exact for the convex primitives' own faces
    and a good approximation between parts of one object (objects never interpenetrate).
    """
    from llmi3d_core.geometry import project  # noqa: PLC0415 (torch-free generator workers)

    vertices = pose_vertices(instance)
    uv = project(vertices, K, validate=False)  # (V, 2)
    normals, centroids, colors = shade_faces(instance, light_cam, up_cam)
    front = np.einsum("fi,fi->f", normals, centroids) < 0.0  # back-face culling
    order = np.argsort(-np.linalg.norm(centroids, axis=1), kind="stable")
    polygons = []
    faces = instance.mesh.faces
    fixed_all = to_fixed(uv) if np.abs(uv).max() <= _COORD_LIMIT else None  # fast path
    for index in order:
        if not front[index]:
            continue
        pts = fixed_all[faces[index]] if fixed_all is not None else to_fixed(uv[faces[index]])
        if pts is None:
            continue
        color = colors[index]
        canvas.fill_fixed(pts, (int(color[0]), int(color[1]), int(color[2])), owner)
        polygons.append(pts)
    return polygons


def silhouette_area(polygons: list[np.ndarray], max_side: int = 512) -> float:
    """Area in px of the union of fixed-point polygons, rendered alone (no image border).

    Rendered at scale 1 with an integer offset when the extent allows (then it matches the
    main render pixel for pixel), else downscaled so the longer side is `max_side`.
    """
    if not polygons:
        return 0.0
    stacked = np.concatenate(polygons)
    lo = stacked.min(axis=0) // int(_SCALE)
    hi = stacked.max(axis=0) // int(_SCALE)
    extent = hi - lo + 3
    scale = min(1.0, max_side / float(extent.max()))
    size = np.maximum(np.ceil(extent * scale).astype(int) + 2, 1)
    mask = np.zeros((int(size[1]), int(size[0])), dtype=np.uint8)
    offset = (lo - 1) * int(_SCALE)
    for pts in polygons:
        local = pts - offset
        if scale < 1.0:
            local = np.round(local * scale).astype(np.int32)
        cv2.fillConvexPoly(mask, local, 1, cv2.LINE_8, _SHIFT)
    return float(np.count_nonzero(mask)) / (scale * scale)


def measure_objects(
    owner_map: np.ndarray,
    polygons: list[list[np.ndarray]],
    proj_boxes: list[np.ndarray],
    rng: np.random.Generator,
    num_points: int = 3,
) -> list[ObjectPixels]:
    """Visible pixels, tight boxes, visibility and prompt points of objects 1..N in `owner_map`.

    Args:
        owner_map: (H, W) uint8, object index + 1 per pixel, 0 for the scene.
        polygons: per object, the fixed-point polygons it was drawn with.
        proj_boxes: per object, [x1, y1, x2, y2] of its projected 3D box, clipped to the image.
        rng: for picking the prompt points.
        num_points: prompt points sampled per object.
    """
    height, width = owner_map.shape
    counts = np.bincount(owner_map.ravel(), minlength=len(polygons) + 1)
    out = []
    for index, polys in enumerate(polygons):
        visible = int(counts[index + 1])
        own = max(silhouette_area(polys), float(visible))
        if visible == 0:
            out.append(ObjectPixels(0, own, None))
            continue
        # The visible pixels lie inside the projected 3D box (the silhouette is inside the hull).
        x1, y1, x2, y2 = proj_boxes[index]
        c0, r0 = max(int(np.floor(x1)) - 1, 0), max(int(np.floor(y1)) - 1, 0)
        c1, r1 = min(int(np.ceil(x2)) + 2, width), min(int(np.ceil(y2)) + 2, height)
        sub = owner_map[r0:r1, c0:c1] == index + 1
        rows = np.flatnonzero(sub.any(axis=1))
        cols = np.flatnonzero(sub.any(axis=0))
        if rows.size == 0:  # should not happen; fall back to the whole image
            r0, c0 = 0, 0
            sub = owner_map == index + 1
            rows = np.flatnonzero(sub.any(axis=1))
            cols = np.flatnonzero(sub.any(axis=0))
        tight = np.array(
            [c0 + cols[0] - 0.5, r0 + rows[0] - 0.5, c0 + cols[-1] + 0.5, r0 + rows[-1] + 0.5]
        )
        inner = cv2.erode(sub.astype(np.uint8), np.ones((5, 5), np.uint8))
        candidates = np.flatnonzero(inner) if inner.any() else np.flatnonzero(sub)
        picks = rng.choice(candidates, size=min(num_points, candidates.size), replace=False)
        pr, pc = np.divmod(np.sort(picks), sub.shape[1])
        points = np.stack([c0 + pc, r0 + pr], axis=1).astype(np.float64)
        out.append(ObjectPixels(visible, own, tight, points))
    return out
