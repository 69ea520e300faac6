"""Naming candidates from crops of their boxes (model/crops.py) and the stage that trains it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmi3d_core.data.dataset import ImageDataset
from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset
from llmi3d_core.errors import ConfigError
from llmi3d_core.model import get_preset
from llmi3d_core.model.config import DetectorConfig
from llmi3d_core.model.crops import (
    MAX_CORRECTION,
    CropHeads,
    box_corrections,
    crop_boxes,
    descriptor_width,
    mix,
    refine,
    summary_width,
)
from llmi3d_core.model.llmi3d import LLMI3D
from llmi3d_core.train_config import StageConfig, load_train_config
from llmi3d_core.train_stages import check_crop_stage, make_task, mixed_cross_entropy, mixup


def test_a_crop_holds_its_box_and_edges_are_clipped():
    """A red square in a grey canvas fills most of its crop; boxes over the edge, empty or
    outside the canvas still give crops of the asked size."""
    canvas = torch.full((1, 3, 60, 80), 0.5)
    canvas[0, :, 20:40, 30:50] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    boxes = torch.tensor(
        [[30.0, 20.0, 50.0, 40.0], [-10.0, -5.0, 5.0, 8.0], [70.0, 50.0, 70.0, 50.0],
         [200.0, 200.0, 300.0, 300.0]]
    )  # fmt: skip
    crops = crop_boxes(canvas, torch.zeros(4, dtype=torch.long), boxes, 32, 0.1)
    assert crops.shape == (4, 3, 32, 32) and torch.isfinite(crops).all()
    red = (crops[0, 0] > 0.9) & (crops[0, 1] < 0.1)
    assert 0.6 < float(red.float().mean()) < 0.9  # the square, with a margin of 10 % a side
    assert float(crops[1:, 0].max()) == pytest.approx(0.5)  # grey: none reaches the square
    assert (
        crop_boxes(canvas, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), 32, 0.1).shape[0]
        == 0
    )


def test_mix_averages_the_two_distributions():
    dense, crop = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[-3.0, 4.0, 0.0]])
    expected = (dense.softmax(-1) + crop.softmax(-1)) / 2
    torch.testing.assert_close(mix(dense, crop).softmax(-1), expected)


def test_refine_undoes_box_corrections():
    """A correction moves each side by box sizes; it is bounded, and the box stays ordered."""
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 4.0, 2.0]])
    targets = torch.tensor([[12.0, 15.0, 33.0, 50.0], [-1.0, 0.5, 5.0, 3.0]])
    corrections = box_corrections(boxes, targets)
    torch.testing.assert_close(corrections[0], torch.tensor([0.1, -0.125, 0.15, -0.25]))
    torch.testing.assert_close(refine(boxes, corrections), targets)
    far = refine(boxes[:1], torch.tensor([[5.0, 0.0, -5.0, 0.0]]))
    width = 20.0 * MAX_CORRECTION
    torch.testing.assert_close(far, torch.tensor([[30.0 - width, 20.0, 10.0 + width, 60.0]]))


def test_names_read_the_whole_descriptor_or_older_models_the_summary():
    """By default the category and colour heads read the 3 x 3 cells as the box head does; a
    model before revision 16 ("summary") named from the summary columns only."""
    channels = [4, 6, 8]
    width = summary_width(channels)
    assert descriptor_width(channels) == width + 9 * sum(channels)
    descriptors = torch.randn(5, descriptor_width(channels))
    changed = descriptors.clone()
    changed[:, width:] += 1.0
    older = CropHeads(channels, categories=3, colors=2, hidden=16, names_from="summary").eval()
    a, b = older(descriptors), older(changed)
    torch.testing.assert_close(a["category"], b["category"])
    torch.testing.assert_close(a["color"], b["color"])
    assert not torch.allclose(a["box"], b["box"])
    heads = CropHeads(channels, categories=3, colors=2, hidden=16).eval()
    a, b = heads(descriptors), heads(changed)
    for name in ("category", "color", "box"):
        assert not torch.allclose(a[name], b[name]), name
    mixed = heads(descriptors, named=changed)  # the names of one, the box of the other
    torch.testing.assert_close(mixed["category"], b["category"])
    torch.testing.assert_close(mixed["box"], a["box"])


def test_crop_settings_are_validated():
    with pytest.raises(ConfigError, match="crop_size"):
        DetectorConfig(crop_size=8)
    with pytest.raises(ConfigError, match="crop_context"):
        DetectorConfig(crop_context=2.0)
    with pytest.raises(ConfigError, match="crop_passes must be >= 1, got 0"):
        DetectorConfig(crop_passes=0)
    with pytest.raises(ConfigError, match="crop_names_from 'cells' is unknown"):
        DetectorConfig(crop_names_from="cells")


def test_mixup_mixes_rows_with_their_partners_and_the_loss_follows():
    """mixup gives share x own + (1 - share) x partner's; the mixed cross-entropy weighs the
    two labels by the same shares, ignores unknown labels (-1), and without mixup is the plain
    cross-entropy over the known labels."""
    torch.manual_seed(0)
    descriptors = torch.randn(6, 5)
    mixed, partner, share = mixup(descriptors)
    expected = share[:, None] * descriptors + (1 - share[:, None]) * descriptors[partner]
    torch.testing.assert_close(mixed, expected)
    assert sorted(partner.tolist()) == list(range(6)) and ((share >= 0) & (share <= 1)).all()
    logits, labels = torch.randn(6, 4), torch.tensor([0, 3, -1, 2, 1, -1])
    plain = nn.functional.cross_entropy(logits, labels, ignore_index=-1)
    torch.testing.assert_close(mixed_cross_entropy(logits, labels), plain)
    partner, share = torch.tensor([1, 0, 3, 2, 5, 4]), torch.tensor([1.0, 0.5, 1.0, 0.25, 1, 1])
    rows = nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    swapped = nn.functional.cross_entropy(logits, labels[partner].clamp(min=0), reduction="none")
    own, other = share * (labels >= 0), (1 - share) * (labels[partner] >= 0)
    expected = ((rows * own).sum() + (swapped * other).sum()) / (own.sum() + other.sum())
    torch.testing.assert_close(mixed_cross_entropy(logits, labels, partner, share), expected)
    assert mixed_cross_entropy(logits, torch.full((6,), -1)) == 0.0  # none known: no NaN


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops") / "synth"
    config = SynthConfig(num_images=10, seed=3, split_fractions=(1.0, 0.0, 0.0))
    return generate_dataset(config, root, progress=False)


def crop_model(categories: list[str], colors: list[str]) -> LLMI3D:
    config = get_preset("tiny").replace(
        **{"detector.crop_heads": True, "detector.crop_size": 32,
           "detector.categories": tuple(categories), "detector.colors": tuple(colors)}
    )  # fmt: skip
    torch.manual_seed(0)
    return LLMI3D(config)


def test_the_crops_stage_learns_its_objects_and_then_changes_the_candidates(synth_root):
    """The stage's items are the descriptors of every training object with a category, at its
    jittered box, the same as for that box alone; a few hundred steps on them overfit (the
    oracle that the labels reach the heads: names right, corrected boxes on their objects); a
    fitted model's candidates get the average of the two category distributions and the
    corrected 2D box, an unfitted one's are the dense heads' alone."""
    config = load_train_config(
        "config/train/tiny_synth.yaml",
        [f"data.root={synth_root}", "data.val_split=train", "data.val_queries=3",
         "data.synth=null", "mixed_precision='no'"],  # float32: test_precision has bfloat16's
    )  # fmt: skip
    records = ImageDataset(synth_root, "train", get_preset("tiny")).records
    categories = sorted({o.category_name for r in records for o in r.objects})
    colors = sorted({str(o.attributes["color"]) for r in records for o in r.objects})
    model = crop_model(categories, colors)
    images = ImageDataset(synth_root, "train", model.config)
    image = images[0]
    K, size = image["K"][None], image["image_size"][None]
    with torch.no_grad():
        features = model.encode_image(image["image_lr"][None], image["image_hr"][None], K, size)
    assert features.image_hr is not None and features.candidates is not None
    dense = model.candidates(features.hr_map, features.dense, K, size).outputs
    for name in ("category", "box2d"):  # not fitted: the dense heads alone
        torch.testing.assert_close(features.candidates.outputs[name], dense[name])

    task = make_task(config, StageConfig(kind="crops", max_steps=1, batch_size=64))
    task.select_trainable(model)
    train, val = task.datasets(model)

    def named(index: int) -> int:
        item = images[index]
        return int((item["obj_valid"] & (item["obj_category"] >= 0)).sum())

    assert len(train) == sum(named(i) for i in range(len(images))) > 20
    assert len(val) == sum(named(i) for i in range(3))
    assert bool(model.crop_heads.fitted)
    assert train[0]["descriptor"].shape == (descriptor_width(model.high_res.backbone.channels),)
    valid = image["obj_valid"] & (image["obj_category"] >= 0)
    true_box = image["obj_box2d"][valid][0] * image["image_size"].repeat(2)
    torch.testing.assert_close(train[0]["true_box"], true_box)
    assert not torch.equal(train[0]["box"], true_box)  # jittered
    torch.testing.assert_close(refine(train[0]["box"][None], train[0]["correction"][None])[0],
                               true_box)  # fmt: skip
    with torch.no_grad():
        alone = model.crop_descriptors(image["image_hr"][None], torch.zeros(1, dtype=torch.long),
                                       train[0]["box"][None])  # fmt: skip
    torch.testing.assert_close(train[0]["descriptor"], alone[0], rtol=1e-4, atol=1e-4)
    assert int(train[0]["category"]) == int(image["obj_category"][valid][0])

    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(
        n.startswith("crop_heads.") for n, p in model.named_parameters() if p.requires_grad
    )
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    batch = task.collate(train)
    model.train()
    for _ in range(300):
        loss = task.losses(model, batch)["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        metrics = task.batch_metrics(model, batch)
    right, count = metrics["category_acc"]
    assert right / count > 0.9, metrics
    matched, _ = metrics["box_match"]
    before, _ = metrics["box_match_before"]
    assert matched / count > 0.9 and matched > before, metrics

    with torch.no_grad():
        fitted = model.encode_image(image["image_lr"][None], image["image_hr"][None], K, size)
        cands = fitted.candidates
        scale = image["image_size"].repeat(2)
        boxes_px = dense["box2d"][0] * scale
        rows = torch.zeros(len(boxes_px), dtype=torch.long)
        seen = model.crop_outputs(image["image_hr"][None], rows, boxes_px)
    expected = (dense["category"][0].softmax(-1) + seen["category"].softmax(-1)) / 2
    torch.testing.assert_close(cands.outputs["category"][0].softmax(-1), expected)
    torch.testing.assert_close(cands.outputs["box2d"][0], refine(boxes_px, seen["box"]) / scale)
    assert not torch.allclose(cands.outputs["box2d"], dense["box2d"])

    # detector.crop_passes = 2: the corrected box is cropped and corrected again; the names
    # stay those of the first crop, and a box prompt's candidate is still corrected once
    once = refine(boxes_px, seen["box"])
    prompt = torch.tensor([0.2, 0.3, 0.6, 0.7])
    with torch.no_grad():
        prompted = model.box_prompt_candidate(fitted, prompt)
        model.config = model.config.replace(**{"detector.crop_passes": 2})
        twice = model.encode_image(image["image_lr"][None], image["image_hr"][None], K, size)
        again = model.crop_outputs(image["image_hr"][None], rows, once)
        prompted_twice = model.box_prompt_candidate(twice, prompt)
    assert twice.candidates is not None and prompted is not None and prompted_twice is not None
    torch.testing.assert_close(twice.candidates.outputs["box2d"][0],
                               refine(once, again["box"]) / scale)  # fmt: skip
    assert not torch.allclose(twice.candidates.outputs["box2d"][0], once / scale)
    torch.testing.assert_close(twice.candidates.outputs["category"], cands.outputs["category"])
    torch.testing.assert_close(prompted_twice.outputs["box2d"], prompted.outputs["box2d"])


def test_a_crops_stage_needs_the_crop_heads(synth_root):
    config = load_train_config(
        "config/train/tiny_synth.yaml", [f"data.root={synth_root}", "data.synth=null"]
    )
    task = make_task(config, StageConfig(kind="crops", max_steps=1))
    with pytest.raises(ConfigError, match="crop_heads"):
        task.select_trainable(LLMI3D(get_preset("tiny")))


def test_crop_heads_and_a_crops_stage_come_together():
    """Checked before the first stage: heads no stage fits, or a stage with no heads to fit."""
    tiny = get_preset("tiny").replace(**{"detector.categories": ("cup", "lamp")})
    with_heads = tiny.replace(**{"detector.crop_heads": True})
    check_crop_stage(with_heads, ["detector", "crops", "pointer"])
    check_crop_stage(tiny, ["detector", "pointer"])
    with pytest.raises(ConfigError, match="no 'crops' stage"):
        check_crop_stage(with_heads, ["detector", "pointer"])
    with pytest.raises(ConfigError, match=r"needs model\.detector\.crop_heads"):
        check_crop_stage(tiny, ["detector", "crops"])
    # without categories no crop heads are built: nothing to fit, and a crops stage is refused
    no_names = with_heads.replace(**{"detector.categories": ()})
    check_crop_stage(no_names, ["joint"])
    with pytest.raises(ConfigError, match=r"needs model\.detector\.crop_heads"):
        check_crop_stage(no_names, ["detector", "crops"])
