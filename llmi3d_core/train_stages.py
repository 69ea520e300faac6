"""What each stage of a training run trains, on which data, and how it is validated.

A run is one or more stages (TrainConfig.stages, STAGE_KINDS); each is a `StageTask`:

    detector  every object of every training image supervises the HR neck, the dense heads and
              the object-token projector (model.detector_losses); no language. With a frozen
              backbone its maps are computed once per image (BatchNorm folded, ~2x faster on a
              CPU) and kept in memory as float16.
    crops     the crop heads (model/crops.py: category, colour, 2D box correction) on the
              ground-truth box of every training object, jittered, from descriptors computed once
              with the frozen backbone.
    pointer   the pointer (and its residual) learns which candidate a query means. Everything
              before it is frozen, so each query's LLM states and each image's candidates are
              computed once, with the inference code path (KV cache of the image prefix, one
              pass over the query); training then touches only small tensors. This is what makes
              the pretrained LLM usable on a CPU: one LLM pass per query instead of one forward
              and backward per query and epoch. With `hide_targets`, some training captions and
              questions are shown without their targets: "not here" negatives made from
              positives (`hide_targets`).
    joint     the whole teacher-forced model (model.forward): LoRA, projectors, pointer or MLP
              heads, and the image side, for GPUs and for the tiny test model.

The model config gets the data's vocabulary first (`model_config_for_data`): the categories of
the training split that are not held out (the category head) and the colour words; and the model
gets the per-category size priors of the training split (`size_priors`), which checkpoints keep.
"""

from __future__ import annotations

import abc
import copy
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from llmi3d_core.data.dataset import (
    NAMED_KEYS,
    GroundingDataset,
    ImageDataset,
    collate_grounding,
)
from llmi3d_core.data.format import Dataset
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.splits import select_queries
from llmi3d_core.errors import ConfigError
from llmi3d_core.geometry import box3d_corners
from llmi3d_core.iou import box3d_iou_batch
from llmi3d_core.metrics import GROUNDING_IOU_2D
from llmi3d_core.model.config import ModelConfig, config_from_dict
from llmi3d_core.model.crops import box_corrections, refine
from llmi3d_core.model.decode import decode_boxes
from llmi3d_core.model.losses import Batch, box_iou_2d, weighted_total
from llmi3d_core.model.outputs import Candidates, QueryStates
from llmi3d_core.model.pointer import (
    PointerOutput,
    fit_answer_calibration,
    fit_calibration,
    pointer_loss,
    prompted,
)
from llmi3d_core.model.spatial_relations import RELATIONS
from llmi3d_core.model.vision import colour_map
from llmi3d_core.precision import cpu_bfloat16
from llmi3d_core.prediction import NO_ANSWER_RATIO, AnswerRule, fit_min_ratio_to_nothing
from llmi3d_core.train_config import StageConfig, TrainConfig, resolve_model_config
from llmi3d_core.train_data import CachedItems, batch_size, to_device

IMAGE_KEYS = ("image_hr", "image_lr")


# --------------------------------------------------------------------------------------------
# Data-derived model settings
# --------------------------------------------------------------------------------------------


def training_objects(dataset: Dataset, split: str) -> list[Any]:
    """The objects of the images a split's queries ask about, held-out categories excluded."""
    novel = set(dataset.info.novel_categories)
    images = {q.image_id for q in select_queries(dataset, split)}
    return [
        obj
        for record in dataset.images
        if record.image_id in images
        for obj in record.objects
        if obj.category_name not in novel
    ]


def model_config_for_data(config: TrainConfig, dataset: Dataset) -> ModelConfig:
    """The run's model config with the training data's categories and colours filled in.

    A config that names them already keeps its own lists (a fine-tuning run on new data must
    keep the checkpoint's heads).
    """
    model = resolve_model_config(config.model)
    data = model.to_dict()
    objects = training_objects(dataset, config.data.train_split)
    if not data["detector"]["categories"]:
        data["detector"]["categories"] = sorted({o.category_name for o in objects})
    if not data["detector"]["colors"]:
        colors = {str(o.attributes["color"]) for o in objects if o.attributes.get("color")}
        data["detector"]["colors"] = sorted(colors)
    return config_from_dict(data)


def size_priors(dataset: Dataset, split: str, categories: Sequence[str]) -> torch.Tensor:
    """(C + 1, 3) mean log (L, W, H) of each category's training objects, then of all of them.

    A category without training objects gets the global row.
    """
    objects = training_objects(dataset, split)
    if not objects:
        return torch.zeros(len(categories) + 1, 3)
    logs: dict[str, list[np.ndarray]] = {}
    for obj in objects:
        logs.setdefault(obj.category_name, []).append(np.log(np.maximum(obj.dims_lwh, 1e-3)))
    overall = np.mean(np.concatenate([np.stack(v) for v in logs.values()]), axis=0)
    rows = [np.mean(logs[c], axis=0) if c in logs else overall for c in categories]
    return torch.tensor(np.stack([*rows, overall]), dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


class StageTask(abc.ABC):
    """The contract of a stage (module docstring); subclasses fill in the data and the loss."""

    kind = ""
    scores_boxes = True  # its validation reports acc@0.25 (else `selection_key` chooses the best)
    selection_key = "val/loss"  # what the best step minimises when it scores no boxes

    def __init__(self, config: TrainConfig, stage: StageConfig, dataset: Dataset) -> None:
        self.config = config
        self.stage = stage
        self.dataset = dataset
        # the frozen passes that feed the crop heads and the pointer run in bfloat16 on a CPU
        # with bfloat16 units; the detector stage stays float32 (precision.py)
        self.bfloat16 = cpu_bfloat16(config.mixed_precision, config.device)

    def select_trainable(self, model: Any) -> None:  # noqa: B027 (default: train everything)
        """Freeze what this stage does not train (the model is rebuilt for every stage)."""

    @abc.abstractmethod
    def datasets(self, model: Any) -> tuple[Any, Any | None]:
        """Training and validation datasets (the model may be used to cache features)."""

    def streams_images(self, model: Any) -> bool:
        """True when every step reads its images from disk: then data.num_workers load them.

        A stage whose items are cached in memory reads them in the training process (workers
        would only copy them).
        """
        return False

    def collate(self, items: Sequence[Batch]) -> Batch:
        """Items -> a batch."""
        return collate_grounding(items)

    @abc.abstractmethod
    def losses(self, model: Any, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss terms and "total" of a batch."""

    @torch.no_grad()
    def evaluate(self, model: Any, loader: Any, accelerator: Any) -> dict[str, float]:
        """Validation metrics ("val/loss" at least) over the loader, gathered across processes."""
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        count = 0
        was_training = model.training
        model.eval()
        for cpu_batch in loader:
            batch = to_device(cpu_batch, accelerator.device)
            size = batch_size(batch)
            for name, value in self.batch_metrics(model, batch).items():
                total, n = value if isinstance(value, tuple) else (float(value) * size, size)
                sums[name] = sums.get(name, 0.0) + float(total)
                counts[name] = counts.get(name, 0.0) + float(n)
            count += size
        model.train(was_training)
        names = sorted(sums)
        values = [count, *(sums[n] for n in names), *(counts[n] for n in names)]
        totals = accelerator.reduce(
            torch.tensor(values, dtype=torch.float64, device=accelerator.device), reduction="sum"
        ).tolist()
        k = len(names)
        metrics = {
            f"val/{name}": totals[1 + i] / totals[1 + k + i] if totals[1 + k + i] else math.nan
            for i, name in enumerate(names)
        }
        metrics["val/count"] = float(totals[0])
        return metrics

    def batch_metrics(self, model: Any, batch: Batch) -> dict[str, Any]:
        """Validation metrics of a batch: a mean over its samples, or a (sum, count) pair."""
        return {("loss" if k == "total" else k): v for k, v in self.losses(model, batch).items()}


def box_ious(boxes: dict[str, torch.Tensor], center: torch.Tensor, dims: torch.Tensor,
             R: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Exact 3D IoU (B,) of decoded boxes with ground truth (float64 numpy under the hood)."""
    pred = box3d_corners(
        boxes["center"].detach().double().cpu(),
        boxes["dims"].detach().double().cpu().clamp(min=1e-4),
        boxes["R"].detach().double().cpu(),
        validate=False,
    )
    gt = box3d_corners(center.double().cpu(), dims.double().cpu(), R.double().cpu())
    ious = np.nan_to_num(np.asarray(box3d_iou_batch(pred.numpy(), gt.numpy(), validate=False)))
    return torch.as_tensor(ious, dtype=torch.float64)


def _limit(dataset: Any, count: int) -> Any:
    if count and len(dataset) > count:
        return torch.utils.data.Subset(dataset, range(count))
    return dataset


class JointTask(StageTask):
    """Everything trainable, through the teacher-forced model (model.forward)."""

    kind = "joint"

    def streams_images(self, model: Any) -> bool:
        """Its items are read per step (data.cache_items keeps them without workers)."""
        return True

    def datasets(self, model: Any) -> tuple[Any, Any | None]:
        """The stage's training and validation data (see the class docstring)."""
        data = self.config.data
        kwargs: dict[str, Any] = {"query_types": data.query_types, "dataset": self.dataset}
        train: Any = GroundingDataset(
            data.root, data.train_split, model.config, augment=data.augment, **kwargs
        )
        val: Any = GroundingDataset(data.root, data.val_split, model.config, **kwargs)
        if len(val) == 0:
            return train, None
        val = _limit(val, data.val_queries)
        if data.cache_items and data.num_workers == 0:
            val = CachedItems(val)
            if not data.augment:
                train = CachedItems(train)
        return train, val

    def losses(self, model: Any, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss terms and "total" of a batch."""
        return model(batch).losses  # type: ignore[no-any-return]

    def batch_metrics(self, model: Any, batch: Batch) -> dict[str, torch.Tensor]:
        """Validation metrics of a batch."""
        output = model(batch)
        metrics = {("loss" if k == "total" else k): v for k, v in output.losses.items()}
        if output.boxes:
            ious = box_ious(output.boxes, batch["center_cam"], batch["dims_lwh"], batch["R_cam"])
            metrics["acc@0.25"] = (ious > 0.25).double().mean()
            metrics["mean_iou"] = ious.mean()
        if output.chosen_box2d is not None:
            hit = box_iou_2d(output.chosen_box2d.float(), batch["box2d"].float()) > 0.5
            metrics["grounding_acc"] = hit.double().mean()
        return metrics


# --------------------------------------------------------------------------------------------
# Detector stage
# --------------------------------------------------------------------------------------------


class FrozenBackbone:
    """A frozen HR backbone for caching: BatchNorm folded, channels-last, float16 outputs.

    `bfloat16` computes in bfloat16 (the pointer stage's caching, precision.py): on the 2-core AMX
    CPU, 8 canvases took 0.06 s against 0.43 s in float32.
    """

    def __init__(self, model: Any, bfloat16: bool = False) -> None:
        backbone = copy.deepcopy(model.high_res.backbone).float().eval()
        inner = getattr(backbone, "model", None)
        if hasattr(inner, "fuse_batchnorm"):
            inner.fuse_batchnorm()  # type: ignore[union-attr]
        self.dtype = torch.bfloat16 if bfloat16 else torch.float32
        self.backbone = backbone.to(self.dtype, memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> HighResBranch.backbone_features, as float16."""
        maps = self.backbone(images.to(self.dtype).contiguous(memory_format=torch.channels_last))
        return [m.half().contiguous() for m in [*maps, colour_map(images.float())]]


def load_items(dataset: Any, desc: str, progress: bool) -> list[Batch]:
    """Every item of a (deterministic) dataset, in order, read by two processes, with progress.

    Reading and letterboxing a picture and building its targets costs ~40 ms: worth a second
    core for the thousands of images of a detector stage.
    """
    return list(iter_items(dataset, desc, progress))


def iter_items(dataset: Any, desc: str, progress: bool) -> Iterator[Batch]:
    """The items of `load_items` one at a time, for a caller that keeps less than all of them."""
    workers = min(2, os.cpu_count() or 1) if len(dataset) > 64 else 0
    # items cross from the workers as numpy (pickled by value): torch tensors would travel as
    # shared-memory file descriptors, and thousands kept alive exhaust them
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_numpy,  # type: ignore[arg-type]  # batch_size=None: one item, not a list
    )
    for item in tqdm(loader, total=len(dataset), desc=desc, unit="img", disable=not progress):
        yield _as_torch(item)


def _as_numpy(item: Batch) -> Batch:
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in item.items()}


def _as_torch(item: Batch) -> Batch:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in item.items()}


# Images per backbone call when caching. Measured on the 2-core CPU (EfficientNet-Lite0, 192 x 352,
# channels-last): 28 ms an image in chunks of 8 against 47 ms in chunks of 16 (the activations of
# 16 images no longer fit the cache). At 192 x 352 the maps were bit-identical for chunks of 1, 8
# and 16 (the default model retrained to the same losses); at 96 x 128 (tiny_synth) single images
# differed in the last bits, as oneDNN picks its kernels by shape.
BACKBONE_CHUNK = 8


def cache_backbone(model: Any, items: Sequence[Batch], desc: str, progress: bool) -> None:
    """Add each item's backbone maps ("backbone": list of (C, h, w) float16), dropping image_hr.

    Computed in float32: the detector trains on them (precision.py says why).
    """
    backbone = FrozenBackbone(model)
    chunk = BACKBONE_CHUNK
    for start in tqdm(range(0, len(items), chunk), desc=desc, unit="batch", disable=not progress):
        part = items[start : start + chunk]
        maps = backbone(torch.stack([item["image_hr"] for item in part]))
        for index, item in enumerate(part):
            item["backbone"] = [m[index].clone() for m in maps]
            for key in IMAGE_KEYS:
                item.pop(key, None)


class DetectorTask(StageTask):
    """The dense heads on every object of every training image (module docstring)."""

    kind = "detector"
    scores_boxes = False

    def select_trainable(self, model: Any) -> None:
        """Train only the stage's own modules (see the module docstring)."""
        trained: tuple[str, ...] = (
            "high_res.neck.",
            "high_res.colour.",
            "high_res.rays.",
            "dense_heads.",
            "object_projector.",
        )
        if model.config.high_res.trainable:
            trained += ("high_res.backbone.",)
        for name, param in model.named_parameters():
            if not name.startswith(trained):
                param.requires_grad_(False)

    @property
    def cached(self) -> bool:
        """True when the backbone maps are cached."""
        return not self.config.data.augment

    def streams_images(self, model: Any) -> bool:
        """A fine-tuned backbone (or augmentation) reads every image at every step."""
        return bool(model.config.high_res.trainable) or not self.cached

    def _images(self, model: Any, split: str, augment: bool, mirror: bool = False) -> Any:
        return ImageDataset(
            self.config.data.root, split, model.config, augment=augment, dataset=self.dataset,
            mirror=mirror,
        )  # fmt: skip

    def datasets(self, model: Any) -> tuple[Any, Any | None]:
        """The stage's training and validation data (see the class docstring)."""
        data = self.config.data
        train: Any = self._images(model, data.train_split, data.augment)
        if data.mirrored_copies:
            mirrored = self._images(model, data.train_split, False, mirror=True)
            train = torch.utils.data.ConcatDataset([train, mirrored])
        val: Any = self._images(model, data.val_split, False)
        val = _limit(val, data.val_queries)
        if not self.streams_images(model):  # frozen backbone, no augmentation: cache once
            progress = self.config.progress
            train = load_items(train, "preparing images (train)", progress)
            val = load_items(val, "preparing images (val)", progress)
            cache_backbone(model, train, "caching backbone (train)", progress)
            cache_backbone(model, val, "caching backbone (val)", progress)
        return train, (val if val else None)

    def collate(self, items: Sequence[Batch]) -> Batch:
        """Items -> a batch."""
        if "backbone" not in items[0]:
            return collate_grounding(items)
        rest = collate_grounding([{k: v for k, v in i.items() if k != "backbone"} for i in items])
        levels = len(items[0]["backbone"])
        rest["backbone"] = [torch.stack([i["backbone"][level] for i in items]) for level in
                            range(levels)]  # fmt: skip
        return rest

    def losses(self, model: Any, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss terms and "total" of a batch."""
        backbone = batch.get("backbone")
        features = model.image_side(
            batch.get("image_hr"), batch["K"], batch["image_size"],
            None if backbone is None else [b.float() for b in backbone],
        )  # fmt: skip
        losses: dict[str, torch.Tensor] = model.detector_losses(batch, features)
        losses["total"] = weighted_total(losses, model.config)
        return losses


# --------------------------------------------------------------------------------------------
# Crops stage
# --------------------------------------------------------------------------------------------


BOX_LOSS_BETA = 0.05  # smooth L1 of the box corrections: quadratic below 5 % of the box size
# How far the crops stage moves each ground-truth box (centre: a fraction of its size; size: the
# std of the log factor) so that the heads learn on boxes like the detector's candidates. Measured
# with the prototype of model/crops.py: larger (0.18, 0.35) corrected the served model's boxes no
# better (70.2 against 70.7 % matched).
BOX_JITTER_CENTRE = 0.1
BOX_JITTER_LOG_SIZE = 0.2


def jitter_boxes(boxes_px: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Boxes (N, 4) xyxy shifted and scaled at random (BOX_JITTER_CENTRE, BOX_JITTER_LOG_SIZE)."""
    size = (boxes_px[:, 2:] - boxes_px[:, :2]).clamp(min=1.0)
    centre = (boxes_px[:, :2] + boxes_px[:, 2:]) / 2
    centre = centre + BOX_JITTER_CENTRE * size * torch.randn(centre.shape, generator=generator)
    size = size * (BOX_JITTER_LOG_SIZE * torch.randn(size.shape, generator=generator)).exp()
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def mixup(descriptors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018, alpha 1) of a batch of descriptors (N, D) for the naming heads.

    Returns the mixed descriptors share x own + (1 - share) x partner's, the partner of each row
    (N,) and its own share (N,), drawn uniformly (the torch generator, as dropout's). Mixing the
    raw descriptors is mixing the standardised ones (standardising is affine). Why: the naming
    heads learn every training object by heart within 400 steps (training cross-entropy ~0.01
    against 0.6 on val); mixed up, they overfit less (crops.CropHeads: val category accuracy
    +4 points, colour +5).
    """
    count = len(descriptors)
    partner = torch.randperm(count, device=descriptors.device)
    share = torch.rand(count, device=descriptors.device)
    weight = share.to(descriptors.dtype)[:, None]
    mixed = weight * descriptors + (1 - weight) * descriptors[partner]
    return mixed, partner, share


def mixed_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    partner: torch.Tensor | None = None,
    share: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of logits (N, C) for labels (N,) (-1: unknown, ignored), maybe mixed up.

    With mixup's `partner` and `share` (N,) each, the target is share x the row's own label +
    (1 - share) x its partner's.

    The mean is over the known labels' weights; NaN-free when a batch knows none (zero).
    """
    targets = [(labels, torch.ones(len(labels), device=logits.device))]
    if partner is not None and share is not None:
        share = share.to(logits.device, torch.float32)
        targets = [(labels, share), (labels[partner], 1 - share)]
    terms, weights = [], []
    for rows_labels, weight in targets:
        known = rows_labels >= 0
        loss = nn.functional.cross_entropy(
            logits.float(), rows_labels.clamp(min=0), reduction="none"
        )
        terms.append((loss * weight * known).sum())
        weights.append((weight * known).sum())
    return sum(terms, start=torch.zeros(())) / sum(weights, start=torch.zeros(())).clamp(min=1e-6)


class CropTask(StageTask):
    """The crop heads (model/crops.py) on the ground-truth box of every training object.

    The backbone is frozen here, so each object's descriptor is computed once, on its box
    jittered as a candidate's would be (`jitter_boxes`, seeded: the same items in a resumed run);
    an item is the descriptor with the object's category and colour (-1: none) and the correction
    from the jittered box to the true one. The heads' standardisation is fitted on the training
    descriptors, and they are marked fitted, before the first step. The naming heads train on
    mixed-up pairs of descriptors (`mixup`), the box head on the descriptors themselves.
    """

    kind = "crops"
    scores_boxes = False
    # The best step is the one whose heads err least, not the lowest loss: the category and
    # colour cross-entropies rise from about step 400 (over-confident logits) while all three
    # heads still improve. Default recipe, val objects, steps 400 / 800 / 1200: loss 1.60 / 1.80
    # / 1.82; box matched 96.7 / 98.5 / 98.7 %, category 83.8 / 84.7 / 85.4 %, colour 73.6 /
    # 74.4 / 74.1 %, so "val/error" (the mean of the three error rates) picks 1200.
    selection_key = "val/error"

    def select_trainable(self, model: Any) -> None:
        """Train only the crop heads."""
        check_crop_stage(model.config, [self.kind])
        for name, param in model.named_parameters():
            if not name.startswith("crop_heads."):
                param.requires_grad_(False)

    def datasets(self, model: Any) -> tuple[Any, Any | None]:
        """The stage's training and validation data (see the class docstring)."""
        data = self.config.data
        train = self._descriptors(
            model, data.train_split, "crops (train)", self.stage.max_images, 0
        )
        val = self._descriptors(model, data.val_split, "crops (val)", data.val_queries, 1)
        if not train:
            raise ConfigError(f"the crops stage found no objects in split {data.train_split!r}")
        model.crop_heads.set_scale(torch.stack([item["descriptor"] for item in train]))
        model.crop_heads.fitted.fill_(True)
        return train, (val or None)

    @torch.no_grad()
    def _descriptors(
        self, model: Any, split: str, desc: str, max_images: int, stream: int
    ) -> list[Batch]:
        """One item per object of the split's images with a category (read two at a time)."""
        images: Any = ImageDataset(self.config.data.root, split, model.config, augment=False,
                                   dataset=self.dataset)  # fmt: skip
        images = _limit(images, max_images)
        generator = torch.Generator().manual_seed(self.config.seed * 2 + stream)
        was_training = model.training
        model.eval()
        items: list[Batch] = []
        chunk: list[Batch] = []
        for index, item in enumerate(iter_items(images, desc, self.config.progress)):
            chunk.append(item)
            if len(chunk) == BACKBONE_CHUNK or index == len(images) - 1:
                items += self._chunk_items(model, chunk, generator, self.bfloat16)
                chunk = []
        model.train(was_training)
        return items

    @staticmethod
    def _chunk_items(
        model: Any, parts: list[Batch], generator: torch.Generator, bfloat16: bool = False
    ) -> list[Batch]:
        """The items of the objects of a few images (one backbone call).

        `bfloat16`: the descriptors are computed under bfloat16 autocast.
        """
        rows, truth, boxes, categories, colors = [], [], [], [], []
        for row, item in enumerate(parts):
            keep = item["obj_valid"] & (item["obj_category"] >= 0)
            truth.append(item["obj_box2d"][keep].float() * item["image_size"].float().repeat(2))
            boxes.append(jitter_boxes(truth[-1], generator))  # image by image, as trained
            rows.append(torch.full((int(keep.sum()),), row, dtype=torch.long))
            categories.append(item["obj_category"][keep])
            colors.append(item["obj_color"][keep])
        true_boxes, jittered = torch.cat(truth), torch.cat(boxes)
        image_hr = torch.stack([item["image_hr"] for item in parts])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            descriptors = model.crop_descriptors(image_hr, torch.cat(rows), jittered)
        descriptors = descriptors.float().cpu()
        columns = {
            "descriptor": descriptors,
            "category": torch.cat(categories),
            "color": torch.cat(colors),
            "box": jittered,
            "true_box": true_boxes,
            "correction": box_corrections(jittered, true_boxes),
        }
        return [{key: value[i] for key, value in columns.items()} for i in range(len(jittered))]

    def collate(self, items: Sequence[Batch]) -> Batch:
        """Items -> a batch."""
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}

    def losses(self, model: Any, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss terms and "total" of a batch.

        The box head's on the crops, the naming heads' on mixed-up pairs of them (`mixup`).
        """
        descriptors = batch["descriptor"]
        mixed, partner, share = mixup(descriptors)
        out = model.crop_heads(descriptors, named=mixed)
        return self._losses(out, batch, partner, share)

    @staticmethod
    def _losses(
        out: dict[str, torch.Tensor],
        batch: Batch,
        partner: torch.Tensor | None = None,
        share: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The loss terms; names are scored against the mixed labels when `partner` is given."""
        losses = {
            "category": mixed_cross_entropy(out["category"], batch["category"], partner, share),
            "box": nn.functional.smooth_l1_loss(
                out["box"], batch["correction"].to(out["box"]), beta=BOX_LOSS_BETA
            ),
        }
        if "color" in out and bool((batch["color"] >= 0).any()):
            losses["color"] = mixed_cross_entropy(out["color"], batch["color"], partner, share)
        losses["total"] = sum(losses.values(), start=torch.zeros(()))
        return losses

    def batch_metrics(self, model: Any, batch: Batch) -> dict[str, Any]:
        """Validation losses, accuracies and 2D box matches (IoU > 0.5), as (sum, count)."""
        out = model.crop_heads(batch["descriptor"])
        losses = self._losses(out, batch)
        metrics: dict[str, Any] = {("loss" if k == "total" else k): v for k, v in losses.items()}
        for name in ("category", "color"):
            if name in out:
                known = batch[name] >= 0
                right = (out[name].argmax(-1) == batch[name]) & known
                metrics[f"{name}_acc"] = (float(right.sum()), int(known.sum()))
        boxes, truth = batch["box"].float(), batch["true_box"].float()
        count = len(boxes)
        for name, candidate in (("box_match_before", boxes),
                                ("box_match", refine(boxes, out["box"].float()))):  # fmt: skip
            matched = box_iou_2d(candidate, truth) > GROUNDING_IOU_2D
            metrics[name] = (float(matched.sum()), count)
        return metrics

    def evaluate(self, model: Any, loader: Any, accelerator: Any) -> dict[str, float]:
        """The validation metrics and "val/error", which the best step minimises.

        "val/error" is the mean error rate of the three heads (a box that matches no truth).
        """
        metrics = super().evaluate(model, loader, accelerator)
        rates = [metrics[f"val/{name}"] for name in ("box_match", "category_acc", "color_acc")
                 if not math.isnan(metrics.get(f"val/{name}", math.nan))]  # fmt: skip
        metrics["val/error"] = 1.0 - sum(rates) / len(rates)
        return metrics


# --------------------------------------------------------------------------------------------
# Pointer stage
# --------------------------------------------------------------------------------------------

CANDIDATE_KEYS = ("features", "geometry", "objectness", "valid", "cells")
QUERY_CHUNK = 8  # queries of one image run through the LLM together


def target_matches(box2d: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(B, ..., M) bool: each 2D box (B, ..., 4) overlaps each target of its query by IoU > 0.5."""
    targets, mask = batch["target_boxes2d"].float(), batch["target_mask"]  # (B, M, 4), (B, M)
    inner = (1,) * (box2d.dim() - 2)  # the boxes' dims between B and the box
    targets = targets.view(targets.shape[0], *inner, *targets.shape[1:])
    mask = mask.view(mask.shape[0], *inner, -1)
    ious = box_iou_2d(box2d.float().unsqueeze(-2), targets)  # (B, ..., M)
    matches: torch.Tensor = (ious > GROUNDING_IOU_2D) & mask
    return matches


def matches_a_target(box2d: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(B, ...) bool: each 2D box (B, ..., 4) overlaps one of its query's targets by IoU > 0.5."""
    return target_matches(box2d, batch).any(dim=-1)


# Relations whose target another object becomes when the target is hidden ("the nearest car"
# without the nearest car is the next one): their queries are never hidden.
SUPERLATIVES = ("nearest", "farthest", "largest")


def _rows(pointed: PointerOutput, rows: torch.Tensor) -> PointerOutput:
    """The logits, residuals and evidence of some queries of a pointer output."""
    evidence = None if pointed.evidence is None else pointed.evidence[rows]
    return PointerOutput(pointed.logits[rows], pointed.residual[rows], evidence=evidence)


def hide_targets(batch: Batch, rate: float) -> Batch:
    """A pointer batch where some captions and questions lose their targets: "no object".

    Each caption or question with a target (never a box or point prompt, never a superlative)
    is picked with probability `rate`; its target slots and every candidate whose 2D box matches
    one of its targets (IoU > 0.5: a second peak on the same object) stop being candidates, and
    "no object" becomes its answer. The dataset's captions hold for exactly one object (for a
    plural caption, exactly its targets) and a question is asked only when one object serves
    it, so what is left matches the words nowhere, often only just: the same category in
    another colour, size or place. Those are the hard negatives of issue 14 ("wrong colour",
    "wrong relation"), a few times more of them than the data has, for no LLM pass.
    Draws from the global RNG (restored on resume).
    """
    is_target = batch["is_target"]
    device = is_target.device
    worded = [kind in ("caption", "question") for kind in batch["query_type"]]
    eligible = (batch["num_targets"] > 0) & torch.tensor(worded, device=device)
    relation = batch["query_relation"].reshape(-1)
    for name in SUPERLATIVES:
        eligible &= relation != RELATIONS.index(name)
    picked = eligible & (torch.rand(eligible.shape, device=device) < rate)
    if not bool(picked.any()):
        return batch
    on_target = matches_a_target(batch["out_box2d"], batch)  # (B, K)
    hidden = (is_target | on_target) & picked[:, None]
    return {**batch, "cand_valid": batch["cand_valid"] & ~hidden, "is_target": is_target & ~hidden}


class PointerTask(StageTask):
    """The pointer on cached LLM states and candidates (module docstring).

    An item holds the query's F_3D and word states, its image's candidates (with the target's
    own cell in the last slot of a training query whose target the detector missed), which of
    them are the target, the candidates' physical outputs (for the residual and validation) and
    the target box.
    """

    kind = "pointer"

    def select_trainable(self, model: Any) -> None:
        """Train only the stage's own modules (see the module docstring)."""
        for name, param in model.named_parameters():
            if not name.startswith("pointer."):
                param.requires_grad_(False)

    def datasets(self, model: Any) -> tuple[Any, Any | None]:
        """The stage's training and validation data (see the class docstring)."""
        data = self.config.data
        kwargs: dict[str, Any] = {"query_types": data.query_types, "dataset": self.dataset}
        train = GroundingDataset(data.root, data.train_split, model.config, **kwargs)
        val = GroundingDataset(data.root, data.val_split, model.config, **kwargs)
        progress = self.config.progress
        indices = range(len(train))
        if self.stage.max_images:
            images = list(dict.fromkeys(q.image_id for q in train.queries))[: self.stage.max_images]
            keep = set(images)
            indices = [i for i, q in enumerate(train.queries) if q.image_id in keep]  # type: ignore[assignment]
        train_items = self.cache(model, train, indices, True, "LLM states (train)", progress)
        count = min(len(val), data.val_queries or len(val))
        # in bfloat16 too, though the Predictor serves float32 and the calibrations and the
        # answer rule are fitted on these. Refitted on float32 states (default model of
        # 2026-12-04, measured 2026-12-05): the same ratio (0.70); test grounding 73.9 against
        # 73.4 %, "not here" 84.5 against 86.0 %, ECE 0.072 against 0.057; ~35 s more per run.
        val_items = self.cache(model, val, range(count), False, "LLM states (val)", progress)
        if self.stage.not_here_rate:
            # the answer rule is fitted on every negative of the split (`evaluate`); those after
            # the first `count` queries do not join the calibration, which keeps the split's mix
            negatives = [i for i in range(count, len(val)) if not val.queries[i].target_object_ids]
            extra = self.cache(model, val, negatives, False, "LLM states (val negatives)",
                               progress)  # fmt: skip
            for item in val_items:
                item["calibrate"] = torch.tensor(True)
            for item in extra:
                item["calibrate"] = torch.tensor(False)
            val_items += extra
        return train_items, (val_items or None)

    @torch.no_grad()
    def cache(  # noqa: PLR0917 (one call site, every argument named there)
        self, model: Any, queries: GroundingDataset, indices: Sequence[int], inject: bool,
        desc: str,
        progress: bool,
    ) -> list[Batch]:  # fmt: skip
        """One cached item per query; images are encoded once for all their queries.

        In bfloat16 (self.bfloat16) a bfloat16 copy of the model computes them; the items hold
        float32 (words: float16) either way.
        """
        was_training = model.training
        model.eval()
        encoder = copy.deepcopy(model).to(torch.bfloat16) if self.bfloat16 else model
        trainable = model.config.high_res.trainable
        backbone = FrozenBackbone(encoder, self.bfloat16) if not trainable else None
        by_image: dict[str, list[int]] = {}
        for index in indices:
            by_image.setdefault(queries.queries[index].image_id, []).append(index)
        items: list[Batch] = []
        with tqdm(total=len(indices), desc=desc, unit="query", disable=not progress) as bar:
            for group in by_image.values():
                raw = [queries[i] for i in group]
                first = collate_grounding(raw[:1])
                maps = (
                    None if backbone is None else [m.float() for m in backbone(first["image_hr"])]
                )
                features = encoder.encode_image(
                    first["image_lr"], first["image_hr"], first["K"], first["image_size"], maps
                )
                context = encoder.prepare_context(features, 0)
                for start in range(0, len(raw), QUERY_CHUNK):
                    chunk = raw[start : start + QUERY_CHUNK]
                    states = encoder.teacher_forced_states(context, chunk)
                    for item, state in zip(chunk, states, strict=True):
                        items.append(self._item(encoder, state, features, item, inject))
                    bar.update(len(chunk))
        model.train(was_training)
        return items

    def _item(
        self, model: Any, states: QueryStates, features: Any, item: Batch, inject: bool
    ) -> Batch:  # fmt: skip
        """The cached tensors of one query."""
        batch = collate_grounding([item])
        candidates: Candidates = features.candidates
        is_target = model.target_slots(batch, candidates.cells)
        if inject:
            candidates, is_target = model.with_target_cell(batch, features)
        out: Batch = {
            "f3d": states.f3d[0].float(),
            "words": states.words[0].half(),
            "box_prompt": item["box_prompt"],
            "point_prompt": item["point_prompt"],
            "is_target": is_target[0],
            "target_mask": item["target_mask"],
            "target_boxes2d": item["obj_box2d"],  # every object's; target_mask says which
            "num_targets": item["target_mask"].sum(),
            "query_type": item["query_type"],
            **{key: item[key] for key in NAMED_KEYS},
            "K": item["K"],
            "image_size": item["image_size"],
        }
        for key in CANDIDATE_KEYS:
            value = getattr(candidates, key)[0]
            out[f"cand_{key}"] = value.float() if value.is_floating_point() else value
        for key, value in candidates.outputs.items():
            out[f"out_{key}"] = value[0].float()
        for key in ("center_uv", "virtual_depth", "dims_lwh", "rot6d_allo", "box2d", "keypoints",
                    "center_cam", "R_cam"):  # fmt: skip
            out[key] = item[key]
        return out

    def collate(self, items: Sequence[Batch]) -> Batch:
        """Items -> a batch."""
        longest = max(int(i["words"].shape[0]) for i in items)
        words = torch.zeros(len(items), longest, items[0]["words"].shape[1])
        mask = torch.zeros(len(items), longest, dtype=torch.bool)
        for row, item in enumerate(items):
            n = int(item["words"].shape[0])
            words[row, :n] = item["words"].float()
            mask[row, :n] = True
        batch = collate_grounding([{k: v for k, v in i.items() if k != "words"} for i in items])
        batch["words"], batch["word_mask"] = words, mask
        return batch

    def _forward(self, model: Any, batch: Batch) -> tuple[Any, Candidates]:
        outputs = {k[4:]: v for k, v in batch.items() if k.startswith("out_")}
        candidates = Candidates(
            cells=batch["cand_cells"],
            outputs=outputs,
            boxes={},
            features=batch["cand_features"],
            geometry=batch["cand_geometry"],
            objectness=batch["cand_objectness"],
            valid=batch["cand_valid"],
        )
        states = QueryStates(f3d=batch["f3d"], words=batch["words"], word_mask=batch["word_mask"])
        pointed = model.point(states, candidates, batch["box_prompt"], batch["point_prompt"])
        return pointed, candidates

    def losses(self, model: Any, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss terms and "total" of a batch (in training, some targets hidden: `hide_targets`)."""
        if model.training and self.stage.hide_targets:
            batch = hide_targets(batch, self.stage.hide_targets)
        pointed, candidates = self._forward(model, batch)
        logits, residual = pointed.logits, pointed.residual
        is_target = batch["is_target"]
        losses = {
            "pointer": pointer_loss(logits, is_target, candidates.valid),
            "residual": model.residual_loss(batch, candidates, residual, is_target),
            **model.text_losses(pointed, batch),
        }
        losses["total"] = weighted_total(losses, model.config)
        return losses

    @torch.no_grad()
    def evaluate(self, model: Any, loader: Any, accelerator: Any) -> dict[str, float]:
        """Validation metrics; first fits the score calibration on these queries (pointer.py).

        The calibration (temperature, bias) is a buffer of the model, so the checkpoint saved
        after this validation carries it. It is fitted on each query's best candidate, labelled
        right when its 2D box overlaps one of the query's targets by IoU > 0.5: the boxes that
        get answered, judged as `llmi3d eval`'s ECE judges them. Fitted on every candidate (and
        "no object") against the cells the targets own, as before, the easy negatives set the
        fit and the answered boxes came out under-confident: the default model's test ECE as
        served went from 0.097 to 0.041 with this fit (same weights, rule re-chosen on val).

        The candidates after the best get a fit of their own (`others_calibration`), each
        labelled right when its 2D box matches a target the best one does not: under the best's
        calibration, the boxes answered after the best on the served model's single-target test
        queries scored 0.65 on average and were right 11 % of the time.

        A worded query's best candidate is then scored from its evidence (`answer_calibration`,
        pointer.fit_answer_calibration): fitted on every worded query read, the negatives beyond
        the calibration's share among them, and Platt-scaled on the calibration's share.

        With the stage's `not_here_rate`, the model's own answer rule is fitted last, on the
        calibrated scores of every negative validation query (`answer_ratio`); the negatives read
        for it alone (`datasets`) do not join the calibration.
        """
        best_logits, right, other_logits, other_right = [], [], [], []
        evidence, worded_right, worded_negative, worded_calibrate = [], [], [], []
        # the negative queries' pointer outputs, best candidates and whether they are worded
        negatives: list[tuple[PointerOutput, torch.Tensor, torch.Tensor]] = []
        was_training = model.training
        model.eval()
        for cpu_batch in loader:
            batch = to_device(cpu_batch, accelerator.device)
            pointed, choice, chosen = self._pointed_best(model, batch)
            logits = pointed.logits
            rows = torch.arange(choice.shape[0], device=choice.device)
            calibrate = batch.get("calibrate", torch.ones_like(choice, dtype=torch.bool))
            hit = matches_a_target(chosen["box2d"], batch)
            best_logits.append(logits[rows, choice][calibrate])
            right.append(hit[calibrate])
            others, hits = self._others(batch, choice)
            others &= calibrate[:, None]
            other_logits.append(logits[:, :-1][others])
            other_right.append(hits[others])
            negative = batch["num_targets"] == 0
            worded = ~prompted(batch["box_prompt"], batch["point_prompt"])
            if pointed.evidence is not None:
                evidence.append(pointed.evidence[rows, choice][worded])
                worded_right.append(hit[worded])
                worded_negative.append(negative[worded])
                worded_calibrate.append(calibrate[worded])
            if bool(negative.any()):
                negatives.append((_rows(pointed, negative), choice[negative], worded[negative]))
        model.train(was_training)
        raw = accelerator.unwrap_model(model)
        if best_logits:
            temperature, bias = fit_calibration(torch.cat(best_logits), torch.cat(right))
            raw.score_calibration.copy_(torch.tensor([temperature, bias]))
            temperature, bias = fit_calibration(torch.cat(other_logits), torch.cat(other_right))
            raw.others_calibration.copy_(torch.tensor([temperature, bias]))
        if evidence:
            raw.answer_calibration.copy_(
                fit_answer_calibration(
                    torch.cat(evidence).cpu(),
                    torch.cat(worded_right).cpu(),
                    torch.cat(worded_negative).cpu(),
                    torch.cat(worded_calibrate).cpu(),
                )
            )
        if self.stage.not_here_rate and negatives:
            best, nothing = [], []
            for pointed, choice, worded in negatives:
                best.append(raw.best_scores(pointed, choice, worded))
                nothing.append(raw.scores(pointed.logits[:, -1]))
            ratio = fit_min_ratio_to_nothing(
                torch.cat(best).cpu().numpy(),
                torch.cat(nothing).cpu().numpy(),
                self.stage.not_here_rate,
                AnswerRule.SERVED.min_score,
            )
            raw.answer_ratio.fill_(NO_ANSWER_RATIO if ratio is None else ratio)
        metrics = super().evaluate(model, loader, accelerator)
        metrics["val/answer_ratio"] = float(raw.answer_ratio)
        metrics["val/temperature"] = float(raw.score_calibration[0])
        metrics["val/score_bias"] = float(raw.score_calibration[1])
        metrics["val/others_temperature"] = float(raw.others_calibration[0])
        metrics["val/others_bias"] = float(raw.others_calibration[1])
        return metrics

    @staticmethod
    def _others(batch: Batch, choice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) the valid candidates other than the best, and which match a target it misses.

        A match is 2D IoU > 0.5, as `llmi3d eval` judges answers (the residual leaves 2D boxes).
        """
        matches = target_matches(batch["out_box2d"], batch)  # (B, K, M)
        rows = torch.arange(choice.shape[0], device=choice.device)
        taken = matches[rows, choice]  # (B, M) the targets the best one matches
        hits = (matches & ~taken.unsqueeze(1)).any(dim=-1)
        others = batch["cand_valid"].clone()
        others[rows, choice] = False
        return others, hits

    def _best(
        self, model: Any, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Pointer logits (B, K + 1), each query's best candidate (B,) and its outputs.

        The outputs are the dense heads' at the candidate's cell, corrected by the residual.
        """
        pointed, choice, chosen = self._pointed_best(model, batch)
        return pointed.logits, choice, chosen

    def _pointed_best(
        self, model: Any, batch: Batch
    ) -> tuple[PointerOutput, torch.Tensor, dict[str, torch.Tensor]]:
        """`_best` with the whole pointer output in place of its logits."""
        pointed, candidates = self._forward(model, batch)
        logits, residual = pointed.logits, pointed.residual
        K = candidates.cells.shape[1]
        rows = torch.arange(logits.shape[0], device=logits.device)
        choice = logits[:, :K].argmax(dim=-1)
        chosen = model.corrected(
            {k: v[rows, choice] for k, v in candidates.outputs.items()}, residual[rows, choice]
        )
        return pointed, choice, chosen

    def batch_metrics(self, model: Any, batch: Batch) -> dict[str, Any]:
        """Validation metrics of a batch (see `StageTask.batch_metrics`).

        acc@0.25, mean_iou and grounding_acc (and per query type) over single-target queries,
        with the best candidate; not_here over negative queries (their best scores < 0.5).
        """
        metrics = super().batch_metrics(model, batch)
        pointed, choice, chosen = self._pointed_best(model, batch)
        logits = pointed.logits
        boxes = decode_boxes(chosen, batch["K"].float(), batch["image_size"].float(), model.config)
        ious = box_ious(boxes, batch["center_cam"], batch["dims_lwh"], batch["R_cam"])
        ious = ious.to(logits.device)
        single = batch["num_targets"] == 1
        n_single = int(single.sum())
        hit = matches_a_target(chosen["box2d"], batch)  # read on single-target rows
        metrics["acc@0.25"] = (float((ious > 0.25)[single].sum()), n_single)
        metrics["mean_iou"] = (float(ious[single].sum()), n_single)
        metrics["grounding_acc"] = (float(hit[single].sum()), n_single)
        for kind in ("caption", "question", "box_prompt", "point_prompt"):
            of_kind = torch.tensor([t == kind for t in batch["query_type"]], device=hit.device)
            mask = single & of_kind
            metrics[f"grounding/{kind}"] = (float(hit[mask].sum()), int(mask.sum()))
        negative = batch["num_targets"] == 0
        if bool(negative.any()):
            worded = ~prompted(batch["box_prompt"], batch["point_prompt"])
            best = model.best_scores(pointed, choice, worded)
            metrics["not_here"] = (float((best < 0.5)[negative].sum()), int(negative.sum()))
        return metrics


TASKS: dict[str, type[StageTask]] = {
    "joint": JointTask,
    "detector": DetectorTask,
    "crops": CropTask,
    "pointer": PointerTask,
}


def make_task(config: TrainConfig, stage: StageConfig, dataset: Dataset | None = None) -> StageTask:
    """The task of a stage."""
    return TASKS[stage.kind](config, stage, dataset or read_dataset(config.data.root))


def check_crop_stage(model: ModelConfig, kinds: Sequence[str]) -> None:
    """Crop heads learn only in a "crops" stage, which needs them: refuse a run without both.

    Checked before the first stage, so that a recipe that got it wrong fails in seconds rather
    than after the detector stage (heads without the stage would never be fitted, and so would
    change nothing while costing parameters).

    Raises:
        ConfigError: crop heads without a "crops" stage, or a "crops" stage without them.
    """
    detector = model.detector
    has_heads = model.high_res.enabled and detector.crop_heads and bool(detector.categories)
    has_stage = "crops" in kinds
    if has_heads and not has_stage:
        raise ConfigError(
            "model.detector.crop_heads is true but no 'crops' stage trains the crop heads: add "
            "one after the 'detector' stage (as config/train/smol_synth.yaml does) or set "
            "model.detector.crop_heads: false"
        )
    if has_stage and not has_heads:
        raise ConfigError(
            "a 'crops' stage needs model.detector.crop_heads: true, the high-res branch "
            "(high_res.enabled) and a category head (categories in the data)"
        )


__all__ = [
    "TASKS",
    "CropTask",
    "DetectorTask",
    "FrozenBackbone",
    "JointTask",
    "PointerTask",
    "StageTask",
    "box_ious",
    "check_crop_stage",
    "make_task",
    "model_config_for_data",
    "size_priors",
]
