"""A tiny model can overfit a handful of images: the detector stage, then the pointer stage.

Not a benchmark: a model that cannot fit 6 training images has a bug in its losses, targets or
read-out (a wrong sign, a target in the wrong frame, a detached tensor). Each stage trains full
batch on one CPU thread in a few seconds, with the stage tasks `llmi3d train` uses
(train_stages.DetectorTask and PointerTask).
"""

from __future__ import annotations

import copy

import pytest
import torch

from llmi3d_core.data.dataset import GroundingDataset, ImageDataset, collate_grounding
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset
from llmi3d_core.model import LLMI3D, format_query
from llmi3d_core.model.detector import peaks
from llmi3d_core.train_config import DataConfig, StageConfig, TrainConfig
from llmi3d_core.train_stages import (
    DetectorTask,
    PointerTask,
    model_config_for_data,
    size_priors,
)

REGRESSION_TERMS = ("center_uv", "dims", "rotation", "box2d", "keypoints", "category", "color")


def _fit(task, model, batch, steps: int, lr: float) -> tuple[dict[str, float], dict[str, float]]:
    """Full-batch AdamW on the task's trainable parameters; the first and last loss terms."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    first: dict[str, float] = {}
    for _ in range(steps):
        losses = task.losses(model, batch)
        first = first or {k: float(v.detach()) for k, v in losses.items()}
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
    with torch.no_grad():
        last = {k: float(v) for k, v in task.losses(model.eval(), batch).items()}
    return first, last


@pytest.fixture(scope="module")
def handful(tmp_path_factory):
    """6 VGA images (all in the training split), a run config and the model config for them."""
    root = tmp_path_factory.mktemp("overfit") / "synth"
    synth = SynthConfig(num_images=6, seed=1, camera_groups=("vga_normal",),
                        split_fractions=(1.0, 0.0, 0.0))  # fmt: skip
    generate_dataset(synth, root, progress=False)
    dataset = read_dataset(root)
    # no answer phrases: the frozen random LLM cannot generate them, and "ground" inference
    # then sees the training layout ([query] <pos> [3D Query]) for every query type
    # (the tiny preset's 64 x 96 canvas puts most objects of a scene in neighbouring cells)
    model = {"preset": "tiny", "answer_types": [], "high_res": {"image_size": [96, 128]}}
    run = TrainConfig(model=model, data=DataConfig(root=str(root), val_queries=0), progress=False)
    return dataset, run, model_config_for_data(run, dataset)


@pytest.fixture(scope="module")
def detector(handful):
    """A tiny model whose detector stage was trained for 150 steps on the images."""
    dataset, run, config = handful
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LLMI3D(config)
    model.set_size_priors(size_priors(dataset, "train", config.detector.categories))
    task = DetectorTask(run, StageConfig(kind="detector"), dataset)
    task.select_trainable(model)
    images = ImageDataset(dataset.root, "train", config, dataset=dataset)
    batch = collate_grounding([images[i] for i in range(len(images))])
    first, last = _fit(task, model, batch, steps=150, lr=3e-3)
    return model, batch, first, last


def test_detector_stage_fits_a_handful_of_images(detector):
    model, batch, first, last = detector
    assert last["heatmap"] < 0.1 * first["heatmap"], (first, last)
    for name in REGRESSION_TERMS:
        assert last[name] < 0.5 * first[name], (name, first[name], last[name])
    assert last["depth"] < first["depth"] - 2.0, (first, last)  # Laplacian NLL (log scale)
    # every object that 3 x 3 peak suppression can tell apart (no other object's centre cell
    # next to its own) is one of the detector's candidates
    with torch.no_grad():
        features = model.eval().image_side(batch["image_hr"], batch["K"], batch["image_size"])
    cells, _ = peaks(features.dense["heatmap"], model.config.detector.max_objects)
    owners = batch["assign"].gather(1, cells)
    width = features.dense["heatmap"].shape[-1]
    found = total = 0
    for row in range(len(cells)):
        objects = torch.nonzero(batch["obj_valid"][row])[:, 0]
        centre = (batch["obj_center_uv"][row, objects] * batch["image_size"][row] / 8).floor()
        near = (centre[:, None] - centre[None]).abs().amax(-1) <= 1  # (n, n) Chebyshev <= 1
        isolated = objects[near.sum(-1) == 1]
        found += int(torch.isin(isolated, owners[row]).sum())
        total += len(isolated)
    assert total >= 10 and found >= 0.9 * total, (found, total, width)


def test_pointer_stage_picks_the_target_of_the_training_queries(detector, handful):
    dataset, run, config = handful
    model = copy.deepcopy(detector[0])
    for param in model.parameters():
        param.requires_grad_(True)
    torch.manual_seed(0)
    task = PointerTask(run, StageConfig(kind="pointer"), dataset)
    task.select_trainable(model)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"pointer"}
    items, _ = task.datasets(model)
    batch = task.collate(items)
    # 160 steps: the per-candidate BCE (and the query's category / colour heads) settle more
    # slowly than the former softmax did in 80
    first, last = _fit(task, model, batch, steps=160, lr=3e-3)
    assert last["pointer"] < 0.05 * first["pointer"], (first, last)
    # the spatial-relation heads read the relations and anchors of the generated captions
    assert last["text_relation"] < 0.1 * first["text_relation"], (first, last)
    assert last["text_anchor"] < 0.2 * first["text_anchor"], (first, last)
    # inference path (no teacher forcing): the detector's own candidates, the LLM run from the
    # image's KV cache, the best-ranked box
    model.eval()
    queries = GroundingDataset(dataset.root, "train", config, dataset=dataset)
    offered = hits = 0
    with torch.no_grad():
        for index in range(len(queries)):
            item = collate_grounding([queries[index]])
            features = model.encode_image(item["image_lr"], item["image_hr"], item["K"],
                                          item["image_size"])  # fmt: skip
            context = model.prepare_context(features)
            text = format_query(item["query"][0], item["box_prompt"][0], item["point_prompt"][0])
            located = model.locate(context, text, "ground", box_prompt=item["box_prompt"][0],
                                   point_prompt=item["point_prompt"][0])  # fmt: skip
            candidates = features.candidates
            owners = item["assign"][0, candidates.cells[0]]  # (K,) the object of each candidate
            target = item["target_index"][0]
            if not bool((owners == target).any()):
                continue  # the detector missed it (see the detector test): nothing to point at
            offered += 1
            # the best-ranked box is the candidate whose projected centre it has
            distance = candidates.boxes["center_uv_px"][0] - located.boxes["center_uv_px"][0]
            best = int(distance.abs().sum(-1).argmin())
            hits += int(owners[best] == target)
    assert offered >= 0.7 * len(queries), (offered, len(queries))
    assert hits >= 0.9 * offered, (hits, offered)
