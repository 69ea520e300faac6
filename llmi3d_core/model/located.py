"""A query's result as a Located: the pointer's ranking of the candidates, or the one box.

With the pointer every valid candidate of the image is decoded (with its residual), best
calibrated score first; the MLP read-out and Text3D give one box, scored by their score logit.
"""

from __future__ import annotations

import torch

from llmi3d_core.model.candidates import corrected
from llmi3d_core.model.config import ModelConfig
from llmi3d_core.model.decode import decode_boxes
from llmi3d_core.model.outputs import ImageFeatures, Located


def ranked(
    features: ImageFeatures,
    probabilities: torch.Tensor,
    residual: torch.Tensor,
    config: ModelConfig,
    *,
    answer: str,
    answered: bool,
    other_probabilities: torch.Tensor,
    best_score: float | None = None,
) -> Located:
    """Located of every valid candidate of one image, best first.

    Args:
        features: the image's features, with its candidates.
        probabilities: (K + 1,) calibrated pointer scores, "no object" last.
        residual: (K, 4) the pointer's residual of each candidate.
        config: decodes the corrected outputs.
        answer: the generated answer phrase.
        answered: whether an answer was generated.
        other_probabilities: (K + 1,) the same logits under the calibration of the candidates
            after the best (LLMI3D.other_scores); every candidate but the best takes its score
            from them, at most the best's, so the order stays.
        best_score: the best candidate's score when it is not its entry of `probabilities`
            (LLMI3D.best_scores: a worded query's best is scored from its evidence).
    """
    cands = features.candidates
    assert cands is not None
    scores, nothing = probabilities[:-1], float(probabilities[-1])
    order = torch.argsort(scores, descending=True)
    order = order[cands.valid[0, order]]
    ranked_scores = scores[order]
    if best_score is not None and len(order):
        ranked_scores = ranked_scores.clone()
        ranked_scores[0] = best_score
    if len(order) > 1:
        later = other_probabilities[:-1][order[1:]].clamp(max=float(ranked_scores[0]))
        ranked_scores = torch.cat([ranked_scores[:1], later])
    outputs = corrected({k: v[0, order].float() for k, v in cands.outputs.items()}, residual[order])
    n = len(order)
    boxes = decode_boxes(
        outputs, features.K.expand(n, 3, 3), features.image_size.expand(n, 2), config
    )
    category = outputs.get("category")
    categories = (
        category.argmax(dim=-1) if category is not None
        else torch.full((n,), -1, dtype=torch.long, device=probabilities.device)
    )  # fmt: skip
    return Located(
        boxes=boxes, scores=ranked_scores, categories=categories, answer=answer,
        answered=answered, nothing_score=nothing,
    )  # fmt: skip


def single(
    outputs: dict[str, torch.Tensor],
    features: ImageFeatures,
    config: ModelConfig,
    *,
    answer: str,
    answered: bool,
) -> Located:
    """Located of one box from (1, k) physical outputs (MLP read-out or Text3D)."""
    boxes = decode_boxes(outputs, features.K, features.image_size, config)
    score = torch.sigmoid(outputs["score_logit"].reshape(-1)[:1])
    return Located(
        boxes=boxes,
        scores=score,
        categories=torch.full((1,), -1, dtype=torch.long),
        answer=answer,
        answered=answered,
    )
