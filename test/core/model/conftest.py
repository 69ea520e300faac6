"""Fixtures of the model tests: tiny configs and collated batches of the dataset contract.

`make_batch` builds the same keys and shapes as llmi3d_core.data.dataset.collate_grounding, with
geometrically consistent targets (made with llmi3d_core.geometry) for boxes in front of a
640 x 480 camera.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from llmi3d_core import geometry
from llmi3d_core.model import LLMI3D, ModelConfig, get_preset

IMAGE_W, IMAGE_H = 640.0, 480.0


def build_batch(
    config: ModelConfig,
    size: int = 2,
    seed: int = 0,
    query_types: tuple[str, ...] = ("caption", "question"),
) -> dict[str, Any]:
    """A collated batch of `size` samples for `config`'s input sizes."""
    gen = torch.Generator().manual_seed(seed)
    side = config.low_res.image_size
    height, width = config.high_res.image_size
    K = torch.tensor([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]).expand(size, 3, 3).clone()

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(size).uniform_(low, high, generator=gen)

    center = torch.stack([uniform(-1, 1), uniform(-0.5, 0.5), uniform(2, 8)], dim=1)
    uv = geometry.project(center, K)
    yaw = torch.stack([torch.zeros(size), uniform(-3, 3), torch.zeros(size)], dim=1)
    R = geometry.euler_to_matrix(yaw)
    R_allo = geometry.egocentric_to_allocentric(R, uv[:, 0], uv[:, 1], K)
    zv = geometry.real_to_virtual_depth(center[:, 2], K[:, 0, 0], torch.full((size,), IMAGE_W))
    scale = torch.tensor([IMAGE_W, IMAGE_H, IMAGE_W, IMAGE_H])
    box = torch.stack([uv[:, 0] - 40, uv[:, 1] - 30, uv[:, 0] + 40, uv[:, 1] + 30], 1) / scale
    depth_map = torch.zeros(size, 1, height // 8, width // 8)
    depth_map[:, :, 2:5, 3:7] = zv.view(size, 1, 1, 1)
    return {
        "image_hr": torch.rand(size, 3, height, width, generator=gen),
        "image_lr": torch.rand(size, 3, side, side, generator=gen),
        "K": K,
        "image_size": torch.tensor([[IMAGE_W, IMAGE_H]] * size),
        "query": [f"find the lamp number {i}" for i in range(size)],
        "answer": ["lamp"] * size,
        "query_type": [query_types[i % len(query_types)] for i in range(size)],
        "query_id": [str(i) for i in range(size)],
        "novel_category": [False] * size,
        "camera_group": ["test"] * size,
        "box_prompt": torch.full((size, 4), float("nan")),
        "point_prompt": torch.full((size, 2), float("nan")),
        "center_uv": uv / torch.tensor([IMAGE_W, IMAGE_H]),
        "virtual_depth": zv[:, None],
        "dims_lwh": torch.tensor([[1.0, 0.5, 0.8]] * size),
        "rot6d_allo": geometry.matrix_to_rotation_6d(R_allo),
        "box2d": box,
        "depth_map": depth_map,
        "center_cam": center,
        "R_cam": R,
    }


@pytest.fixture(autouse=True)
def single_thread():
    """Run the tiny models on one thread, restored afterwards.

    Tiny tensors gain nothing from a second thread, and when other processes load the 2-core
    machine, torch's worker threads wait on each other: a 20 ms step was measured at 3.4 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_batch() -> Callable[..., dict[str, Any]]:
    """The `build_batch` function."""
    return build_batch


@pytest.fixture
def tiny_config() -> ModelConfig:
    """A fresh tiny preset."""
    return get_preset("tiny")


@pytest.fixture
def make_model() -> Callable[..., LLMI3D]:
    """Build a tiny model, optionally with dotted config overrides, seeded."""

    def make(seed: int = 0, **overrides: Any) -> LLMI3D:
        torch.manual_seed(seed)
        return LLMI3D(get_preset("tiny").replace(**overrides))

    return make
