"""What LLMI3D's stages hand on and return (model/llmi3d.py).

The image side gives ImageFeatures (with the detector's Candidates), `prepare_context` an
ImageContext (one image and its KV cache), the LLM QueryStates (F_3D and the query words);
`forward` returns a ModelOutput and `locate` a Located.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Candidates:
    """The detector's K candidate objects of each image.

    Attributes:
        cells: (B, K) flat cell indices of the stride-8 map.
        outputs: physical outputs at those cells {name: (B, K, k)} (detector.cell_outputs).
        boxes: their decoded boxes {center (B, K, 3), z (B, K), dims, R, ...}.
        features: (B, K, width) what the pointer and the object tokens read.
        geometry: (B, K, GEOMETRY_WIDTH) position, log depth, log volume, 2D box.
        objectness: (B, K) heatmap logits.
        valid: (B, K) True for real candidates.
    """

    cells: torch.Tensor
    outputs: dict[str, torch.Tensor]
    boxes: dict[str, torch.Tensor]
    features: torch.Tensor
    geometry: torch.Tensor
    objectness: torch.Tensor
    valid: torch.Tensor

    def select(self, rows: torch.Tensor) -> Candidates:
        """The candidates of images `rows` (B',), e.g. one row per query of a batch."""
        return self._indexed(lambda values: values[rows])

    def leading(self, count: int) -> Candidates:
        """The first `count` candidates of every image."""
        return self._indexed(lambda values: values[:, :count])

    def _indexed(self, take: Callable[[torch.Tensor], torch.Tensor]) -> Candidates:
        """`take` applied to every tensor (each has images first, candidates second)."""
        return Candidates(
            cells=take(self.cells),
            outputs={k: take(v) for k, v in self.outputs.items()},
            boxes={k: take(v) for k, v in self.boxes.items()},
            features=take(self.features),
            geometry=take(self.geometry),
            objectness=take(self.objectness),
            valid=take(self.valid),
        )

    def extended(self, more: Candidates) -> Candidates:
        """These candidates followed by `more` (same images), e.g. one a query's prompt adds."""
        outputs, boxes = self.outputs, self.boxes
        return Candidates(
            cells=torch.cat([self.cells, more.cells], dim=1),
            outputs={k: torch.cat([v, more.outputs[k].to(v)], dim=1) for k, v in outputs.items()},
            boxes={k: torch.cat([v, more.boxes[k].to(v)], dim=1) for k, v in boxes.items()},
            features=torch.cat([self.features, more.features.to(self.features)], dim=1),
            geometry=torch.cat([self.geometry, more.geometry.to(self.geometry)], dim=1),
            objectness=torch.cat([self.objectness, more.objectness.to(self.objectness)], dim=1),
            valid=torch.cat([self.valid, more.valid], dim=1),
        )


@dataclass
class ImageFeatures:
    """Image-side results, computed once per image.

    Attributes:
        tokens: (B, N + K, hidden) image tokens in the LLM's input space (global, then object).
        dense: raw dense head maps {name: (B, k, h, w)}, or None without the HR branch.
        hr_map: the FPN map F (B, C, h, w), or None.
        candidates: the detector's candidates, or None.
        K: (B, 3, 3) canvas intrinsics; image_size (B, 2) canvas (W, H).
        image_hr: (B, 3, H, W) the canvas, kept where candidates are named from crops of it
            (model/crops.py), else None.
    """

    tokens: torch.Tensor
    dense: dict[str, torch.Tensor] | None
    hr_map: torch.Tensor | None
    candidates: Candidates | None
    K: torch.Tensor
    image_size: torch.Tensor
    image_hr: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> ImageFeatures:
        """The features of images `rows`."""
        return ImageFeatures(
            tokens=self.tokens[rows],
            dense=None if self.dense is None else {k: v[rows] for k, v in self.dense.items()},
            hr_map=None if self.hr_map is None else self.hr_map[rows],
            candidates=None if self.candidates is None else self.candidates.select(rows),
            K=self.K[rows],
            image_size=self.image_size[rows],
            image_hr=None if self.image_hr is None else self.image_hr[rows],
        )


@dataclass
class ImageContext:
    """One image, ready for queries: its features and the LLM KV cache of the prompt prefix."""

    features: ImageFeatures
    cache: Any
    prefix_length: int


@dataclass
class QueryStates:
    """What the LLM gives the read-out for a batch of queries.

    Attributes:
        f3d: (B, hidden) the read-out hidden state (the 3D Query's, by default).
        words: (B, T, hidden) hidden states of the query tokens (the template middle).
        word_mask: (B, T) True for real tokens.
    """

    f3d: torch.Tensor
    words: torch.Tensor
    word_mask: torch.Tensor


@dataclass
class Located:
    """Result of one query on one image, best candidate first.

    Attributes:
        boxes: decoded boxes {center (n, 3), R, dims, box2d_px, center_uv_px (canvas px), z}.
        scores: (n,) probability that each box is what the query asks for (pointer.py), or the
            MLP read-out's score head.
        categories: (n,) index of the predicted category of each box (-1 when unknown).
        nothing_score: probability that nothing in the image matches (the pointer's "no object"
            candidate; 0 for the MLP read-out).
        answer: the generated answer phrase ('' when none).
        answered: whether an answer was generated.
    """

    boxes: dict[str, torch.Tensor]
    scores: torch.Tensor
    categories: torch.Tensor
    answer: str
    answered: bool
    nothing_score: float = 0.0


@dataclass
class ModelOutput:
    """What `forward` returns.

    Attributes:
        boxes: decoded boxes of the queried objects {center (B, 3), R, dims, box2d_px, z, ...},
            with the pointer: at its choice among the candidates (argmax).
        losses: loss terms (LossConfig names) and "total"; empty when the batch has no targets.
        pointer_logits: (B, K) or None.
        chosen_box2d: (B, 4) normalised canvas box of the chosen object (grounding metric).
    """

    boxes: dict[str, torch.Tensor]
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    pointer_logits: torch.Tensor | None = None
    chosen_box2d: torch.Tensor | None = None
