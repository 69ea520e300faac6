"""Non-learned 3D grounding baselines, fitted on the training split and scored like the model.

Two baselines bound what the learned model must beat:

* ``mean_box``: every query gets the same box, the mean of the training targets (centre, size
  and the chordal mean rotation). It measures how much a dataset's box statistics alone give.
* ``backproject``: the paper's "2D grounding + back-projection" baseline (TransVG + backproj):
  the target's 2D box centre (u, v) is back-projected at a depth Z, the size is the mean size of
  the target's category and the rotation the category's mean allocentric rotation turned
  egocentric along the ray through (u, v):

      Z = mean training depth of the category         (depth = "category_mean", the paper)
      Z = f_y * H_cat / h_2d                          (depth = "height": pinhole from the size)
      centre = backproject(u, v, Z, K)

  The 2D box and category are the annotated ones (an oracle 2D grounder: a perfect TransVG),
  so this is an upper bound of that family. Categories without training targets (novel ones)
  use the statistics of all training targets.

Both fit on the single-target queries of the fitting split and give exactly one box for every
query: they never answer "not here". For a multi-target query `backproject` boxes the first
target; for a negative one (no 2D box to back-project) it puts the named category's prior box
on the ray through the principal point.

A fitted baseline is a small JSON file (`BASELINE_FILE`) inside a checkpoint-like directory, so
`llmi3d eval --checkpoint runs/baseline_mean_box/best` evaluates it like a model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from llmi3d_core import geometry, rotation
from llmi3d_core.data.format import Dataset, ObjectRecord, QueryRecord
from llmi3d_core.errors import CheckpointError, InvalidInputError
from llmi3d_core.geometry import Box3D

__all__ = [
    "BASELINES",
    "BASELINE_FILE",
    "BackprojectBaseline",
    "Baseline",
    "MeanBoxBaseline",
    "fit_baseline",
    "load_baseline",
    "mean_rotation",
    "normalize_baseline_name",
]

BASELINE_FILE = "baseline.json"


class Baseline(Protocol):
    """What evaluation needs of a baseline."""

    name: str

    def predict(self, dataset: Dataset, query: QueryRecord) -> tuple[Box3D, str]:
        """Return the predicted box and its label for one query."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `BASELINE_FILE`."""
        ...


def mean_rotation(rotations: np.ndarray) -> np.ndarray:
    """Chordal L2 mean of rotation matrices: the rotation nearest to their arithmetic mean.

    Args:
        rotations: (N, 3, 3) rotation matrices, N >= 1.

    Returns:
        (3, 3) proper rotation (det +1), the SVD projection of mean(R) onto SO(3).
    """
    mean = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3).mean(axis=0)  # (3, 3)
    u, _, vt = np.linalg.svd(mean)
    fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    out: np.ndarray = u @ fix @ vt
    return out


def _single_target(queries: Sequence[QueryRecord]) -> list[QueryRecord]:
    """The queries with exactly one target (what a box prior can be averaged over)."""
    return [q for q in queries if len(q.target_object_ids) == 1]


def _training_targets(dataset: Dataset, queries: Sequence[QueryRecord]) -> list[ObjectRecord]:
    """The target of each query (single-target queries only; negatives have none).

    Raises:
        InvalidInputError: when there is no single-target query to fit on.
    """
    single = _single_target(queries)
    if not single:
        raise InvalidInputError(
            f"cannot fit a baseline on {dataset.root}: the fitting split has no queries "
            f"(with exactly one target; {len(queries)} given)"
        )
    return [dataset.target(q) for q in single]


def _allocentric(obj: ObjectRecord, K: np.ndarray) -> np.ndarray:
    u, v = obj.center_2D
    out: np.ndarray = rotation.egocentric_to_allocentric(obj.R_cam, float(u), float(v), K)
    return out


@dataclass
class MeanBoxBaseline:
    """The same box for every query: mean training centre, size and rotation (camera frame).

    Attributes:
        center: (3,) metres.
        dims_lwh: (3,) (L, W, H) metres.
        R: (3, 3) egocentric rotation.
    """

    center: np.ndarray
    dims_lwh: np.ndarray
    R: np.ndarray
    name: str = "mean_box"

    @classmethod
    def fit(cls, dataset: Dataset, queries: Sequence[QueryRecord]) -> MeanBoxBaseline:
        """Average the targets of the single-target `queries` (one per query).

        Raises:
            InvalidInputError: when `queries` is empty.
        """
        targets = _training_targets(dataset, queries)
        return cls(
            center=np.mean([t.center_cam for t in targets], axis=0),
            dims_lwh=np.mean([t.dims_lwh for t in targets], axis=0),
            R=mean_rotation(np.stack([t.R_cam for t in targets])),
        )

    def predict(self, dataset: Dataset, query: QueryRecord) -> tuple[Box3D, str]:
        """The mean box, labelled "mean box" (the query is not looked at)."""
        del dataset, query
        return Box3D(self.center, self.dims_lwh, self.R), "mean box"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `BASELINE_FILE`."""
        return {
            "method": self.name,
            "center": self.center.tolist(),
            "dims_lwh": self.dims_lwh.tolist(),
            "R": self.R.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeanBoxBaseline:
        """Inverse of `to_dict`."""
        return cls(
            center=np.asarray(data["center"], dtype=np.float64),
            dims_lwh=np.asarray(data["dims_lwh"], dtype=np.float64),
            R=np.asarray(data["R"], dtype=np.float64),
        )


@dataclass
class CategoryPrior:
    """Training statistics of one category (or of all targets, the fallback).

    Attributes:
        dims_lwh: (3,) mean (L, W, H) metres.
        depth_m: mean Z of the box centre, metres.
        R_allo: (3, 3) chordal mean allocentric rotation.
        count: training targets averaged.
    """

    dims_lwh: np.ndarray
    depth_m: float
    R_allo: np.ndarray
    count: int

    @classmethod
    def from_targets(cls, targets: Sequence[tuple[ObjectRecord, np.ndarray]]) -> CategoryPrior:
        """Average (object, K) pairs."""
        return cls(
            dims_lwh=np.mean([o.dims_lwh for o, _ in targets], axis=0),
            depth_m=float(np.mean([o.center_cam[2] for o, _ in targets])),
            R_allo=mean_rotation(np.stack([_allocentric(o, k) for o, k in targets])),
            count=len(targets),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "dims_lwh": self.dims_lwh.tolist(),
            "depth_m": self.depth_m,
            "R_allo": self.R_allo.tolist(),
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CategoryPrior:
        """Inverse of `to_dict`."""
        return cls(
            dims_lwh=np.asarray(data["dims_lwh"], dtype=np.float64),
            depth_m=float(data["depth_m"]),
            R_allo=np.asarray(data["R_allo"], dtype=np.float64),
            count=int(data["count"]),
        )


@dataclass
class BackprojectBaseline:
    """2D box centre back-projected at a category depth, with category size and rotation.

    Attributes:
        categories: category name -> its training prior.
        fallback: prior of all training targets, for unseen categories.
        box2d: "gt" (annotated tight 2D box) or "proj" (projected 3D box).
        depth: "category_mean" or "height" (see the module docstring).
    """

    categories: dict[str, CategoryPrior]
    fallback: CategoryPrior
    box2d: str = "gt"
    depth: str = "category_mean"
    name: str = "backproject"

    @classmethod
    def fit(
        cls,
        dataset: Dataset,
        queries: Sequence[QueryRecord],
        *,
        box2d: str = "gt",
        depth: str = "category_mean",
    ) -> BackprojectBaseline:
        """Per-category means over the targets of the single-target `queries`.

        Raises:
            InvalidInputError: when `queries` is empty or an option is unknown.
        """
        if box2d not in ("gt", "proj") or depth not in ("category_mean", "height"):
            raise InvalidInputError(
                f"backproject options box2d={box2d!r}, depth={depth!r}; allowed: box2d in "
                "(gt, proj), depth in (category_mean, height)"
            )
        targets = _training_targets(dataset, queries)
        single = _single_target(queries)
        pairs = [(t, dataset.image(q.image_id).K) for t, q in zip(targets, single, strict=True)]
        by_category: dict[str, list[tuple[ObjectRecord, np.ndarray]]] = {}
        for obj, K in pairs:
            by_category.setdefault(obj.category_name, []).append((obj, K))
        return cls(
            categories={c: CategoryPrior.from_targets(p) for c, p in sorted(by_category.items())},
            fallback=CategoryPrior.from_targets(pairs),
            box2d=box2d,
            depth=depth,
        )

    def predict(self, dataset: Dataset, query: QueryRecord) -> tuple[Box3D, str]:
        """Back-project the target's 2D box centre; label = the target's category.

        A multi-target query uses its first target; a negative query (nothing to back-project)
        the prior of the category it names, at its depth, on the ray through the principal
        point.
        """
        image = dataset.image(query.image_id)
        targets = dataset.targets(query)
        if not targets:
            prior = self.categories.get(query.answer, self.fallback)
            u, v = float(image.K[0, 2]), float(image.K[1, 2])
            center = geometry.backproject(u, v, prior.depth_m, image.K)
            R = rotation.allocentric_to_egocentric(prior.R_allo, u, v, image.K)
            return Box3D(center, prior.dims_lwh, R), query.answer
        target = targets[0]
        prior = self.categories.get(target.category_name, self.fallback)
        x1, y1, x2, y2 = target.bbox2D_tight if self.box2d == "gt" else target.bbox2D_proj
        u, v = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        if self.depth == "height":
            h_px = max(float(y2 - y1), 1.0)
            z = float(geometry.height_depth(float(prior.dims_lwh[2]), h_px, float(image.K[1, 1])))
        else:
            z = prior.depth_m
        center = geometry.backproject(u, v, z, image.K)
        R = rotation.allocentric_to_egocentric(prior.R_allo, u, v, image.K)
        return Box3D(center, prior.dims_lwh, R), target.category_name

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `BASELINE_FILE`."""
        return {
            "method": self.name,
            "box2d": self.box2d,
            "depth": self.depth,
            "fallback": self.fallback.to_dict(),
            "categories": {c: p.to_dict() for c, p in self.categories.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackprojectBaseline:
        """Inverse of `to_dict`."""
        return cls(
            categories={c: CategoryPrior.from_dict(p) for c, p in data["categories"].items()},
            fallback=CategoryPrior.from_dict(data["fallback"]),
            box2d=str(data["box2d"]),
            depth=str(data["depth"]),
        )


BASELINES: dict[str, Any] = {"mean_box": MeanBoxBaseline, "backproject": BackprojectBaseline}


def normalize_baseline_name(name: str) -> str:
    """'mean-box' -> 'mean_box' (the CLI spells names with hyphens).

    Raises:
        InvalidInputError: for an unknown baseline.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in BASELINES:
        allowed = ", ".join(k.replace("_", "-") for k in BASELINES)
        raise InvalidInputError(f"unknown baseline {name!r}; available: {allowed}")
    return key


def fit_baseline(
    name: str,
    dataset: Dataset,
    queries: Sequence[QueryRecord],
    *,
    box2d: str = "gt",
    depth: str = "category_mean",
) -> Baseline:
    """Fit baseline `name` ("mean_box"/"mean-box" or "backproject") on `queries`.

    Raises:
        InvalidInputError: unknown name or option, or no queries.
    """
    key = normalize_baseline_name(name)
    if key == "mean_box":
        return MeanBoxBaseline.fit(dataset, queries)
    return BackprojectBaseline.fit(dataset, queries, box2d=box2d, depth=depth)


def save_baseline(baseline: Baseline, directory: str | Path) -> Path:
    """Write `BASELINE_FILE` into `directory` (created); return the file path."""
    path = Path(directory) / BASELINE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(baseline.to_dict(), indent=1) + "\n", encoding="utf-8")
    return path


def is_baseline_dir(directory: str | Path) -> bool:
    """True when `directory` holds a fitted baseline rather than a model checkpoint."""
    return (Path(directory) / BASELINE_FILE).is_file()


def load_baseline(directory: str | Path) -> Baseline:
    """Read a baseline written by `save_baseline`.

    Raises:
        CheckpointError: missing or malformed file, or an unknown method.
    """
    path = Path(directory) / BASELINE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cls = BASELINES[data["method"]]
        baseline: Baseline = cls.from_dict(data)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found (not a baseline directory)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a valid baseline file ({err!r})") from None
    return baseline
