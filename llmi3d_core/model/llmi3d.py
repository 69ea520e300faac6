"""LLMI3D: image branches + SECBA + projector + LLM (LoRA) + 3D Query + MLP heads (paper III).

Sequence fed to the LLM, one sample (ids >= V are the new tokens of llm.py):

    [template prefix] <image> [N image tokens] [template middle with the query]
        [answer phrase, questions only] <pos> [3D Query]

Box and point prompts go in as text coordinates in the query, normalised to [0, 1] with two
decimals: "... (box: [0.12, 0.30, 0.45, 0.80])", "... (point: [0.50, 0.42])". Any tokenizer reads
them and the LLM's own number understanding is reused; no extra prompt encoder is trained.

Training (`forward`): teacher forcing. Dataset queries whose type is in config.answer_types get
their `answer` phrase before <pos>; all others go straight to <pos>. Cross-entropy on the answer
tokens and on <pos> teaches the LLM when to answer first; L1 on the heads and the depth map.

Inference (`locate`): the image prefix is run once and its KV cache kept (the Predictor reuses it
for every query on the same image). A query is then one forward pass over
[middle, <pos>, 3D Query]: if the LLM's next-token choice after the middle is <pos> (a plain
grounding query), F_3D is read from that same pass; otherwise (a question) the cache is rewound,
the answer is generated greedily until <pos>, and [last answer token, <pos>, 3D Query] is fed
(paper III-C).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from llmi3d_core.errors import ConfigError
from llmi3d_core.model import text3d
from llmi3d_core.model.config import ModelConfig, check_choice
from llmi3d_core.model.decode import decode_boxes
from llmi3d_core.model.heads import READOUTS, Heads
from llmi3d_core.model.llm import LanguageModel
from llmi3d_core.model.losses import (
    depth_map_loss,
    has_targets,
    quality_target,
    regression_losses,
    regression_targets,
    score_loss,
    weighted_total,
)
from llmi3d_core.model.pointer import SpatialPointer, pointer_loss
from llmi3d_core.model.secba import build_fusion
from llmi3d_core.model.vision import HighResBranch, LowResBranch

# answer policies of `locate`: "auto" lets the LLM decide (the paper), "ground" never answers,
# "answer" always generates an answer phrase first
ANSWER_POLICIES = ("auto", "ground", "answer")


@dataclass
class ImageFeatures:
    """Image-side results, computed once per image.

    Attributes:
        tokens: (B, N', hidden) projected image tokens, in the LLM's input space.
        depth_map: (B, 1, h, w) object-level depth map (virtual-depth units) or None.
    """

    tokens: torch.Tensor
    depth_map: torch.Tensor | None


@dataclass
class ImageContext:
    """One image, ready for queries: its features and the LLM KV cache of the prompt prefix."""

    features: ImageFeatures
    cache: Any
    prefix_length: int


@dataclass
class Located:
    """Result of one query: head outputs (1, k) in physical units and the answer phrase."""

    outputs: dict[str, torch.Tensor]
    answer: str
    answered: bool


@dataclass
class ModelOutput:
    """What `forward` returns.

    Attributes:
        outputs: head outputs {name: (B, k)} in physical units (heads.py); empty for Text3D.
        boxes: decoded boxes {center (B, 3), R (B, 3, 3), dims, box2d_px, center_uv_px, z, ...}.
        depth_map: (B, 1, h, w) predicted depth map or None.
        losses: loss terms (LossConfig names) and "total"; empty when the batch has no targets.
        pointer_logits: (B, N') logits of the spatial pointer over the image tokens, or None.
    """

    outputs: dict[str, torch.Tensor]
    boxes: dict[str, torch.Tensor]
    depth_map: torch.Tensor | None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    pointer_logits: torch.Tensor | None = None


def format_query(
    text: str,
    box_prompt: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    point_prompt: Sequence[float] | np.ndarray | torch.Tensor | None = None,
) -> str:
    """Query text with the optional box / point prompt as normalised text coordinates.

    NaN (the dataset's "no prompt") and None both mean no prompt.
    """
    parts = [text.strip()]
    for name, values in (("box", box_prompt), ("point", point_prompt)):
        if values is None:
            continue
        numbers = [float(x) for x in values]
        if all(math.isfinite(x) for x in numbers):
            parts.append(f"({name}: [{', '.join(f'{x:.2f}' for x in numbers)}])")
    return " ".join(parts)


def _rewind(cache: Any, length: int) -> None:
    """Drop cached positions beyond `length` (transformers DynamicCache.crop takes a negative)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class LLMI3D(nn.Module):
    """The LLMI3D model; see the module docstring for the sequence layout."""

    def __init__(self, config: ModelConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        check_choice(config.heads.readout, READOUTS, "heads.readout")
        self.config = config
        # the LLM first: it is the part most likely to fail (a missing path), and the slowest
        self.llm = LanguageModel(config.llm)
        self.low_res = LowResBranch(config.low_res, load_pretrained)
        lr_dim = self.low_res.hidden_size
        self.high_res: HighResBranch | None = None
        self.fusion: nn.Module | None = None
        if config.high_res.enabled:
            self.high_res = HighResBranch(
                config.high_res, config.heads.depth_scale, load_pretrained
            )
            self.fusion = build_fusion(
                config.fusion, lr_dim, self.high_res.out_channels, self.low_res.grid
            )
        hidden = self.llm.hidden_size
        dtype = self.llm.new_embeddings.dtype
        self.projector = nn.Sequential(
            nn.Linear(lr_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        scale = float(self.llm.new_embeddings.detach().float().std())
        self.query_embedding = nn.Parameter((scale * torch.randn(hidden)).to(dtype))
        self.readout = READOUTS[config.heads.readout]
        self.heads = Heads(hidden, config.heads) if self.readout.offset is not None else None
        self.pointer: SpatialPointer | None = None
        if self.heads is not None and config.heads.pointer:
            self.pointer = SpatialPointer(hidden, config.heads.pointer_dim, self.low_res.grid)
        self.prefix_ids = [*self.llm.tokenize(self.llm.template.prefix), self.llm.image_id]

    # ------------------------------------------------------------------ image side

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's parameters."""
        return self.query_embedding.dtype

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.query_embedding.device

    def encode_image(self, image_lr: torch.Tensor, image_hr: torch.Tensor) -> ImageFeatures:
        """(B, 3, S, S) and (B, 3, H, W) in [0, 1] -> projected image tokens and depth map.

        The vision side runs in its own dtype (it may stay float32 next to a bfloat16 LLM); the
        tokens are cast to the LLM's dtype.
        """
        vision_dtype = next(self.projector.parameters()).dtype
        tokens = self.low_res(image_lr.to(self.device, vision_dtype))  # (B, N, C_lr)
        depth_map = None
        if self.high_res is not None and self.fusion is not None:
            features, depth_map = self.high_res(image_hr.to(self.device, vision_dtype))
            tokens = self.fusion(tokens, features)  # (B, N', C_lr)
        tokens = self.projector(tokens).to(self.dtype)  # (B, N', hidden)
        return ImageFeatures(tokens=tokens, depth_map=depth_map)

    def _embed_ids(self, ids: Sequence[int]) -> torch.Tensor:
        """Ids -> (1, T, hidden)."""
        return self.llm.embed(torch.tensor([list(ids)], dtype=torch.long, device=self.device))

    # ------------------------------------------------------------------ training

    def _answer_ids(self, query_type: str, answer: str) -> list[int]:
        if query_type in self.config.answer_types and answer.strip():
            return self.llm.tokenize(answer.strip())
        return []

    def _text3d_ids(self, batch: dict[str, Any], index: int) -> list[int]:
        names = list(text3d.text_fields(self.config.heads))
        targets = regression_targets(batch, names, self.config)
        text = text3d.format_numbers({k: v[index] for k, v in targets.items()}, self.config.heads)
        return [*self.llm.tokenize(" " + text), self.llm.eos_token_id]

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        """Teacher-forced forward pass on a collated batch (data/dataset.py contract).

        Needs image_lr, image_hr, query, query_type, box_prompt, point_prompt, K, image_size;
        with the targets (center_uv, virtual_depth, dims_lwh, rot6d_allo, box2d, depth_map,
        center_cam, answer) it also returns the losses.
        """
        features = self.encode_image(batch["image_lr"], batch["image_hr"])
        B = features.tokens.shape[0]
        with_targets = has_targets(batch)
        tails: list[list[int]] = []
        supervised: list[list[int]] = []  # tail positions whose token is a CE target
        for i in range(B):
            query = format_query(
                batch["query"][i], batch["box_prompt"][i], batch["point_prompt"][i]
            )
            middle = self.llm.tokenize(self.llm.template.render_middle(query))
            answer = self._answer_ids(batch["query_type"][i], batch.get("answer", [""] * B)[i])
            numbers = (
                self._text3d_ids(batch, i) if self.readout.offset is None and with_targets else []
            )
            tail = middle + answer + [self.llm.pos_id] + numbers
            tails.append(tail)
            supervised.append(list(range(len(middle), len(tail))))
        hidden, starts, ends = self._run_teacher_forced(features.tokens, tails)

        outputs: dict[str, torch.Tensor] = {}
        pointer_logits = None
        if self.heads is not None:
            offset = self.readout.offset or -1  # from the end: -1 is the last token
            index = torch.tensor([last + 1 + offset for last in ends], device=self.device)
            outputs, pointer_logits = self._read_heads(
                hidden[torch.arange(B, device=self.device), index], features
            )
        boxes = {}
        if outputs:
            float_outputs = {k: v.float() for k, v in outputs.items()}
            K = batch["K"].to(self.device, torch.float32)
            size = batch["image_size"].to(self.device, torch.float32)
            boxes = decode_boxes(float_outputs, K, size, self.config)
        result = ModelOutput(
            outputs=outputs,
            boxes=boxes,
            depth_map=features.depth_map,
            pointer_logits=pointer_logits,
        )
        if with_targets:
            losses = self._regression_losses(batch, result)
            losses["text"] = self._text_loss(hidden, starts, tails, supervised)
            losses["total"] = weighted_total(losses, self.config)
            result.losses = losses
        return result

    def _read_heads(
        self, features_3d: torch.Tensor, image: ImageFeatures
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """F_3D (B, hidden) -> head outputs, through the pointer when there is one (pointer.py).

        The depth map anchors the depth head only when both are in virtual-depth units.
        """
        assert self.heads is not None
        if self.pointer is None:
            return self.heads(features_3d), None
        use_map = self.config.heads.use_virtual_depth and self.config.heads.location == "uv_depth"
        pointed = self.pointer(features_3d, image.tokens, image.depth_map if use_map else None)
        outputs = self.heads(pointed.features, anchor_uv=pointed.uv, anchor_depth=pointed.depth)
        return outputs, pointed.logits

    def _run_teacher_forced(
        self, image_tokens: torch.Tensor, tails: list[list[int]]
    ) -> tuple[torch.Tensor, int, list[int]]:
        """Embed prefix + image + tails (+ 3D Query), right-padded; run the LLM.

        Returns hidden (B, T, hidden), the position of the first tail token, and each sample's
        last position (the read-out anchor: the 3D Query, or <pos> / the last text token).
        """
        B, N, H = image_tokens.shape
        longest = max(len(t) for t in tails)
        pad = [t + [0] * (longest - len(t)) for t in tails]
        tail_ids = torch.tensor(pad, dtype=torch.long, device=self.device)
        prefix = self._embed_ids(self.prefix_ids).expand(B, -1, -1)
        extra = 1 if self.readout.append_query else 0
        pieces = [prefix, image_tokens, self.llm.embed(tail_ids)]
        if extra:
            pieces.append(image_tokens.new_zeros(B, 1, H))
        embeds = torch.cat(pieces, dim=1)  # (B, T, H)
        start = len(self.prefix_ids) + N
        lengths = [start + len(t) + extra for t in tails]
        rows = torch.arange(B, device=self.device)
        if extra:
            query_pos = torch.tensor([n - 1 for n in lengths], device=self.device)
            embeds = embeds.index_put((rows, query_pos), self.query_embedding.expand(B, H))
        positions = torch.arange(embeds.shape[1], device=self.device)
        mask = (positions[None, :] < torch.tensor(lengths, device=self.device)[:, None]).long()
        hidden, _ = self.llm.hidden_states(embeds, attention_mask=mask)
        return hidden, start, [n - 1 for n in lengths]

    def _regression_losses(
        self, batch: dict[str, Any], result: ModelOutput
    ) -> dict[str, torch.Tensor]:
        """L1 on the heads and the depth map, BCE on the score (see losses.py)."""
        cfg = self.config
        losses: dict[str, torch.Tensor] = {}
        if result.outputs:
            targets = regression_targets(batch, list(result.outputs), cfg)
            targets = {k: v.to(self.device, torch.float32) for k, v in targets.items()}
            losses.update(regression_losses(result.outputs, targets, cfg))
            gt_z = batch["center_cam"][:, 2].to(self.device, torch.float32)
            quality = quality_target(
                result.outputs["box2d"].float(), targets["box2d"], result.boxes["z"], gt_z
            )
            losses["score"] = score_loss(result.outputs["score_logit"], quality)
        if result.pointer_logits is not None:
            losses["pointer"] = pointer_loss(
                result.pointer_logits, batch["center_uv"].to(self.device), self.low_res.grid
            )
        if result.depth_map is not None and "depth_map" in batch:
            losses["depth_map"] = depth_map_loss(
                result.depth_map, batch["depth_map"].to(self.device), cfg.heads.depth_scale
            )
        return losses

    def _text_loss(
        self, hidden: torch.Tensor, start: int, tails: list[list[int]], supervised: list[list[int]]
    ) -> torch.Tensor:
        """Cross-entropy on the supervised tail tokens (answer, <pos>, Text3D numbers)."""
        rows = [i for i, s in enumerate(supervised) for _ in s]
        cols = [start + p - 1 for s in supervised for p in s]  # the position predicting token p
        labels = [tails[i][p] for i, s in enumerate(supervised) for p in s]
        logits = self.llm.logits(hidden[rows, cols])  # (M, V + 2)
        return nn.functional.cross_entropy(logits.float(), torch.tensor(labels, device=self.device))

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def prepare_context(self, features: ImageFeatures, index: int = 0) -> ImageContext:
        """Run the LLM over [prefix, <image>, image tokens] of one image and keep its KV cache."""
        tokens = features.tokens[index : index + 1]  # (1, N', hidden)
        embeds = torch.cat([self._embed_ids(self.prefix_ids), tokens], dim=1)
        _, cache = self.llm.hidden_states(embeds, use_cache=True)
        single = ImageFeatures(
            tokens=tokens,
            depth_map=None if features.depth_map is None else features.depth_map[index : index + 1],
        )
        return ImageContext(features=single, cache=cache, prefix_length=embeds.shape[1])

    def _step(self, context: ImageContext, embeds: torch.Tensor) -> torch.Tensor:
        """Feed (1, t, hidden) after the cached context; return hidden (1, t, hidden)."""
        hidden, _ = self.llm.hidden_states(embeds, cache=context.cache)
        return hidden

    def _greedy(
        self, context: ImageContext, first: int, stop: set[int], limit: int, first_prob: float = 1.0
    ) -> tuple[list[int], list[float]]:
        """Greedy decoding from token `first` (probability `first_prob`) until a stop id or `limit`.

        Returns the emitted ids (without the stop id) and their probabilities; the cache holds
        every emitted id (not the stop id).
        """
        ids: list[int] = []
        probs: list[float] = []
        token, prob = first, first_prob
        while token not in stop and len(ids) < limit:
            ids.append(token)
            probs.append(prob)
            hidden = self._step(context, self._embed_ids([token]))
            distribution = torch.softmax(self.llm.logits(hidden[:, -1]).float(), dim=-1)[0]
            best = distribution.max(dim=-1)
            token, prob = int(best.indices), float(best.values)
        return ids, probs

    def _tail_embeds(self, ids: list[int]) -> torch.Tensor:
        """Embeddings of `ids` followed by the 3D Query when the read-out uses it: (1, t, H)."""
        embeds = self._embed_ids(ids)
        if self.readout.append_query:
            embeds = torch.cat([embeds, self.query_embedding.view(1, 1, -1)], dim=1)
        return embeds

    @torch.no_grad()
    def locate(self, context: ImageContext, query: str, policy: str = "auto") -> Located:
        """Answer (if needed) and regress the 3D box for one query on a prepared image.

        Args:
            context: from `prepare_context`; its cache is restored before returning.
            query: the query text, prompts already formatted in (see `format_query`).
            policy: "auto" (the LLM decides whether to answer first), "ground" or "answer".

        Returns:
            Located with head outputs (1, k) in physical units (float32) and the answer phrase.
        """
        if policy not in ANSWER_POLICIES:
            raise ConfigError(f"unknown answer policy {policy!r}; available: {ANSWER_POLICIES}")
        pos, eos = self.llm.pos_id, self.llm.eos_token_id
        middle = self.llm.tokenize(self.llm.template.render_middle(query))
        try:
            hidden = self._step(context, self._tail_embeds([*middle, pos]))
            logits = self.llm.logits(hidden[:, len(middle) - 1]).float()
            first = int(logits.argmax(dim=-1))
            answered = policy == "answer" or (policy == "auto" and first != pos)
            answer_ids: list[int] = []
            if answered:
                _rewind(context.cache, context.prefix_length + len(middle))
                if first in (pos, eos):  # policy "answer" but the LLM would not answer
                    words = logits[0, : self.llm.vocab_size].clone()
                    words[eos] = float("-inf")
                    first = int(words.argmax())
                answer_ids, _ = self._greedy(
                    context, first, {pos, eos}, self.config.llm.max_answer_tokens
                )
                # re-feed the last text token with <pos> so every read-out offset (the
                # text_feature one reads the token before <pos>) sees the training layout
                length = context.prefix_length + len(middle) + len(answer_ids)
                _rewind(context.cache, length - 1)
                last = [*middle, *answer_ids][-1]
                hidden = self._step(context, self._tail_embeds([last, pos]))
            answer = self.llm.decode(answer_ids).strip()
            if self.heads is None:
                outputs = self._text3d_outputs(context, hidden)
            else:
                outputs, _ = self._read_heads(
                    hidden[:, self.readout.offset or -1], context.features
                )
                outputs = {k: v.float() for k, v in outputs.items()}
        finally:
            _rewind(context.cache, context.prefix_length)
        return Located(outputs=outputs, answer=answer, answered=answered)

    def _text3d_outputs(
        self, context: ImageContext, hidden: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Generate and parse the Text3D numbers after <pos>; score = mean token probability."""
        distribution = torch.softmax(self.llm.logits(hidden[:, -1]).float(), dim=-1)[0]
        prob, first = distribution.max(dim=-1)
        ids, probs = self._greedy(
            context,
            int(first),
            {self.llm.eos_token_id},
            self.config.llm.max_text_tokens,
            float(prob),
        )
        outputs = text3d.parse_numbers(self.llm.decode(ids), self.config.heads)
        mean_log = sum(math.log(max(p, 1e-9)) for p in probs) / len(probs)
        confidence = min(max(math.exp(mean_log), 1e-6), 1 - 1e-6)
        outputs["score_logit"] = torch.tensor([[math.log(confidence / (1 - confidence))]])
        return {k: v.to(self.device) for k, v in outputs.items()}
