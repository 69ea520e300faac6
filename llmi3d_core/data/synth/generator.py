"""IG3D-Synth: a deterministic synthetic benchmark for single-image 3D grounding.

    llmi3d data synth --out data/synth --num-images 500 --seed 0
    llmi3d data synth --out data/synth_vga --num-images 200 --camera-groups vga_normal,vga_wide
    llmi3d data synth --out data/synth_neg --num-images 400 --negatives-per-image 1 \
        --multi-target-per-image 1

Each image is a room or a street seen by a camera of one of several groups (640x480, KITTI-like
1242x375, nuScenes-like 1600x900; f_x 300-1600 px; varying height and pitch), with 3-12 objects
of 25 categories standing on the ground. Objects are built from primitives (shapes.py), drawn
with Lambert shading in painter's order (render.py), and annotated with Omni3D-style ground
truth; queries (captions with attributes and relations, common-sense questions, 2D box and point
prompts; on request negative queries and multi-target captions) come from `queries`. The
output follows docs/dataset_format.md.

Determinism: image i is a pure function of (seed, i) (its own `numpy.random.Generator`), so the
same seed gives byte-identical files, with or without worker processes.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from llmi3d_core.data.format import SPLITS, DatasetInfo, ImageRecord, ObjectRecord, QueryRecord
from llmi3d_core.data.synth.queries import make_queries
from llmi3d_core.data.synth.query_config import QueryConfig
from llmi3d_core.data.synth.render import (
    Canvas,
    ObjectInstance,
    ObjectPixels,
    clip_polygon_near,
    draw_object,
    measure_objects,
)
from llmi3d_core.data.synth.scene import (
    CAMERA_GROUPS,
    Scene,
    rotation_y,
    sample_scene,
)
from llmi3d_core.data.synth.shapes import CATEGORIES, build_mesh
from llmi3d_core.data.writer import DatasetWriter, encode_image, image_file_name
from llmi3d_core.errors import ConfigError

GENERATOR_VERSION = 1
_LATER_QUERY_COUNTS = ("negatives_per_image", "multi_target_per_image")


@dataclass
class SynthConfig:
    """Everything that decides an IG3D-Synth dataset (stored in dataset.json's "generator").

    Attributes:
        num_images: images to generate.
        seed: master seed; image i uses the generator seeded with [seed, i].
        camera_groups: names of scene.CAMERA_GROUPS to draw from (uniformly).
        indoor_objects: (min, max) objects attempted in a room.
        street_objects: (min, max) objects attempted in a street.
        novel_fraction: share of categories held out of training (open-vocabulary split).
        novel_seed: the seed that draws the held-out categories; None = `seed`. A test set made
            with a new seed for a model trained on another set keeps that set's held-out
            categories by naming its seed here.
        split_fractions: (train, val, test) shares of images.
        min_visible_px: objects with fewer visible pixels are removed from the scene.
        min_visibility: objects less visible than this are removed from the scene.
        image_suffix: ".png" (lossless) or ".jpg".
        queries: how many queries of each kind an image gets.
    """

    num_images: int = 100
    seed: int = 0
    camera_groups: tuple[str, ...] = tuple(CAMERA_GROUPS)
    indoor_objects: tuple[int, int] = (3, 8)
    street_objects: tuple[int, int] = (4, 12)
    novel_fraction: float = 0.2
    novel_seed: int | None = None
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    min_visible_px: int = 24
    min_visibility: float = 0.05
    image_suffix: str = ".png"
    queries: QueryConfig = field(default_factory=QueryConfig)

    def __post_init__(self) -> None:
        if self.num_images < 0:
            raise ConfigError(f"num_images must be >= 0, got {self.num_images}")
        unknown = [g for g in self.camera_groups if g not in CAMERA_GROUPS]
        if unknown or not self.camera_groups:
            raise ConfigError(
                f"camera_groups {list(self.camera_groups)}: unknown {unknown}; "
                f"available: {sorted(CAMERA_GROUPS)}"
            )
        if not 0.0 <= self.novel_fraction < 1.0:
            raise ConfigError(f"novel_fraction must be in [0, 1), got {self.novel_fraction}")
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
            raise ConfigError(
                f"split_fractions must be 3 shares >= 0 summing to 1 (train, val, test), "
                f"got {fractions}"
            )
        for name in ("indoor_objects", "street_objects"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ConfigError(f"{name} must be (min, max) with 1 <= min <= max, got {lo, hi}")
        if self.image_suffix not in (".png", ".jpg"):
            raise ConfigError(f"image_suffix must be '.png' or '.jpg', got {self.image_suffix!r}")


def novel_categories(seed: int, fraction: float) -> list[str]:
    """The held-out categories of a seed: `fraction` of each scene's exclusive categories.

    Drawn per scene kind (indoor-only, street-only, shared) so both rooms and streets have
    novel objects. Sorted by name.
    """
    rng = np.random.default_rng([seed, 0x0A0E1])
    groups: dict[tuple[str, ...], list[str]] = {}
    for category in CATEGORIES:
        groups.setdefault(category.scenes, []).append(category.name)
    total = round(fraction * len(CATEGORIES))
    chosen: list[str] = []
    # Largest groups first, shares rounded so the total is exact.
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    remaining = total
    for index, (_, names) in enumerate(ordered):
        left = sum(len(n) for _, n in ordered[index:])
        take = min(len(names), round(remaining * len(names) / left)) if left else 0
        chosen += [str(n) for n in rng.choice(names, size=take, replace=False)]
        remaining -= take
    return sorted(chosen)


# ----------------------------------------------------------------------------------------------
# Rendering one scene
# ----------------------------------------------------------------------------------------------


@dataclass
class RenderedScene:
    """A drawn scene: picture, owner map and per-object ground truth (same order as objects)."""

    image: np.ndarray
    owner: np.ndarray
    centers: list[np.ndarray]
    rotations: list[np.ndarray]
    corners: list[np.ndarray]
    proj_boxes: list[np.ndarray]
    truncations: list[float]
    pixels: list[ObjectPixels]


def _fill_level_polygons(
    canvas: Canvas,
    polygons: list[tuple[np.ndarray, tuple[int, int, int]]],
    R: np.ndarray,
    K: np.ndarray,
) -> None:
    """Fill level-frame polygons in order: pitch, clip at the near plane, one batched projection."""
    from llmi3d_core.geometry import project  # noqa: PLC0415 (torch-free generator workers)

    clipped = [(clip_polygon_near(points @ R.T), color) for points, color in polygons]
    clipped = [(points, color) for points, color in clipped if len(points) >= 3]
    if not clipped:
        return
    uv = project(np.concatenate([p for p, _ in clipped]), K, validate=False)  # (N, 2)
    start = 0
    for points, color in clipped:
        canvas.fill(uv[start : start + len(points)], color)
        start += len(points)


def _draw_background(canvas: Canvas, scene: Scene) -> None:
    from llmi3d_core.geometry import project  # noqa: PLC0415 (torch-free generator workers)

    camera, bg = scene.camera, scene.background
    R, K = camera.R_level_to_cam, camera.K
    if bg.sky is not None:
        top, bottom = np.asarray(bg.sky[0], float), np.asarray(bg.sky[1], float)
        band = 8
        for row in range(0, camera.height, band):
            t = row / max(camera.height - 1, 1)
            color = np.clip(top + (bottom - top) * t, 0, 255)
            canvas.rows(row, row + band, (int(color[0]), int(color[1]), int(color[2])))
    _fill_level_polygons(canvas, bg.polygons, R, K)
    segments = [(clip_polygon_near(np.stack([p, q]) @ R.T), c, t) for p, q, c, t in bg.lines]
    segments = [s for s in segments if len(s[0]) == 2]  # a 2-gon clips like a segment
    if segments:
        uv = project(np.concatenate([s for s, _, _ in segments]), K, validate=False)
        for k, (_, color, thickness) in enumerate(segments):
            canvas.line(uv[2 * k], uv[2 * k + 1], color, thickness)
    _fill_level_polygons(canvas, bg.overlays, R, K)


def _draw_shadows(canvas: Canvas, scene: Scene, keep: list[int]) -> None:
    camera = scene.camera
    light = scene.light_level
    shadows: list[tuple[np.ndarray, tuple[int, int, int]]] = []
    horizontal = np.array([light[0], light[2]])
    horizontal = horizontal / max(float(np.linalg.norm(horizontal)), 1e-6)
    for index in keep:
        obj = scene.objects[index]
        shift = -horizontal * 0.12 * obj.dims_lwh[2]  # away from the light
        foot = obj.footprint(grow=0.04 * float(max(obj.dims_lwh[:2]))) + shift
        points = np.column_stack([foot[:, 0], np.full(4, camera.height_m - 0.002), foot[:, 1]])
        ground = scene.background.ground_color_at(*obj.ground_xz)
        shadows.append(
            (points, (int(ground[0] * 0.62), int(ground[1] * 0.62), int(ground[2] * 0.62)))
        )
    _fill_level_polygons(canvas, shadows, camera.R_level_to_cam, camera.K)


def render_scene(scene: Scene, keep: list[int], rng: np.random.Generator) -> RenderedScene:
    """Draw the background, shadows and the objects `keep` (indices into scene.objects).

    Returns ground truth for the kept objects in the order of `keep`.
    """
    from llmi3d_core.geometry import box3d_corners, project  # noqa: PLC0415 (torch-free generator workers)

    camera = scene.camera
    R_lc, K = camera.R_level_to_cam, camera.K
    canvas = Canvas(camera.width, camera.height, clear_color=(128, 128, 128))
    _draw_background(canvas, scene)
    _draw_shadows(canvas, scene, keep)
    light_cam = R_lc @ scene.light_level
    up_cam = R_lc @ np.array([0.0, -1.0, 0.0])
    centers, rotations, corners, proj_boxes, truncations = [], [], [], [], []
    instances = []
    for index in keep:
        obj = scene.objects[index]
        center = R_lc @ obj.center_level(camera.height_m)
        R_cam = R_lc @ rotation_y(obj.yaw)
        box = box3d_corners(center, obj.dims_lwh, R_cam)  # (8, 3)
        uv = project(box, K)  # (8, 2)
        lo, hi = uv.min(axis=0), uv.max(axis=0)
        limit = np.array([camera.width - 0.5, camera.height - 0.5])
        clo, chi = np.clip(lo, -0.5, limit), np.clip(hi, -0.5, limit)
        area = float(np.prod(hi - lo))
        inside = float(np.prod(np.clip(chi - clo, 0, None)))
        centers.append(center)
        rotations.append(R_cam)
        corners.append(box)
        proj_boxes.append(np.concatenate([clo, chi]))
        truncations.append(float(np.clip(1.0 - inside / area, 0.0, 1.0)) if area > 0 else 1.0)
        instances.append(
            ObjectInstance(
                mesh=build_mesh(obj.category.name),
                dims_lwh=obj.dims_lwh,
                R_cam=R_cam,
                center_cam=center,
                part_colors=obj.part_colors,
                material=obj.material,
            )
        )
    # Painter's order: farthest footprint first (footprints never overlap).
    distance = [
        float(np.min(np.hypot(*scene.objects[i].footprint().T))) for i in keep
    ]  # horizontal distance of the nearest footprint corner
    polygons: list[list[np.ndarray]] = [[] for _ in keep]
    for slot in sorted(range(len(keep)), key=lambda s: -distance[s]):
        polygons[slot] = draw_object(
            canvas, instances[slot], slot + 1, K, light_cam=light_cam, up_cam=up_cam
        )
    image, owner = canvas.image, canvas.owner
    pixels = measure_objects(owner, polygons, proj_boxes, rng)
    return RenderedScene(image, owner, centers, rotations, corners, proj_boxes, truncations, pixels)


def render_until_visible(
    scene: Scene, rng: np.random.Generator, min_visible_px: int, min_visibility: float
) -> tuple[list[int], RenderedScene]:
    """Render, drop objects that are (almost) hidden, and render again until none is.

    A hidden object is removed from the scene rather than left unannotated in the picture.
    """
    keep = list(range(len(scene.objects)))
    while True:
        rendered = render_scene(scene, keep, rng)
        ok = [
            p.visible_px >= min_visible_px and p.visibility >= min_visibility
            for p in rendered.pixels
        ]
        if all(ok):
            return keep, rendered
        keep = [index for index, good in zip(keep, ok, strict=True) if good]


# ----------------------------------------------------------------------------------------------
# One image: scene -> records
# ----------------------------------------------------------------------------------------------


def _split_of(rng: np.random.Generator, fractions: tuple[float, float, float]) -> str:
    draw = rng.random()
    cumulative = np.cumsum(fractions)
    return SPLITS[int(np.searchsorted(cumulative, draw, side="right").clip(0, 2))]


def generate_image(
    config: SynthConfig, index: int, novel: frozenset[str]
) -> tuple[ImageRecord, np.ndarray, list[QueryRecord]]:
    """Generate image `index` of a dataset: its record, picture (H, W, 3) RGB and queries."""
    rng = np.random.default_rng([config.seed, index])
    split = _split_of(rng, config.split_fractions)
    group = CAMERA_GROUPS[config.camera_groups[int(rng.integers(len(config.camera_groups)))]]
    kind = "street" if rng.random() < group.street_share else "indoor"
    objects_range = config.street_objects if kind == "street" else config.indoor_objects
    for _attempt in range(20):  # a scene where nothing could be placed or seen is drawn again
        scene = sample_scene(group, rng, objects_range=objects_range, kind=kind)
        keep, rendered = render_until_visible(
            scene, rng, config.min_visible_px, config.min_visibility
        )
        if keep:
            break
    from llmi3d_core.geometry import project  # noqa: PLC0415 (torch-free generator workers)

    image_id = f"{index:06d}"
    camera = scene.camera
    objects = []
    for slot, object_index in enumerate(keep):
        obj = scene.objects[object_index]
        pixels = rendered.pixels[slot]
        assert pixels.tight_box is not None  # guaranteed by render_until_visible
        length, width, height = obj.dims_lwh
        objects.append(
            ObjectRecord(
                object_id=f"{image_id}_{slot:02d}",
                category_name=obj.category.name,
                attributes={"color": obj.color, "size": obj.size_word, "material": obj.material},
                center_cam=rendered.centers[slot],
                dimensions=np.array([width, height, length]),
                R_cam=rendered.rotations[slot],
                bbox2D_tight=pixels.tight_box,
                bbox2D_proj=rendered.proj_boxes[slot],
                bbox3D_cam=rendered.corners[slot],
                center_2D=project(rendered.centers[slot], camera.K),
                visibility=pixels.visibility,
                truncation=rendered.truncations[slot],
            )
        )
    record = ImageRecord(
        image_id=image_id,
        file_name=image_file_name(image_id, config.image_suffix),
        width=camera.width,
        height=camera.height,
        K=camera.K,
        scene=scene.kind,
        camera_group=camera.group,
        objects=objects,
        extra={
            "camera_height_m": camera.height_m,
            "camera_pitch_deg": math.degrees(camera.pitch_rad),
        },
    )
    points = {o.object_id: rendered.pixels[s].points for s, o in enumerate(objects)}
    queries = make_queries(record, points, split, novel, rng, config=config.queries)
    return record, rendered.image, queries


def _generate_encoded(
    args: tuple[SynthConfig, int, frozenset[str]],
) -> tuple[ImageRecord, bytes, list[QueryRecord]]:
    config, index, novel = args
    record, image, queries = generate_image(config, index, novel)
    return record, encode_image(image, config.image_suffix), queries


def _iter_generated(
    config: SynthConfig, novel: frozenset[str], workers: int
) -> Iterator[tuple[ImageRecord, bytes, list[QueryRecord]]]:
    jobs = ((config, index, novel) for index in range(config.num_images))
    if workers <= 1:
        yield from map(_generate_encoded, jobs)
        return
    # spawn, not Linux's default fork: a caller may run threads (a ROS node's DDS threads, the
    # OpenMP pool of torch) whose locks a forked child inherits held, and then waits on forever.
    # CI once hung 90 min in the one test that ran this pool after the ROS tests (not
    # reproduced here). Like every spawn pool, it needs a calling script's work under
    # `if __name__ == "__main__":`.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_generate_encoded, jobs, chunksize=4)


def dataset_info(config: SynthConfig, novel: list[str]) -> DatasetInfo:
    """dataset.json contents of an IG3D-Synth dataset."""
    groups = {}
    for name in config.camera_groups:
        g = CAMERA_GROUPS[name]
        groups[name] = {
            "domain": g.domain,
            "width": g.width,
            "height": g.height,
            "fx_range": list(g.fx_range),
            "description": g.description,
        }
    config_dict = asdict(config)
    # Counts of the query kinds added later are stored only when used, so that a dataset made
    # with the defaults keeps the dataset.json (and so the bytes) it had before they existed.
    for name in _LATER_QUERY_COUNTS:
        if not config_dict["queries"][name]:
            del config_dict["queries"][name]
    if config_dict["novel_seed"] is None:  # likewise
        del config_dict["novel_seed"]
    generator: dict[str, Any] = {
        "program": "llmi3d data synth",
        "version": GENERATOR_VERSION,
        "config": config_dict,
        "size_priors_lwh": {c.name: list(c.dims_lwh) for c in CATEGORIES},
    }
    return DatasetInfo(
        name="ig3d-synth",
        seed=config.seed,
        categories=sorted(c.name for c in CATEGORIES),
        novel_categories=novel,
        camera_groups=groups,
        generator=generator,
    )


def generate_dataset(
    config: SynthConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write a whole IG3D-Synth dataset to `out`; return the directory.

    Args:
        config: what to generate.
        out: dataset directory (created).
        overwrite: replace a dataset already there.
        workers: processes rendering in parallel (output is identical for any count).
        progress: show a tqdm progress bar.

    Raises:
        ConfigError: bad configuration. InvalidInputError: `out` holds a dataset and not overwrite.
    """
    novel_seed = config.seed if config.novel_seed is None else config.novel_seed
    novel = novel_categories(novel_seed, config.novel_fraction)
    novel_set = frozenset(novel)
    info = dataset_info(config, novel)
    with DatasetWriter(out, info, overwrite=overwrite) as writer:
        generated = _iter_generated(config, novel_set, workers)
        for record, encoded, queries in tqdm(
            generated, total=config.num_images, disable=not progress, unit="img", desc="synth"
        ):
            writer.add_image(record, encoded=encoded)
            for query in queries:
                writer.add_query(query)
    return Path(out)


# ----------------------------------------------------------------------------------------------
# CLI: llmi3d data synth
# ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llmi3d data synth`."""
    defaults = SynthConfig()
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    parser.add_argument("--num-images", type=int, default=defaults.num_images)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--camera-groups",
        default=",".join(defaults.camera_groups),
        help=f"comma-separated camera groups (available: {', '.join(CAMERA_GROUPS)})",
    )
    parser.add_argument("--novel-fraction", type=float, default=defaults.novel_fraction)
    parser.add_argument(
        "--novel-seed",
        type=int,
        default=None,
        help="seed of the held-out categories (default: --seed); give a training set's seed to "
        "make a test set with new images but the same held-out categories",
    )
    parser.add_argument(
        "--negatives-per-image",
        type=int,
        default=defaults.queries.negatives_per_image,
        help="negative queries per image: the object named is not there (answer: not here)",
    )
    parser.add_argument(
        "--multi-target-per-image",
        type=int,
        default=defaults.queries.multi_target_per_image,
        help='multi-target captions per image ("all the chairs", "the cars on the left")',
    )
    parser.add_argument("--jpg", action="store_true", help="write JPEG instead of PNG pictures")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (same output)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run `llmi3d data synth`."""
    config = SynthConfig(
        num_images=args.num_images,
        seed=args.seed,
        camera_groups=tuple(g.strip() for g in args.camera_groups.split(",") if g.strip()),
        novel_fraction=args.novel_fraction,
        novel_seed=args.novel_seed,
        image_suffix=".jpg" if args.jpg else ".png",
        queries=QueryConfig(
            negatives_per_image=args.negatives_per_image,
            multi_target_per_image=args.multi_target_per_image,
        ),
    )
    start = time.perf_counter()
    out = generate_dataset(
        config,
        args.out,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - start
    rate = config.num_images / elapsed if elapsed > 0 else float("inf")
    print(f"wrote {config.num_images} images to {out} in {elapsed:.1f} s ({rate:.1f} images/s)")
    return 0
