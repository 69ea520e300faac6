"""Naming candidates and tightening their 2D boxes from crops of them (our addition, issue 13).

The dense heads name an object and size its 2D box from one stride-8 cell of a frozen backbone
that saw the whole canvas: the object is a few pixels wide at stride 32. Naming is the pointer's
main error, and a box that is too loose or too tight misses its object's 2D box (grounding asks
for IoU > 0.5). Here each candidate's 2D box (with `crop_context` of margin) is cut out of the
canvas, resized to `crop_size` squared and run through the same frozen backbone, so that a small
object fills the backbone's view. Its descriptor is

    [the mean of each backbone map, the max of the coarsest, RGB mean and std of the crop's
     centre, log aspect, log size in canvas px; each map average-pooled to 3 x 3]

standardised with the training crops' mean and std. Three small MLPs read all of it: the category,
the colour, and the box's correction (the offsets of its x1, y1, x2, y2 in box widths and heights).
Models before revision 16 named from the summary alone (the part before the 3 x 3 cells;
DetectorConfig.crop_names_from). They are trained on the ground-truth boxes of every object of the
training images, each shifted and scaled at random as a candidate's box would be (stage "crops",
train_stages.CropTask). At inference the category and colour probabilities are averaged with the
dense heads' (`mix`) and the candidate's 2D box is corrected (`refine`); its 3D box is not changed.

Measured on the default data with a prototype of this (crops from the 192 x 352 canvas, boxes
jittered by 10 % of their size at the centre and 20 % in log size): on the served model's first
answers to the 1,142 single-target test queries, the corrected 2D box matched its target (IoU
> 0.5) for 70.7 % against 64.4 % (captions 62.7 / 57.4, questions 72.5 / 64.9, box prompts 84.0
/ 75.5, point prompts 78.5 / 72.5); a second correction gained nothing, nor did larger jitter.

Not from a sharper canvas (measured 2026-12-05, not kept): the same 96 px crops cut from a
letterboxed canvas twice as large, naming heads trained offline on the default model's crops-stage
objects (whole descriptor, mixup, two seeds), val category 89.0 / 88.6 against 88.9 / 88.8 % and
colour 78.5 / 79.4 against 78.7 / 79.3 %: the canvas's resolution does not limit naming. More
crops do a little offline: with the mirrored training images' objects too (9,755 more), category
89.8 / 89.6 % and colour 80.0 / 81.1 %. End to end (the crops and pointer stages trained again on
the same detector): val category 89.3 -> 89.5 %, colour 79.8 -> 80.6 %, and the pointer's val
queries grounded 72.6 against 73.4 %, for ~1 min more per run: not kept.

Not from fine-tuning the backbone's last blocks on the crops either (measured 2026-12-05 on the
default model's crops-stage objects, offline, not kept): its stride-16-to-32 blocks (11-15 of
EfficientNet-Lite0) trained with the naming heads at lr 3e-4 on mixed-up pairs, 1,200 steps,
val category 89.0 -> 89.5 %, colour 79.2 -> 83.4 %, but the steps took 12.3 min against 1.2 min
with the backbone frozen; the colour histogram below also gained colour and no grounding. Nor
from averaging the names of each crop and its mirror image at inference (test, 1,490 queries,
the node's rule): grounding 73.4 -> 72.9 %, captions 63.2 -> 62.5 %. What naming is worth at
most, BENCHMARKS.md's upper bound of naming says (eval_predict.predict_with_true_names).

Not in the descriptor: a colour histogram of the crop's centre (measured 2026-12-04, not kept).
76 bins: 12 hues x 3 values x pale / vivid for pixels of saturation >= 0.2, 4 values for the
others, so that shading moves a surface between value bins but not between hues. Retrained end to
end (same detector, revision-13 recipe otherwise), the crop heads' val objects: colour 74.1 ->
78.0 %, category 85.2 -> 85.5 %, box matched 98.3 -> 98.8 %. But the pointer grounded no better
(all 2,520 val queries, always answering the best box: 71.3 against 71.4 % at its last step, 70.8
% at the step the run kept; plain base-category captions 290 against 291 of 399) and the run
took longer. The colour misses left are objects whose colour word names one part (a truck's cab,
a person's clothes: 43 and 53 % right on val), not the pixels' statistics.
"""

from __future__ import annotations

import math

import torch
from torch import nn

POOLED = 3  # each backbone map is average-pooled to POOLED x POOLED cells
RGB_WIDTH = 6  # mean and std of R, G, B over the crop's centre
SHAPE_WIDTH = 2  # log aspect, log size
MAX_CORRECTION = 1.0  # a box side moves at most this many box widths (heights)


def crop_boxes(
    images: torch.Tensor, rows: torch.Tensor, boxes_px: torch.Tensor, size: int, context: float
) -> torch.Tensor:
    """Crops (N, 3, size, size) of `images` (B, 3, H, W) at boxes (N, 4) px xyxy of images `rows`.

    Each box grows by `context` of its width and height on every side, is clipped to the image
    and cut at whole pixels, then resized with antialiasing (a larger box is averaged down, as
    cv2's INTER_AREA does; a smaller one interpolated up).
    """
    height, width = images.shape[-2:]
    crops = []
    for row, (x1, y1, x2, y2) in zip(rows.tolist(), boxes_px.tolist(), strict=True):
        margin_x, margin_y = context * max(x2 - x1, 2.0), context * max(y2 - y1, 2.0)
        left = min(max(int(math.floor(x1 - margin_x)), 0), width - 2)
        top = min(max(int(math.floor(y1 - margin_y)), 0), height - 2)
        right = max(min(int(math.ceil(x2 + margin_x)), width), left + 2)
        bottom = max(min(int(math.ceil(y2 + margin_y)), height), top + 2)
        patch = images[row : row + 1, :, top:bottom, left:right]
        resized = nn.functional.interpolate(  # float32: no bfloat16 antialiasing on the CPU
            patch.float(), size=(size, size), mode="bilinear", antialias=True
        )
        crops.append(resized.to(patch.dtype))
    if not crops:
        return images.new_zeros(0, 3, size, size)
    return torch.cat(crops)


def crop_descriptors(
    maps: list[torch.Tensor], crops: torch.Tensor, boxes_px: torch.Tensor
) -> torch.Tensor:
    """Backbone maps of N crops, the crops (N, 3, S, S) and their boxes (N, 4) -> (N, D).

    The first `summary_width` columns sum the crop up (all that older models' category and
    colour heads read); the rest are the maps' POOLED x POOLED cells.
    """
    size = crops.shape[-1]
    centre = crops[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4].float()
    extent = (boxes_px[:, 2:] - boxes_px[:, :2]).float().clamp(min=1.0)  # (N, 2) w, h
    parts = [m.float().mean((2, 3)) for m in maps]
    parts += [
        maps[-1].float().amax((2, 3)),
        centre.mean((2, 3)),
        centre.std((2, 3)),
        (extent[:, :1] / extent[:, 1:]).log(),
        (extent.prod(-1, keepdim=True).sqrt() + 1).log(),
    ]
    parts += [nn.functional.adaptive_avg_pool2d(m.float(), POOLED).flatten(1) for m in maps]
    return torch.cat(parts, dim=1)


def summary_width(map_channels: list[int]) -> int:
    """The summary columns of `crop_descriptors` for a backbone with these map widths."""
    return sum(map_channels) + map_channels[-1] + RGB_WIDTH + SHAPE_WIDTH


def descriptor_width(map_channels: list[int]) -> int:
    """D of `crop_descriptors` for a backbone with these map widths (finest first)."""
    return summary_width(map_channels) + POOLED * POOLED * sum(map_channels)


def box_corrections(boxes_px: torch.Tensor, targets_px: torch.Tensor) -> torch.Tensor:
    """What `refine` must add to boxes (N, 4) xyxy to give targets (N, 4): (N, 4) in box sizes."""
    size = (boxes_px[:, 2:] - boxes_px[:, :2]).clamp(min=1.0).repeat(1, 2)
    return (targets_px - boxes_px) / size


def refine(boxes_px: torch.Tensor, corrections: torch.Tensor) -> torch.Tensor:
    """Boxes (N, 4) xyxy moved by `corrections` (N, 4) in box sizes (`box_corrections`)."""
    size = (boxes_px[:, 2:] - boxes_px[:, :2]).clamp(min=1.0).repeat(1, 2)
    moved = boxes_px + corrections.clamp(-MAX_CORRECTION, MAX_CORRECTION) * size
    x1, x2 = torch.minimum(moved[:, 0], moved[:, 2]), torch.maximum(moved[:, 0], moved[:, 2])
    y1, y2 = torch.minimum(moved[:, 1], moved[:, 3]), torch.maximum(moved[:, 1], moved[:, 3])
    return torch.stack([x1, y1, x2, y2], dim=1)


class CropHeads(nn.Module):
    """Category, colour and box correction of crops from their descriptors (module docstring).

    The box head reads the whole descriptor; the category and colour heads read it whole too
    (`names_from` "descriptor"), or only its summary columns ("summary", models before
    revision 16). Whole, they overfit less badly once trained on mixed-up crops
    (train_stages.CropTask): measured 2026-12-04 on the default model's crop descriptors (9,755
    training objects, 1,213 val objects at jittered boxes; two seeds each, same steps), val
    category accuracy summary 84.5 / 84.0 %, whole 88.0 / 86.9 %, whole with mixup 88.9 / 88.8 %
    (cross-entropy 0.60 -> 0.43); colour 73.5 %, whole 77.7 %, whole with mixup 78.7 / 79.3 %.
    The summary alone with mixup: category 86.5 %, colour 75.7 %. Without mixup the whole
    descriptor is over-confident (val cross-entropy 0.64 at 88 %), and the probabilities are
    averaged with the dense heads'. `fitted` is False until the crops stage has trained them;
    unfitted heads are not applied to the candidates (`LLMI3D._candidates_at`).
    """

    mean: torch.Tensor
    std: torch.Tensor
    fitted: torch.Tensor

    def __init__(
        self,
        map_channels: list[int],
        categories: int,
        colors: int,
        hidden: int,
        names_from: str = "descriptor",
    ) -> None:
        super().__init__()
        width = descriptor_width(map_channels)
        # the columns the naming heads read (DetectorConfig.crop_names_from)
        self.names_width = summary_width(map_channels) if names_from == "summary" else width

        def mlp(inputs: int, outputs: int, hidden: int) -> nn.Module:
            return nn.Sequential(
                nn.Dropout(0.2), nn.Linear(inputs, hidden), nn.GELU(), nn.Dropout(0.1),
                nn.Linear(hidden, outputs),
            )  # fmt: skip

        self.category = mlp(self.names_width, categories, hidden)
        self.color = mlp(self.names_width, colors, hidden) if colors else None
        self.box = mlp(width, 4, 2 * hidden)
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.register_buffer("fitted", torch.tensor(False))

    def set_scale(self, descriptors: torch.Tensor) -> None:
        """Standardise with the mean and std of the training descriptors (N, D)."""
        self.mean.copy_(descriptors.float().mean(0))
        self.std.copy_(descriptors.float().std(0) + 1e-6)

    def forward(
        self, descriptors: torch.Tensor, named: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """(N, D) -> {"category": (N, C), "color": (N, colours)} logits, "box": (N, 4).

        `named`: (N, D) descriptors the naming heads read instead (the crops stage's mixed-up
        pairs, train_stages.mixup); by default the same.
        """
        x = self._standardised(descriptors)
        read = (x if named is None else self._standardised(named))[:, : self.names_width]
        out = {"category": self.category(read), "box": self.box(x)}
        if self.color is not None:
            out["color"] = self.color(read)
        return out

    def _standardised(self, descriptors: torch.Tensor) -> torch.Tensor:
        return ((descriptors.float() - self.mean) / self.std).to(self.mean.dtype)


def mix(dense_logits: torch.Tensor, crop_logits: torch.Tensor) -> torch.Tensor:
    """Log of the average of the two softmax distributions (so that softmax gives the average).

    Equal shares: on the default model's val candidates matched to an object (2026-12-05),
    category / colour accuracy with the crop's share 0.25 / 0.5 / 0.75 / 1 was 84.2 / 89.7 / 90.1 /
    89.2 % and 70.6 / 79.6 / 78.9 / 78.0 % (the dense heads alone 78.1 and 57.8 %).
    """
    probs = (dense_logits.float().softmax(-1) + crop_logits.float().softmax(-1)) / 2
    return probs.clamp(min=1e-6).log().to(dense_logits.dtype)


__all__ = [
    "CropHeads",
    "box_corrections",
    "crop_boxes",
    "crop_descriptors",
    "descriptor_width",
    "mix",
    "refine",
    "summary_width",
]
