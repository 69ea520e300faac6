"""Helpers of the training stages (train_stages.py) that the staged runs of test_train.py use."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from llmi3d_core import prediction
from llmi3d_core.data.dataset import GroundingDataset, ImageDataset
from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset
from llmi3d_core.data.synth.query_config import QueryConfig
from llmi3d_core.errors import ConfigError
from llmi3d_core.iou import box2d_iou_matrix
from llmi3d_core.metrics import GROUNDING_IOU_2D
from llmi3d_core.model import get_preset
from llmi3d_core.model import pointer as pointer_module
from llmi3d_core.model.llmi3d import LLMI3D
from llmi3d_core.model.pointer import fit_answer_calibration, fit_calibration, prompted
from llmi3d_core.model.spatial_relations import RELATIONS
from llmi3d_core.prediction import AnswerRule, fit_min_ratio_to_nothing
from llmi3d_core.train_config import StageConfig, load_train_config
from llmi3d_core.train_stages import (
    BACKBONE_CHUNK,
    FrozenBackbone,
    cache_backbone,
    hide_targets,
    load_items,
    make_task,
    matches_a_target,
    model_config_for_data,
)

CONFIG = get_preset("tiny")


class Numbered(torch.utils.data.Dataset):
    """Deterministic items of every kind of value a dataset item holds."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(index)
        return {
            "image": torch.rand(3, 4, 5, generator=generator),
            "half": torch.rand(2, 2, generator=generator).half(),
            "index": torch.tensor(index),
            "mask": torch.arange(6) % (index % 3 + 1) == 0,
            "text": f"query {index}",
            "novel": index % 2 == 0,
        }


def assert_same_items(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Equal keys, and equal values of equal types (tensors of equal dtype, shape and values,
    NaN equal to NaN)."""
    assert len(got) == len(expected)
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.keys() == b.keys(), index
        for key, value in b.items():
            if isinstance(value, torch.Tensor):
                assert isinstance(a[key], torch.Tensor), (index, key)
                assert a[key].dtype == value.dtype and a[key].shape == value.shape, (index, key)
                floating = value.is_floating_point()
                nan = value.isnan() if floating else torch.zeros_like(value, dtype=torch.bool)
                assert torch.equal(a[key].isnan() if floating else nan, nan), (index, key)
                assert torch.equal(a[key][~nan], value[~nan]), (index, key)
            else:
                assert type(a[key]) is type(value) and a[key] == value, (index, key)


@pytest.mark.parametrize("count", [5, 70])  # in-process, then two worker processes (> 64)
def test_load_items_equals_a_plain_loop(count):
    dataset = Numbered(count)
    assert_same_items(
        load_items(dataset, "test", progress=False), [dataset[i] for i in range(count)]
    )


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages") / "synth"
    config = SynthConfig(num_images=12, seed=1, split_fractions=(1.0, 0.0, 0.0))
    return generate_dataset(config, root, progress=False)


def test_load_items_of_real_datasets(synth_root):
    """Dataset items cross from the worker processes unchanged (numpy there and back)."""
    queries = GroundingDataset(synth_root, "train", CONFIG)
    assert len(queries) > 64  # read by two processes
    expected = [queries[i] for i in range(len(queries))]
    assert_same_items(load_items(queries, "queries", progress=False), expected)
    images = ImageDataset(synth_root, "train", CONFIG)
    got = load_items(images, "images", progress=False)
    assert_same_items(got, [images[i] for i in range(len(images))])
    assert all(isinstance(item["image_hr"], torch.Tensor) for item in got)
    assert not any(isinstance(v, np.ndarray) for item in got for v in item.values())


def test_detector_stage_adds_mirrored_copies(synth_root):
    """data.mirrored_copies: the cached training items are every image, then every image
    mirrored (objects at x -> w - 1 - x); val is not mirrored."""

    def config(mirrored: bool) -> Any:
        return load_train_config(
            "config/train/tiny_synth.yaml",
            [f"data.root={synth_root}", f"data.mirrored_copies={str(mirrored).lower()}",
             "data.val_split=train", "data.val_queries=2", "data.synth=null"],
        )  # fmt: skip

    plain_cfg = config(False)
    model = LLMI3D(get_preset("tiny"))
    detector = next(s for s in plain_cfg.stages if s.kind == "detector")
    plain, _ = make_task(plain_cfg, detector).datasets(model)
    doubled, val = make_task(config(True), detector).datasets(model)
    images = ImageDataset(synth_root, "train", CONFIG)
    assert len(doubled) == 2 * len(plain) == 2 * len(images) and len(val) == 2
    assert [i["image_id"] for i in doubled] == [r.image_id for r in images.records] * 2
    for index in range(len(images)):
        original, mirrored = doubled[index], doubled[len(images) + index]
        assert_same_items([original], [plain[index]])
        # every object moves with the picture: x -> (w - 1) - x in the image's pixels
        valid = original["obj_valid"]
        canvas_w = float(original["image_size"][0])
        scale, _, offset, _ = original["letterbox"].tolist()
        x = (original["obj_center_uv"][valid, 0] * canvas_w - offset) / scale
        x_mirrored = (mirrored["obj_center_uv"][valid, 0] * canvas_w - offset) / scale
        width = images.records[index].width
        torch.testing.assert_close(x_mirrored, (width - 1) - x, rtol=0, atol=1e-2)
        assert not torch.equal(mirrored["heatmap"], original["heatmap"])


def test_only_stages_that_read_images_every_step_get_loader_workers(synth_root):
    """data.num_workers serve a detector stage whose backbone is fine-tuned (no cache) and the
    joint stage; cached stages read from memory."""
    config = load_train_config(
        "config/train/tiny_synth.yaml", [f"data.root={synth_root}", "data.synth=null"]
    )
    frozen = LLMI3D(get_preset("tiny").replace(**{"high_res.trainable": False}))
    tuned = LLMI3D(get_preset("tiny"))
    detector = make_task(config, StageConfig(kind="detector"))
    assert detector.streams_images(tuned) and not detector.streams_images(frozen)
    assert make_task(config, StageConfig(kind="joint")).streams_images(frozen)
    assert not make_task(config, StageConfig(kind="pointer")).streams_images(tuned)


def test_cached_backbone_maps_do_not_depend_on_the_chunking(synth_root):
    """cache_backbone runs BACKBONE_CHUNK images a call; each item's maps are those of its image
    alone (up to the last bits: oneDNN picks kernels by batch shape), the HR picture is dropped,
    and a partial last chunk is handled."""
    model = LLMI3D(get_preset("tiny"))
    images = ImageDataset(synth_root, "train", CONFIG)
    count = BACKBONE_CHUNK + 3
    items = [images[i % len(images)] for i in range(count)]
    pictures = [item["image_hr"] for item in items]
    cache_backbone(model, items, "test", progress=False)
    alone = FrozenBackbone(model)
    for picture, item in zip(pictures, items, strict=True):
        assert "image_hr" not in item
        expected = [m[0] for m in alone(picture[None])]
        assert len(item["backbone"]) == len(expected)
        for got, want in zip(item["backbone"], expected, strict=True):
            assert got.dtype == torch.float16 and got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    """Images with negative and multi-target queries too."""
    root = tmp_path_factory.mktemp("stages") / "mixed"
    queries = QueryConfig(negatives_per_image=1, multi_target_per_image=1)
    config = SynthConfig(num_images=8, seed=2, split_fractions=(1.0, 0.0, 0.0), queries=queries)
    return generate_dataset(config, root, progress=False)


def pointer_val(
    mixed_root: Any, val_queries: int, named: bool = False, **stage: Any
) -> tuple[Any, Any, list[Any]]:
    """A tiny random model, a pointer task (with `stage`'s options) and its validation items: the
    first `val_queries` of the mixed images' queries (their only split). `named`: the model has
    the data's category and colour heads, as a trained one has (model_config_for_data)."""
    config = load_train_config(
        "config/train/tiny_synth.yaml",
        [f"data.root={mixed_root}", "data.val_split=train", f"data.val_queries={val_queries}",
         "data.synth=null"],
    )  # fmt: skip
    torch.manual_seed(0)
    task = make_task(config, StageConfig(kind="pointer", max_steps=1, **stage))
    model_config = model_config_for_data(config, task.dataset) if named else get_preset("tiny")
    model = LLMI3D(model_config)
    _, val = task.datasets(model)
    return model, task, val


def test_pointer_stage_calibrates_scores_on_the_best_candidates(mixed_root):
    """The pointer stage's validation fits score_calibration on each query's best candidate,
    labelled right when its 2D box overlaps one of the query's targets by IoU > 0.5: the
    boxes that get answered, judged as `llmi3d eval`'s ECE judges them; and
    others_calibration on the candidates after it."""
    model, task, val = pointer_val(mixed_root, 60)
    kinds = {int(item["num_targets"].clamp(max=2)) for item in val}
    assert kinds == {0, 1, 2}  # negative, single- and multi-target queries
    # an untrained detector's boxes match nothing: every candidate of every other query
    # that has a target gets the 2D box of its last target, and of every multi-target query,
    # every other candidate its first target's and the rest its last's
    for index, item in enumerate(val):
        targets = item["target_boxes2d"][item["target_mask"]]
        if len(targets) > 1 or (len(targets) == 1 and index % 2 == 0):
            item["out_box2d"][:] = targets[-1]
            item["out_box2d"][::2] = targets[0]
    loader = torch.utils.data.DataLoader(val, batch_size=16, collate_fn=task.collate)
    metrics = task.evaluate(model, loader, Accelerator(cpu=True))

    # the same fits, query by query, with the evaluation's own 2D IoU; a candidate after the
    # best is right when it matches a target the best one does not
    best_logits, right, other_logits, other_right = [], [], [], []
    with torch.no_grad():
        for item in val:
            logits, choice, _ = task._best(model, task.collate([item]))
            best = int(choice[0])
            best_logits.append(float(logits[0, best]))
            targets = item["target_boxes2d"][item["target_mask"]].numpy().reshape(-1, 4)
            ious = box2d_iou_matrix(item["out_box2d"].numpy(), targets) > GROUNDING_IOU_2D
            right.append(bool(ious[best].any()))
            for k in np.flatnonzero(item["cand_valid"].numpy()):
                if k != best:
                    other_logits.append(float(logits[0, k]))
                    other_right.append(bool((ious[k] & ~ious[best]).any()))
    expected = fit_calibration(torch.tensor(best_logits), torch.tensor(right))
    assert 0 < sum(right) < len(right)  # both labels, so the fit says something
    assert tuple(model.score_calibration.tolist()) == pytest.approx(expected)
    assert metrics["val/temperature"] == pytest.approx(expected[0])
    assert metrics["val/score_bias"] == pytest.approx(expected[1])
    expected = fit_calibration(torch.tensor(other_logits), torch.tensor(other_right))
    assert 0 < sum(other_right) < len(other_right)
    assert tuple(model.others_calibration.tolist()) == pytest.approx(expected)
    assert metrics["val/others_temperature"] == pytest.approx(expected[0])
    assert metrics["val/others_bias"] == pytest.approx(expected[1])


def test_pointer_stage_fits_the_models_answer_ratio_on_every_negative(mixed_root, monkeypatch):
    """With not_here_rate the pointer stage's validation reads every negative query of the split
    (not only the first data.val_queries), keeps the ones read for the rule alone out of the
    calibration, and stores the lowest ratio that refuses that share of the negatives under the
    calibration just fitted (the node's answer rule for this model)."""
    monkeypatch.setattr(prediction, "MIN_NEGATIVES_TO_FIT", 1)  # 8 negatives in these images
    model, task, val = pointer_val(mixed_root, 12, not_here_rate=0.75)
    split = GroundingDataset(mixed_root, "train", model.config)
    negative = [not q.target_object_ids for q in split.queries]
    assert sum(negative) == 8 and len(val) == 12 + sum(negative[12:])
    assert [bool(item["calibrate"]) for item in val] == [True] * 12 + [False] * (len(val) - 12)
    assert all(int(item["num_targets"]) == 0 for item in val[12:])
    loader = torch.utils.data.DataLoader(val, batch_size=8, collate_fn=task.collate)
    metrics = task.evaluate(model, loader, Accelerator(cpu=True))

    best_logits, right, best, nothing = [], [], [], []
    with torch.no_grad():
        for item in val:
            batch = task.collate([item])
            logits, choice, chosen = task._best(model, batch)
            if bool(item["calibrate"]):
                best_logits.append(float(logits[0, int(choice[0])]))
                right.append(bool(matches_a_target(chosen["box2d"], batch)[0]))
            if int(item["num_targets"]) == 0:
                best.append(float(model.scores(logits[0])[int(choice[0])]))
                nothing.append(float(model.scores(logits[0])[-1]))
    expected = fit_calibration(torch.tensor(best_logits), torch.tensor(right))
    assert tuple(model.score_calibration.tolist()) == pytest.approx(expected)
    ratio = model.fitted_answer_ratio
    assert ratio is not None and metrics["val/answer_ratio"] == pytest.approx(ratio)
    assert ratio == fit_min_ratio_to_nothing(
        np.array(best), np.array(nothing), 0.75, AnswerRule.SERVED.min_score
    )
    rule = AnswerRule.served(ratio)
    refused = [not rule.answers_best(b, n) for b, n in zip(best, nothing, strict=True)]
    assert np.mean(refused) >= 0.75


def test_pointer_stage_scores_worded_answers_from_their_evidence(mixed_root, monkeypatch):
    """The stage's validation fits answer_calibration (pointer.fit_answer_calibration) on every
    worded query's best candidate: right or not, negative or not, in the calibration's share
    or read for the answer rule alone; prompted queries stay out. The answer ratio is then
    fitted on the negatives' scores under it (LLMI3D.best_scores)."""
    monkeypatch.setattr(prediction, "MIN_NEGATIVES_TO_FIT", 1)
    monkeypatch.setattr(pointer_module, "MIN_ANSWER_EXAMPLES", 2)
    model, task, val = pointer_val(mixed_root, 40, named=True, not_here_rate=0.75)
    for index, item in enumerate(val):  # half the positives answered right (see above)
        targets = item["target_boxes2d"][item["target_mask"]]
        if len(targets) and index % 2 == 0:
            item["out_box2d"][:] = targets[0]
    loader = torch.utils.data.DataLoader(val, batch_size=8, collate_fn=task.collate)
    task.evaluate(model, loader, Accelerator(cpu=True))

    evidence, right, negative, calibrate, prompted_count = [], [], [], [], 0
    best, nothing = [], []
    with torch.no_grad():
        for item in val:
            batch = task.collate([item])
            pointed, choice, chosen = task._pointed_best(model, batch)
            assert pointed.evidence is not None
            if int(item["num_targets"]) == 0:
                worded = ~prompted(batch["box_prompt"], batch["point_prompt"])
                best.append(float(model.best_scores(pointed, choice, worded)[0]))
                nothing.append(float(model.scores(pointed.logits[0, -1])))
            if bool(prompted(batch["box_prompt"], batch["point_prompt"])[0]):
                prompted_count += 1
                continue
            evidence.append(pointed.evidence[0, int(choice[0])])
            right.append(bool(matches_a_target(chosen["box2d"], batch)[0]))
            negative.append(int(item["num_targets"]) == 0)
            calibrate.append(bool(item["calibrate"]))
    assert prompted_count > 0 and sum(right) >= 2 and sum(negative) >= 2
    assert not all(calibrate)  # some negatives were read for the rule alone
    expected = fit_answer_calibration(
        torch.stack(evidence), torch.tensor(right), torch.tensor(negative), torch.tensor(calibrate)
    )
    assert expected.any()
    # (batches of 8 against one query at a time: float32 sums in another order)
    assert model.answer_calibration.tolist() == pytest.approx(expected.tolist(), rel=1e-3)
    assert model.fitted_answer_ratio == pytest.approx(
        fit_min_ratio_to_nothing(
            np.array(best), np.array(nothing), 0.75, AnswerRule.SERVED.min_score
        )
    )


def test_without_a_rate_the_stage_fits_no_ratio(mixed_root):
    model, task, val = pointer_val(mixed_root, 12)
    assert len(val) == 12 and "calibrate" not in val[0]
    loader = torch.utils.data.DataLoader(val, batch_size=8, collate_fn=task.collate)
    task.evaluate(model, loader, Accelerator(cpu=True))
    assert model.fitted_answer_ratio is None


@pytest.mark.parametrize(("kind", "rate"), [("pointer", 1.0), ("pointer", -0.1), ("crops", 0.8)])
def test_not_here_rate_is_a_share_of_the_pointer_stage(kind, rate):
    with pytest.raises(ConfigError, match="not_here_rate"):
        StageConfig(kind=kind, not_here_rate=rate)


@pytest.fixture(scope="module")
def pointer_items(mixed_root):
    """The pointer stage's training items of the mixed images (tiny random model) and its task."""
    config = load_train_config(
        "config/train/tiny_synth.yaml", [f"data.root={mixed_root}", "data.synth=null"]
    )
    torch.manual_seed(0)
    model = LLMI3D(get_preset("tiny"))
    task = make_task(config, StageConfig(kind="pointer", max_steps=1, hide_targets=0.5))
    train, _ = task.datasets(model)
    return model, task, train


def test_hide_targets_turns_captions_and_questions_into_negatives(pointer_items):
    """A picked caption or question keeps no candidate on any of its targets, so "no object"
    is its answer; prompts, negatives and superlatives ("the nearest car": without it, the
    next one is meant) are never picked; every other candidate stays."""
    _, task, train = pointer_items
    batch = task.collate(train)
    superlatives = [RELATIONS.index(name) for name in ("nearest", "farthest", "largest")]
    worded = [kind in ("caption", "question") for kind in batch["query_type"]]
    single = [
        row
        for row, is_worded in enumerate(worded)
        if is_worded and int(batch["num_targets"][row]) == 1
        and int(batch["query_relation"][row]) not in superlatives
    ]  # fmt: skip
    superlative, doubled = single[:2]
    batch["query_relation"][superlative] = superlatives[0]
    # a second candidate on the target of another one (two peaks on one object)
    twin = int((batch["cand_valid"][doubled] & ~batch["is_target"][doubled]).nonzero()[0])
    target_box = batch["target_boxes2d"][doubled][batch["target_mask"][doubled]][0]
    batch["out_box2d"][doubled, twin] = target_box

    hidden = hide_targets(batch, 1.0)  # every eligible query

    ious = box_iou_matrices(batch)
    on_target = ((ious > GROUNDING_IOU_2D) & batch["target_mask"][:, None]).any(dim=-1)
    kinds = set()
    for row, kind in enumerate(batch["query_type"]):
        relation = int(batch["query_relation"][row])
        picked = worded[row] and int(batch["num_targets"][row]) > 0 and relation not in superlatives
        if picked:
            expected = batch["cand_valid"][row] & ~batch["is_target"][row] & ~on_target[row]
            assert not bool(hidden["is_target"][row].any())
            assert torch.equal(hidden["cand_valid"][row], expected)
            kinds.add(("picked", int(batch["num_targets"][row].clamp(max=2))))
        else:
            assert torch.equal(hidden["cand_valid"][row], batch["cand_valid"][row])
            assert torch.equal(hidden["is_target"][row], batch["is_target"][row])
            kinds.add(("kept", kind))
    # single- and multi-target captions were hidden; prompts and the superlative were not
    assert {("picked", 1), ("picked", 2), ("kept", "box_prompt"), ("kept", "point_prompt")} <= kinds
    assert bool(hidden["is_target"][superlative].any())
    assert not bool(hidden["cand_valid"][doubled, twin])
    assert hide_targets(batch, 0.0) is batch


def box_iou_matrices(batch):
    """(B, K, M) 2D IoU of every candidate with every object of its query's image."""
    boxes, objects = batch["out_box2d"].numpy(), batch["target_boxes2d"].numpy()
    pairs = zip(boxes, objects, strict=True)
    return torch.tensor(np.stack([box2d_iou_matrix(cands, objs) for cands, objs in pairs]))


def test_hide_targets_acts_in_training_only(pointer_items):
    """The pointer stage hides targets in its training losses, never in validation."""
    model, task, train = pointer_items
    plain = make_task(task.config, StageConfig(kind="pointer", max_steps=1))
    batch = task.collate(train)
    model.train()
    torch.manual_seed(0)
    hiding = float(task.losses(model, batch)["pointer"].detach())
    assert hiding != pytest.approx(float(plain.losses(model, batch)["pointer"].detach()))
    model.eval()
    assert float(task.losses(model, batch)["pointer"].detach()) == float(
        plain.losses(model, batch)["pointer"].detach()
    )


@pytest.mark.parametrize(
    ("kind", "rate"), [("pointer", 1.0), ("pointer", -0.1), ("detector", 0.5), ("joint", 0.5)]
)
def test_hide_targets_is_a_rate_of_the_pointer_stage(kind, rate):
    with pytest.raises(ConfigError, match="hide_targets"):
        StageConfig(kind=kind, hide_targets=rate)
