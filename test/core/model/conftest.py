"""Fixtures of the model tests: tiny configs and collated batches of a small synthetic dataset.

Batches are not built by hand: a small IG3D-Synth set (8 images, VGA and KITTI-like cameras, all
query types) is generated once per session, and `make_batch` turns some of its queries into a
batch through llmi3d_core.data.dataset.GroundingDataset and collate_grounding, for the canvas,
categories and colours of the config it is given. The targets are therefore the dataset's
(letterboxed canvas, dense heatmap, cell assignment, per-object arrays). A second small set
(MIXED_SYNTH) adds a negative and a multi-target query an image, for `make_mixed_batch`.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from llmi3d_core.data.dataset import GroundingDataset, collate_grounding
from llmi3d_core.data.format import Dataset, QueryRecord
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset
from llmi3d_core.data.synth.query_config import QueryConfig
from llmi3d_core.model import LLMI3D, ModelConfig, get_preset

MODEL_SYNTH = SynthConfig(num_images=8, seed=0, camera_groups=("vga_normal", "kitti_like"))
# with a negative and a multi-target query an image ("not here", "all the chairs")
MIXED_SYNTH = SynthConfig(
    num_images=4,
    seed=3,
    camera_groups=("vga_normal",),
    split_fractions=(1.0, 0.0, 0.0),
    queries=QueryConfig(negatives_per_image=1, multi_target_per_image=1),
)
# the query keys that carry the target (removing them gives an inference batch)
TARGET_KEYS = (
    "center_uv", "virtual_depth", "dims_lwh", "rot6d_allo", "box2d", "keypoints", "center_cam",
    "R_cam", "target_index", "target_mask",
)  # fmt: skip


def build_batch(
    dataset: Dataset,
    config: ModelConfig,
    size: int = 2,
    seed: int = 0,
    query_types: Sequence[str] = ("caption", "question"),
    split: str = "train",
) -> dict[str, Any]:
    """A collated batch of `size` queries of `dataset` for `config`.

    Sample i is a query of type query_types[i % len(query_types)], drawn with `seed` (distinct
    queries while the type has enough of them).
    """
    queries = GroundingDataset(dataset.root, split, config, dataset=dataset)
    rng = random.Random(seed)
    pools = {}
    for kind in sorted(set(query_types)):
        pool = [i for i, q in enumerate(queries.queries) if q.type == kind]
        assert pool, f"the test dataset's {split} split has no {kind} query"
        rng.shuffle(pool)
        pools[kind] = pool
    picked = []
    for i in range(size):
        pool = pools[query_types[i % len(query_types)]]
        picked.append(pool[(i // len(query_types)) % len(pool)])
    return collate_grounding([queries[i] for i in picked])


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The session's small synthetic dataset (generated once, ~0.5 s)."""
    root = tmp_path_factory.mktemp("model_synth") / "synth"
    generate_dataset(MODEL_SYNTH, root, progress=False)
    return read_dataset(root)


@pytest.fixture(scope="session")
def mixed_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """A small synthetic dataset with negative and multi-target queries (MIXED_SYNTH)."""
    root = tmp_path_factory.mktemp("model_mixed") / "synth"
    generate_dataset(MIXED_SYNTH, root, progress=False)
    return read_dataset(root)


# the kinds of query `make_mixed_batch` picks, by their number of targets
QUERY_KINDS: dict[str, Callable[[QueryRecord], bool]] = {
    "single": lambda q: len(q.target_object_ids) == 1,
    "multi": lambda q: q.is_multi_target,
    "negative": lambda q: q.is_negative,
}


def build_mixed_batch(
    dataset: Dataset,
    config: ModelConfig,
    kinds: Sequence[str] = ("single", "multi", "negative"),
    accept: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """A collated batch of one training query per entry of `kinds` (QUERY_KINDS), in order.

    Each is the first query of its kind (whose item `accept` takes, when given) not yet picked.
    """
    queries = GroundingDataset(dataset.root, "train", config, dataset=dataset)
    picked: list[int] = []
    for kind in kinds:
        for index, query in enumerate(queries.queries):
            if index in picked or not QUERY_KINDS[kind](query):
                continue
            if accept is None or accept(queries.get(index)):
                picked.append(index)
                break
        else:
            raise AssertionError(f"the mixed test dataset has no (further) {kind} query")
    return collate_grounding([queries.get(i) for i in picked])


@pytest.fixture(scope="session")
def make_mixed_batch(mixed_dataset: Dataset) -> Callable[..., dict[str, Any]]:
    """`build_mixed_batch` on the mixed dataset: make_mixed_batch(config, kinds, accept)."""
    return functools.partial(build_mixed_batch, mixed_dataset)


@pytest.fixture(scope="session")
def data_config(synth_dataset: Dataset) -> ModelConfig:
    """The tiny preset with the dataset's training categories and colours (as `llmi3d train`)."""
    from llmi3d_core.train_config import DataConfig, TrainConfig
    from llmi3d_core.train_stages import model_config_for_data

    config = TrainConfig(data=DataConfig(root=str(synth_dataset.root)))
    return model_config_for_data(config, synth_dataset)


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


@pytest.fixture(scope="session")
def make_batch(synth_dataset: Dataset) -> Callable[..., dict[str, Any]]:
    """`build_batch` on the session's dataset: make_batch(config, size=2, seed=0, ...)."""
    return functools.partial(build_batch, synth_dataset)


@pytest.fixture(scope="session")
def without_targets() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Drop a batch's target keys: what `forward` sees at inference."""

    def strip(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if k not in TARGET_KEYS}

    return strip


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
