"""LLMI3D: image branches + SECBA + detector + LLM (LoRA) + 3D Query + pointer (paper III).

Sequence fed to the LLM, one sample (ids >= V are the new tokens of llm.py):

    [template prefix] <image> [N global tokens] [K object tokens] [template middle with the query]
        [answer phrase, config.answer_types only] <pos> [3D Query]

Global tokens are the LR ViT tokens after SECBA (paper III-B); object tokens are the detector's K
candidate objects (their HR feature, position and predicted category / colour, projected to the
LLM's width). Box and point prompts go in as text coordinates of the canvas, normalised to [0, 1]
with two decimals ("... (box: [0.12, 0.30, 0.45, 0.80])"); the pointer also scores candidates
against them geometrically (pointer.py).

Where the box comes from (heads.pointer):

* pointer (default): the 3D Query's last hidden state F_3D and the query words' hidden states
  score the K candidates (pointer.py); the box is the dense heads' output at the chosen
  candidate's cell plus a small residual from F_3D. Training reads the heads at the target's own
  cell (teacher forcing) and teaches the pointer with cross-entropy.
* MLP read-out (the paper): MLP heads on F_3D regress the box (heads.py).

Both give the same physical outputs, decoded by decode.decode_boxes in the canvas frame.

Training (`forward`): teacher forcing on a collated query batch (data/dataset.py); the losses are
the detector's on every object of the images, the pointer's (or the MLP heads') on the queried
object, and cross-entropy on the answer tokens and <pos>. `detector_losses` trains the image side
alone (stage 1, no LLM), from cached backbone features when the backbone is frozen.

Inference (`locate`): the image prefix is run once and its KV cache kept (the Predictor reuses it
for every query on the same image). A query is then one forward pass over [middle, <pos>,
3D Query]: if the LLM's next-token choice after the middle is <pos> (a plain grounding query),
F_3D is read from that same pass; otherwise (a question) the cache is rewound, the answer is
generated greedily until <pos>, and [last answer token, <pos>, 3D Query] is fed (paper III-C).
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
from llmi3d_core.model.decode import ROTATIONS, decode_boxes
from llmi3d_core.model.detector import (
    CellGrid,
    DenseHeads,
    cell_outputs,
    focal_loss,
    gather_cells,
    peaks,
    values_at,
)
from llmi3d_core.model.heads import READOUTS, Heads
from llmi3d_core.model.llm import LanguageModel
from llmi3d_core.model.losses import (
    box_losses,
    box_targets,
    quality_target,
    score_loss,
    weighted_total,
)
from llmi3d_core.model.pointer import (
    CandidatePointer,
    PointerInputs,
    PointerOutput,
    candidate_geometry,
    pointer_loss,
)
from llmi3d_core.model.positions import FOURIER_WIDTH, fourier_encoding
from llmi3d_core.model.secba import build_fusion
from llmi3d_core.model.vision import HighResBranch, LowResBranch

# answer policies of `locate`: "auto" lets the LLM decide (the paper), "ground" never answers,
# "answer" always generates an answer phrase first
ANSWER_POLICIES = ("auto", "ground", "answer")
DEFAULT_LOG_PRIOR = (0.0, 0.0, 0.0)  # 1 m cubes until set_size_priors is called


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
        return Candidates(
            cells=self.cells[rows],
            outputs={k: v[rows] for k, v in self.outputs.items()},
            boxes={k: v[rows] for k, v in self.boxes.items()},
            features=self.features[rows],
            geometry=self.geometry[rows],
            objectness=self.objectness[rows],
            valid=self.valid[rows],
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
    """

    tokens: torch.Tensor
    dense: dict[str, torch.Tensor] | None
    hr_map: torch.Tensor | None
    candidates: Candidates | None
    K: torch.Tensor
    image_size: torch.Tensor

    def select(self, rows: torch.Tensor) -> ImageFeatures:
        """The features of images `rows`."""
        return ImageFeatures(
            tokens=self.tokens[rows],
            dense=None if self.dense is None else {k: v[rows] for k, v in self.dense.items()},
            hr_map=None if self.hr_map is None else self.hr_map[rows],
            candidates=None if self.candidates is None else self.candidates.select(rows),
            K=self.K[rows],
            image_size=self.image_size[rows],
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


def _flatten(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{name: (B, K, k)} -> {name: (B * K, k)}."""
    return {k: v.reshape(-1, v.shape[-1]) for k, v in outputs.items()}


def _repeat(values: torch.Tensor, count: int) -> torch.Tensor:
    """(B, ...) -> (B * count, ...), each row repeated `count` times in place."""
    return values.repeat_interleave(count, dim=0)


class LLMI3D(nn.Module):
    """The LLMI3D model; see the module docstring for the sequence layout."""

    log_priors: torch.Tensor
    score_calibration: torch.Tensor

    def __init__(self, config: ModelConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        check_choice(config.heads.readout, READOUTS, "heads.readout")
        check_choice(config.heads.rotation, ROTATIONS, "heads.rotation")  # the dense heads' too
        if config.heads.readout == "text" and config.heads.pointer:
            raise ConfigError("heads.readout 'text' (Text3D) needs heads.pointer: false")
        self.config = config
        # the dense heads always give (u, v) and depth: their candidates decode as "uv_depth"
        self._dense_config = (
            config
            if config.heads.location == "uv_depth"
            else config.replace(**{"heads.location": "uv_depth"})
        )
        # the LLM first: it is the part most likely to fail (a missing path), and the slowest
        self.llm = LanguageModel(config.llm)
        self.low_res = LowResBranch(config.low_res, load_pretrained)
        lr_dim = self.low_res.hidden_size
        hidden = self.llm.hidden_size
        dtype = self.llm.new_embeddings.dtype
        self.high_res: HighResBranch | None = None
        self.dense_heads: DenseHeads | None = None
        self.fusion: nn.Module | None = None
        self.object_projector: nn.Module | None = None
        categories = len(config.detector.categories)
        self.candidate_width = 0
        if config.high_res.enabled:
            self.high_res = HighResBranch(config.high_res, load_pretrained)
            channels = self.high_res.out_channels
            self.dense_heads = DenseHeads(channels, config)
            self.fusion = build_fusion(config.fusion, lr_dim, channels, self.low_res.grid)
            self.candidate_width = (
                channels + FOURIER_WIDTH + categories + len(config.detector.colors) + 1 + 3
            )
            if config.detector.object_tokens:
                self.object_projector = nn.Sequential(
                    nn.Linear(self.candidate_width, hidden), nn.GELU(), nn.Linear(hidden, hidden)
                )
        self.projector = nn.Sequential(
            nn.Linear(lr_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        scale = float(self.llm.new_embeddings.detach().float().std())
        self.query_embedding = nn.Parameter((scale * torch.randn(hidden)).to(dtype))
        self.readout = READOUTS[config.heads.readout]
        self.heads: Heads | None = None
        self.pointer: CandidatePointer | None = None
        if self.readout.offset is not None:
            if config.heads.pointer:
                self.pointer = CandidatePointer(
                    hidden,
                    self.candidate_width,
                    config.heads.pointer_dim,
                    config.heads.pointer_layers,
                    categories=categories,
                    colors=len(config.detector.colors),
                )
            else:
                self.heads = Heads(hidden, config.heads)
        priors = torch.tensor([DEFAULT_LOG_PRIOR] * (categories + 1), dtype=torch.float32)
        self.register_buffer("log_priors", priors)
        # temperature and bias of the pointer's scores, fitted on validation queries (pointer.py)
        self.register_buffer("score_calibration", torch.tensor([1.0, 0.0]))
        self.prefix_ids = [*self.llm.tokenize(self.llm.template.prefix), self.llm.image_id]
        self._word_targets: torch.Tensor | None = None

    # ------------------------------------------------------------------ set-up

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's parameters."""
        return self.query_embedding.dtype

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.query_embedding.device

    def set_size_priors(self, log_priors: torch.Tensor) -> None:
        """Set the (C + 1, 3) log mean (L, W, H) per category (+ global last row) from data."""
        if log_priors.shape != self.log_priors.shape:
            raise ConfigError(
                f"size priors must be {tuple(self.log_priors.shape)} (categories + global), "
                f"got {tuple(log_priors.shape)}"
            )
        self.log_priors.copy_(log_priors.to(self.log_priors))

    def set_decoding(self, **heads: Any) -> None:
        """Change how outputs are decoded (an inference-time ablation), e.g. eq. 20 as written.

        Only the decoding switches of HeadConfig (use_height_depth, height_extent,
        depth_fusion) may change after training.

        Raises:
            ConfigError: for another key.
        """
        allowed = {"use_height_depth", "height_extent", "depth_fusion"}
        unknown = sorted(set(heads) - allowed)
        if unknown:
            raise ConfigError(f"set_decoding: {unknown} cannot change after training; "
                              f"allowed: {sorted(allowed)}")  # fmt: skip
        self.config = self.config.replace(**{f"heads.{k}": v for k, v in heads.items()})
        self._dense_config = self._dense_config.replace(
            **{f"heads.{k}": v for k, v in heads.items()}
        )

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of pointer logits: sigmoid(logit / T + b)."""
        temperature, bias = self.score_calibration.float()
        return torch.sigmoid(logits.float() / temperature + bias)

    def category_names(self, indices: torch.Tensor) -> list[str]:
        """Category indices -> names ('' for -1)."""
        names = self.config.detector.categories
        return [names[int(i)] if 0 <= int(i) < len(names) else "" for i in indices.reshape(-1)]

    # ------------------------------------------------------------------ image side

    def _grid(self, hr_map: torch.Tensor, image_size: torch.Tensor) -> CellGrid:
        assert self.high_res is not None
        height, width = self.config.high_res.image_size
        return CellGrid(
            stride=float(self.high_res.stride),
            height=int(hr_map.shape[-2]),
            width=int(hr_map.shape[-1]),
            canvas_w=float(width),
            canvas_h=float(height),
        )

    def candidates(
        self,
        hr_map: torch.Tensor,
        dense: dict[str, torch.Tensor],
        K: torch.Tensor,
        image_size: torch.Tensor,
        cells: torch.Tensor | None = None,
    ) -> Candidates:
        """The K strongest heatmap peaks of each image (or the given cells (B, N)) as candidates."""
        if cells is None:
            cells, _ = peaks(dense["heatmap"], self.config.detector.max_objects,
                             self.config.detector.nms_kernel)  # fmt: skip
        raw = {name: gather_cells(maps, cells) for name, maps in dense.items()}
        return self._candidates_at(raw, gather_cells(hr_map, cells), cells, K, image_size)

    def _candidates_at(
        self,
        raw: dict[str, torch.Tensor],
        feature_at: torch.Tensor,
        cells: torch.Tensor,
        K: torch.Tensor,
        image_size: torch.Tensor,
    ) -> Candidates:
        """Candidates from the raw dense values (B, N, k) and F (B, N, C) at their cells (B, N)."""
        B, N = cells.shape
        height, width = self.config.high_res.image_size
        assert self.high_res is not None
        grid = CellGrid(float(self.high_res.stride), height // self.high_res.stride,
                        width // self.high_res.stride, float(width), float(height))  # fmt: skip
        outputs = cell_outputs(raw, cells, grid, self.log_priors, self.config)
        flat = _flatten({k: v.float() for k, v in outputs.items()})
        boxes = decode_boxes(
            flat, _repeat(K.float(), N), _repeat(image_size.float(), N), self._dense_config
        )
        boxes = {k: v.reshape(B, N, *v.shape[1:]) for k, v in boxes.items()}
        parts = [feature_at, fourier_encoding(outputs["center_uv"].float()).to(feature_at)]
        for name in ("category", "color"):
            if name in outputs:
                parts.append(outputs[name].float().softmax(-1).to(feature_at))
        parts += [
            outputs["objectness_logit"].to(feature_at),
            outputs["dims"].clamp(min=1e-3).log().to(feature_at),
        ]
        return Candidates(
            cells=cells,
            outputs=outputs,
            boxes=boxes,
            features=torch.cat(parts, dim=-1),
            geometry=candidate_geometry(
                outputs["center_uv"].float(), boxes["z"], boxes["dims"], outputs["box2d"].float()
            ),
            objectness=outputs["objectness_logit"][..., 0],
            valid=torch.ones(B, N, dtype=torch.bool, device=cells.device),
        )

    def image_side(
        self,
        image_hr: torch.Tensor | None,
        K: torch.Tensor,
        image_size: torch.Tensor,
        backbone: list[torch.Tensor] | None = None,
    ) -> ImageFeatures:
        """The HR branch and the dense heads only (the detector stage): no tokens, no candidates.

        Args:
            image_hr: (B, 3, H, W) canvas in [0, 1], or None when `backbone` is given.
            K: (B, 3, 3) canvas intrinsics.
            image_size: (B, 2) canvas (W, H).
            backbone: cached maps of a frozen backbone; None runs it on image_hr.
        """
        assert self.high_res is not None and self.dense_heads is not None
        vision_dtype = next(self.projector.parameters()).dtype
        if backbone is None:
            assert image_hr is not None
            backbone = self.high_res.backbone_features(image_hr.to(self.device, vision_dtype))
        K = K.to(self.device, torch.float32)
        hr_map = self.high_res.fuse([b.to(self.device, vision_dtype) for b in backbone])
        hr_map = self.high_res.with_rays(hr_map, K)
        return ImageFeatures(
            tokens=hr_map.new_zeros(hr_map.shape[0], 0, self.llm.hidden_size),
            dense=self.dense_heads(hr_map),
            hr_map=hr_map,
            candidates=None,
            K=K.to(self.device, torch.float32),
            image_size=image_size.to(self.device, torch.float32),
        )

    def encode_image(
        self,
        image_lr: torch.Tensor,
        image_hr: torch.Tensor,
        K: torch.Tensor,
        image_size: torch.Tensor,
        backbone: list[torch.Tensor] | None = None,
    ) -> ImageFeatures:
        """Canvas inputs (B, 3, S, S), (B, 3, H, W) in [0, 1] -> image tokens and candidates.

        Args:
            image_lr: (B, 3, S, S) LR input (model/inputs.py).
            image_hr: (B, 3, H, W) the letterboxed canvas.
            K: (B, 3, 3) canvas intrinsics.
            image_size: (B, 2) canvas (W, H).
            backbone: cached HR backbone maps (a frozen backbone's output); None runs it.
        """
        vision_dtype = next(self.projector.parameters()).dtype
        tokens = self.low_res(image_lr.to(self.device, vision_dtype))  # (B, N, C_lr)
        if self.high_res is None or self.fusion is None:
            tokens = self.projector(tokens)
            return ImageFeatures(
                tokens=tokens.to(self.dtype),
                dense=None,
                hr_map=None,
                candidates=None,
                K=K.to(self.device, torch.float32),
                image_size=image_size.to(self.device, torch.float32),
            )
        features = self.image_side(image_hr, K, image_size, backbone)
        assert features.hr_map is not None and features.dense is not None
        tokens = self.fusion(tokens, features.hr_map)  # (B, N', C_lr)
        candidates = self.candidates(
            features.hr_map, features.dense, features.K, features.image_size
        )
        tokens = self.projector(tokens)  # (B, N', hidden)
        if self.object_projector is not None:
            objects = self.object_projector(candidates.features.to(vision_dtype))
            tokens = torch.cat([tokens, objects], dim=1)
        features.tokens = tokens.to(self.dtype)
        features.candidates = candidates
        return features

    def _embed_ids(self, ids: Sequence[int]) -> torch.Tensor:
        """Ids -> (1, T, hidden)."""
        return self.llm.embed(torch.tensor([list(ids)], dtype=torch.long, device=self.device))

    # ------------------------------------------------------------------ detector (stage 1)

    def _word_embeddings(self) -> torch.Tensor:
        """(C, hidden) mean LLM input embedding of each category name (the alignment targets)."""
        if self._word_targets is None or self._word_targets.device != self.device:
            rows = []
            with torch.no_grad():
                for name in self.config.detector.categories:
                    ids = self.llm.tokenize(" " + name)
                    rows.append(self._embed_ids(ids)[0].float().mean(0))
            self._word_targets = torch.stack(rows) if rows else torch.zeros(0, 1)
        return self._word_targets

    def detector_losses(
        self, batch: dict[str, Any], features: ImageFeatures
    ) -> dict[str, torch.Tensor]:
        """Dense losses on every object of the batch's images (module docstring of detector.py).

        Also aligns the object tokens of the objects' centre cells with the LLM's embedding of
        their category name (`align`), so that a frozen LLM reads them as words.
        """
        assert features.dense is not None and features.hr_map is not None
        device = self.device
        dense = features.dense
        heat = batch["heatmap"].to(device)
        ignore = batch["heat_ignore"].to(device)
        valid = batch["obj_valid"].to(device)
        losses = {"heatmap": focal_loss(dense["heatmap"], heat, ignore, valid.sum().float())}
        assign = batch["assign"].to(device)  # (B, h*w)
        rows, cells = torch.nonzero(assign >= 0, as_tuple=True)
        if rows.numel() == 0:
            return losses
        objects = assign[rows, cells]
        grid = self._grid(features.hr_map, features.image_size)
        raw = {name: values_at(m, rows, cells)[:, None, :] for name, m in dense.items()}
        outputs = cell_outputs(raw, cells[:, None], grid, self.log_priors, self.config)
        outputs = {k: v[:, 0] for k, v in outputs.items()}

        def obj(key: str) -> torch.Tensor:
            values: torch.Tensor = batch[f"obj_{key}"].to(device)
            return values[rows, objects]

        targets = {
            "center_uv": obj("center_uv"),
            "depth": (
                obj("virtual_depth")[:, None] if self.config.heads.use_virtual_depth
                else obj("center_cam")[:, 2:]
            ),
            "dims": obj("dims_lwh"),
            "rot6d": obj("rot6d_allo"),
            "box2d": obj("box2d"),
            "keypoints": obj("keypoints"),
            "center_cam": obj("center_cam"),
            "R_cam": obj("R_cam"),
            "K": features.K[rows],
            "image_size": features.image_size[rows],
        }  # fmt: skip
        losses.update(box_losses(outputs, targets, self.config))
        for name in ("category", "color"):
            if name in outputs:
                labels = obj(name)
                if bool((labels >= 0).any()):
                    losses[name] = nn.functional.cross_entropy(
                        outputs[name].float(), labels, ignore_index=-1
                    )
        if self.object_projector is not None and self.config.detector.categories:
            labels = obj("category")
            known = labels >= 0
            if bool(known.any()):
                r, c = rows[known], cells[known]
                at = self._candidates_at(
                    {k: v[known] for k, v in raw.items()},
                    values_at(features.hr_map, r, c)[:, None, :],
                    c[:, None],
                    features.K[r],
                    features.image_size[r],
                )
                vision_dtype = next(self.projector.parameters()).dtype
                tokens = self.object_projector(at.features[:, 0].to(vision_dtype))
                words = self._word_embeddings().to(tokens)[labels[known]]
                losses["align"] = (1 - nn.functional.cosine_similarity(tokens, words, -1)).mean()
        return losses

    # ------------------------------------------------------------------ LLM side

    def _answer_ids(self, query_type: str, answer: str) -> list[int]:
        if query_type in self.config.answer_types and answer.strip():
            return self.llm.tokenize(answer.strip())
        return []

    def _text3d_ids(self, batch: dict[str, Any], index: int) -> list[int]:
        targets = box_targets(batch, self.config)
        values = {k: targets[k][index] for k in text3d.text_fields(self.config.heads)}
        text = text3d.format_numbers(values, self.config.heads)
        return [*self.llm.tokenize(" " + text), self.llm.eos_token_id]

    def _tails(self, batch: dict[str, Any], with_text3d: bool) -> tuple[list[list[int]], list[int]]:
        """Token ids after the image tokens for each sample, and each sample's middle length."""
        tails, middles = [], []
        B = len(batch["query"])
        for i in range(B):
            query = format_query(
                batch["query"][i], batch["box_prompt"][i], batch["point_prompt"][i]
            )
            middle = self.llm.tokenize(self.llm.template.render_middle(query))
            answer = self._answer_ids(batch["query_type"][i], batch.get("answer", [""] * B)[i])
            numbers = self._text3d_ids(batch, i) if with_text3d else []
            tails.append(middle + answer + [self.llm.pos_id] + numbers)
            middles.append(len(middle))
        return tails, middles

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

    def _states(
        self, hidden: torch.Tensor, start: int, middles: list[int], ends: list[int]
    ) -> QueryStates:
        """Read F_3D and the query words' hidden states out of a teacher-forced pass."""
        B = hidden.shape[0]
        offset = self.readout.offset or -1  # from the end: -1 is the last token
        rows = torch.arange(B, device=self.device)
        index = torch.tensor([last + 1 + offset for last in ends], device=self.device)
        longest = max(middles)
        cols = start + torch.arange(longest, device=self.device)[None, :].expand(B, -1)
        mask = (
            torch.arange(longest, device=self.device)[None, :]
            < torch.tensor(middles, device=self.device)[:, None]
        )
        words = hidden[rows[:, None], cols.clamp(max=hidden.shape[1] - 1)]
        return QueryStates(f3d=hidden[rows, index], words=words, word_mask=mask)

    # ------------------------------------------------------------------ read-outs

    def point(
        self, states: QueryStates, candidates: Candidates, box_prompt: torch.Tensor,
        point_prompt: torch.Tensor,
    ) -> PointerOutput:  # fmt: skip
        """The pointer's scores (B, K + 1) and residuals (B, K, 4) of queries' candidates."""
        assert self.pointer is not None
        outputs = candidates.outputs
        inputs = PointerInputs(
            f3d=states.f3d,
            words=states.words,
            word_mask=states.word_mask,
            features=candidates.features,
            geometry=candidates.geometry,
            objectness=candidates.objectness,
            valid=candidates.valid,
            box_prompt=box_prompt.to(self.device, torch.float32),
            point_prompt=point_prompt.to(self.device, torch.float32),
            category_probs=outputs["category"].float().softmax(-1)
            if "category" in outputs
            else None,
            color_probs=outputs["color"].float().softmax(-1) if "color" in outputs else None,
        )
        return self.pointer(inputs)  # type: ignore[no-any-return]

    def text_losses(self, pointed: PointerOutput, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Cross-entropy of the category and colour the query names (pointer.py), if present."""
        losses: dict[str, torch.Tensor] = {}
        for name, logits in (
            ("text_category", pointed.category_logits),
            ("text_color", pointed.color_logits),
        ):
            key = "query_" + name.split("_")[1]
            if logits is not None and key in batch:
                target = batch[key].to(self.device)
                losses[name] = nn.functional.cross_entropy(logits.float(), target)
        return losses

    @staticmethod
    def corrected(
        outputs: dict[str, torch.Tensor], residual: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Apply the pointer's residual (..., 4) to log depth and log (L, W, H) of `outputs`."""
        out = dict(outputs)
        if "depth" in out:
            out["depth"] = out["depth"] * residual[..., :1].float().exp()
        out["dims"] = out["dims"] * residual[..., 1:4].float().exp()
        return out

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        """Teacher-forced forward pass on a collated query batch (data/dataset.py contract).

        With the targets in the batch (training and validation) it also returns the losses.
        """
        features = self.encode_image(
            batch["image_lr"], batch["image_hr"], batch["K"], batch["image_size"]
        )
        with_targets = "dims_lwh" in batch
        tails, middles = self._tails(batch, self.readout.offset is None and with_targets)
        hidden, start, ends = self._run_teacher_forced(features.tokens, tails)
        losses: dict[str, torch.Tensor] = {}
        result = ModelOutput(boxes={})
        if self.readout.offset is not None:
            states = self._states(hidden, start, middles, ends)
            if self.pointer is not None:
                result, losses = self._pointer_forward(batch, features, states, with_targets)
            else:
                result, losses = self._mlp_forward(batch, features, states, with_targets)
        if with_targets:
            if features.dense is not None and "heatmap" in batch:
                for name, value in self.detector_losses(batch, features).items():
                    # the MLP read-out's box terms share names with the dense ones: add both
                    losses[name] = losses[name] + value if name in losses else value
            losses["text"] = self._text_loss(hidden, start, tails, middles)
            losses["total"] = weighted_total(losses, self.config)
            result.losses = losses
        return result

    def _pointer_forward(
        self, batch: dict[str, Any], features: ImageFeatures, states: QueryStates,
        with_targets: bool,
    ) -> tuple[ModelOutput, dict[str, torch.Tensor]]:  # fmt: skip
        assert features.candidates is not None and features.dense is not None
        assert features.hr_map is not None
        candidates = features.candidates
        losses: dict[str, torch.Tensor] = {}
        is_target = None
        if with_targets:  # teacher forcing: the targets' own cells are always candidates
            candidates, is_target = self.with_target_cell(batch, features)
        pointed = self.point(states, candidates, batch["box_prompt"], batch["point_prompt"])
        logits, residual = pointed.logits, pointed.residual
        K = candidates.cells.shape[1]
        choice = logits[:, :K].argmax(dim=-1)  # (B,), the best object (not "no object")
        rows = torch.arange(logits.shape[0], device=self.device)
        chosen = self.corrected(
            {k: v[rows, choice] for k, v in candidates.outputs.items()}, residual[rows, choice]
        )
        boxes = decode_boxes(
            {k: v.float() for k, v in chosen.items()}, features.K, features.image_size,
            self.config,
        )  # fmt: skip
        if with_targets and is_target is not None:
            losses["pointer"] = pointer_loss(logits, is_target, candidates.valid)
            losses["residual"] = self.residual_loss(batch, candidates, residual, is_target)
            losses.update(self.text_losses(pointed, batch))
        return (
            ModelOutput(boxes=boxes, pointer_logits=logits, chosen_box2d=chosen["box2d"]),
            losses,
        )

    def residual_loss(
        self, batch: dict[str, Any], candidates: Candidates, residual: torch.Tensor,
        is_target: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """Depth and size loss of the corrected outputs at the first target's slot.

        Queries without a target (negatives) and multi-target queries (whose fields describe
        only their first target) add nothing.
        """
        single = is_target.any(dim=-1) & (batch["target_mask"].to(self.device).sum(-1) == 1)
        if not bool(single.any()):
            return residual.sum() * 0.0
        rows = torch.nonzero(single, as_tuple=True)[0]
        slot = is_target[rows].float().argmax(dim=-1)
        at_target = self.corrected(
            {k: v[rows, slot] for k, v in candidates.outputs.items()}, residual[rows, slot]
        )
        targets = {k: v[rows] for k, v in box_targets(batch, self.config).items()}
        terms = box_losses(at_target, targets, self.config)
        return terms.get("depth", terms["dims"] * 0.0) + terms["dims"]

    def target_slots(self, batch: dict[str, Any], cells: torch.Tensor) -> torch.Tensor:
        """(B, K) bool: candidate cells the dense targets assign to one of the query's targets."""
        assign = batch["assign"].to(self.device)  # (B, h*w)
        owner = assign.gather(1, cells)  # (B, K), -1: no object
        targets: torch.Tensor = batch["target_mask"].to(self.device)  # (B, M)
        slots: torch.Tensor = targets.gather(1, owner.clamp(min=0)) & (owner >= 0)
        return slots

    def with_target_cell(
        self, batch: dict[str, Any], features: ImageFeatures
    ) -> tuple[Candidates, torch.Tensor]:
        """Candidates where every target the detector missed replaces one of the last slots.

        Returns the candidates and is_target (B, K): the slots whose cell belongs to a target
        (its centre cell, or a neighbour the dense targets assign to it). Teacher forcing: the
        pointer always learns with its targets on offer.
        """
        assert features.candidates is not None and features.dense is not None
        assert features.hr_map is not None
        cands = features.candidates
        is_target = self.target_slots(batch, cands.cells)
        assign = batch["assign"].to(self.device)
        owner = assign.gather(1, cands.cells)  # (B, K)
        targets: torch.Tensor = batch["target_mask"].to(self.device)  # (B, M)
        M = targets.shape[1]
        # (B, M): object m owns a candidate (a scatter of owner >= 0 would let the -1 slots,
        # clamped to object 0, overwrite object 0's True: duplicate indices, last write wins)
        found = (owner[:, None, :] == torch.arange(M, device=owner.device)[None, :, None]).any(-1)
        missing = targets & ~found  # (B, M)
        if not bool(missing.any()):
            return cands, is_target
        grid = self._grid(features.hr_map, features.image_size)
        centres = batch["obj_center_uv"].to(self.device, torch.float32)  # (B, M, 2)
        object_cells = grid.cell_of(centres * features.image_size[:, None, :])  # (B, M)
        cells = cands.cells.clone()
        injected = torch.zeros_like(is_target)
        K = cells.shape[1]
        for row, column in zip(*torch.nonzero(missing, as_tuple=True), strict=True):
            slot = K - 1 - int(injected[row].sum())
            if slot < 0 or int(column) >= M:
                continue
            cells[row, slot] = object_cells[row, column]
            injected[row, slot] = True
        cands = self.candidates(features.hr_map, features.dense, features.K,
                                features.image_size, cells)  # fmt: skip
        return cands, self.target_slots(batch, cells) | injected

    def _mlp_forward(
        self, batch: dict[str, Any], features: ImageFeatures, states: QueryStates,
        with_targets: bool,
    ) -> tuple[ModelOutput, dict[str, torch.Tensor]]:  # fmt: skip
        assert self.heads is not None
        outputs = self.heads(states.f3d, self.log_priors[-1])
        outputs = {k: v.float() for k, v in outputs.items()}
        boxes = decode_boxes(outputs, features.K, features.image_size, self.config)
        losses: dict[str, torch.Tensor] = {}
        single = batch["target_mask"].to(self.device).sum(-1) == 1 if with_targets else None
        if single is not None and bool(single.any()):
            # the paper's read-out regresses one box: single-target queries teach it, and its
            # score learns that a query without a single target has no good box
            rows = torch.nonzero(single, as_tuple=True)[0]
            targets = {k: v[rows] for k, v in box_targets(batch, self.config).items()}
            losses.update(
                box_losses({k: v[rows] for k, v in outputs.items()}, targets, self.config)
            )
            gt_z = batch["center_cam"][:, 2].to(self.device, torch.float32)
            quality = (
                quality_target(
                    outputs["box2d"],
                    batch["box2d"].to(self.device, torch.float32),
                    boxes["z"],
                    gt_z,
                )
                * single.float()
            )
            losses["score"] = score_loss(outputs["score_logit"], quality)
        return ModelOutput(boxes=boxes, chosen_box2d=outputs["box2d"]), losses

    def _text_loss(
        self, hidden: torch.Tensor, start: int, tails: list[list[int]], middles: list[int]
    ) -> torch.Tensor:
        """Cross-entropy on the supervised tail tokens (answer, <pos>, Text3D numbers)."""
        rows = [i for i, tail in enumerate(tails) for _ in range(middles[i], len(tail))]
        positions = [p for i, tail in enumerate(tails) for p in range(middles[i], len(tail))]
        cols = [start + p - 1 for p in positions]  # the position predicting token p
        labels = [tails[i][p] for i, p in zip(rows, positions, strict=True)]
        logits = self.llm.logits(hidden[rows, cols])  # (M, V + 2)
        return nn.functional.cross_entropy(logits.float(), torch.tensor(labels, device=self.device))

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def prepare_context(self, features: ImageFeatures, index: int = 0) -> ImageContext:
        """Run the LLM over [prefix, <image>, image tokens] of one image and keep its KV cache."""
        single = features.select(torch.tensor([index], device=features.tokens.device))
        embeds = torch.cat([self._embed_ids(self.prefix_ids), single.tokens], dim=1)
        _, cache = self.llm.hidden_states(embeds, use_cache=True)
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
    def teacher_forced_states(
        self, context: ImageContext, items: Sequence[dict[str, Any]]
    ) -> list[QueryStates]:
        """The states of dataset queries of one image (data/dataset.py items), training layout.

        Like `forward` (the answer phrase of config.answer_types fed, not generated), but from
        the image's KV cache, all queries in one batched pass (the cache is repeated for them and
        restored afterwards): what the pointer stage caches.
        """
        tails, middles = self._tails(
            {
                "query": [i["query"] for i in items],
                "box_prompt": [i["box_prompt"] for i in items],
                "point_prompt": [i["point_prompt"] for i in items],
                "query_type": [i["query_type"] for i in items],
                "answer": [i.get("answer", "") for i in items],
            },
            with_text3d=False,
        )
        n = len(items)
        extra = 1 if self.readout.append_query else 0
        lengths = [len(t) + extra for t in tails]
        longest = max(lengths)
        ids = torch.zeros(n, longest, dtype=torch.long, device=self.device)
        for row, tail in enumerate(tails):
            ids[row, : len(tail)] = torch.tensor(tail, device=self.device)
        embeds = self.llm.embed(ids)  # (n, T, H)
        if extra:
            rows = torch.arange(n, device=self.device)
            last = torch.tensor([length - 1 for length in lengths], device=self.device)
            embeds = embeds.index_put((rows, last), self.query_embedding.expand(n, -1))
        positions = torch.arange(context.prefix_length + longest, device=self.device)
        limit = torch.tensor([context.prefix_length + length for length in lengths])
        mask = (positions[None, :] < limit.to(self.device)[:, None]).long()
        cache = context.cache
        cache.batch_repeat_interleave(n)
        try:
            hidden, _ = self.llm.hidden_states(embeds, attention_mask=mask, cache=cache)
        finally:
            cache.batch_select_indices(torch.tensor([0], device=self.device))
            _rewind(cache, context.prefix_length)
        offset = self.readout.offset or -1
        return [
            QueryStates(
                f3d=hidden[row : row + 1, lengths[row] + offset],
                words=hidden[row : row + 1, : middles[row]],
                word_mask=torch.ones(1, middles[row], dtype=torch.bool, device=self.device),
            )
            for row in range(n)
        ]

    @torch.no_grad()
    def query_states(
        self, context: ImageContext, query: str, policy: str = "auto"
    ) -> tuple[QueryStates | None, torch.Tensor, str, bool]:
        """Run one query on a prepared image: F_3D and the query words' states.

        Returns (the states, None for Text3D; the last hidden states (1, t, H); the answer
        phrase; whether it was generated). The cache is left extended by the query: the
        caller rewinds it to `context.prefix_length` (Text3D first generates its numbers).
        """
        if policy not in ANSWER_POLICIES:
            raise ConfigError(f"unknown answer policy {policy!r}; available: {ANSWER_POLICIES}")
        pos, eos = self.llm.pos_id, self.llm.eos_token_id
        middle = self.llm.tokenize(self.llm.template.render_middle(query))
        hidden = self._step(context, self._tail_embeds([*middle, pos]))
        words = hidden[:, : len(middle)]
        logits = self.llm.logits(hidden[:, len(middle) - 1]).float()
        first = int(logits.argmax(dim=-1))
        answered = policy == "answer" or (policy == "auto" and first != pos)
        answer_ids: list[int] = []
        if answered:
            _rewind(context.cache, context.prefix_length + len(middle))
            if first in (pos, eos):  # policy "answer" but the LLM would not answer
                candidates = logits[0, : self.llm.vocab_size].clone()
                candidates[eos] = float("-inf")
                first = int(candidates.argmax())
            answer_ids, _ = self._greedy(
                context, first, {pos, eos}, self.config.llm.max_answer_tokens
            )
            # re-feed the last text token with <pos> so every read-out offset (the
            # text_feature one reads the token before <pos>) sees the training layout
            length = context.prefix_length + len(middle) + len(answer_ids)
            _rewind(context.cache, length - 1)
            last = [*middle, *answer_ids][-1]
            hidden = self._step(context, self._tail_embeds([last, pos]))
        states = None
        if self.readout.offset is not None:
            states = QueryStates(
                f3d=hidden[:, self.readout.offset],
                words=words,
                word_mask=torch.ones(words.shape[:2], dtype=torch.bool, device=self.device),
            )
        return states, hidden, self.llm.decode(answer_ids).strip(), answered

    @torch.no_grad()
    def locate(
        self,
        context: ImageContext,
        query: str,
        policy: str = "auto",
        box_prompt: torch.Tensor | None = None,
        point_prompt: torch.Tensor | None = None,
    ) -> Located:
        """Answer (if needed) and locate the object of one query on a prepared image.

        Args:
            context: from `prepare_context`; its cache is restored before returning.
            query: the query text, prompts already formatted in (see `format_query`).
            policy: "auto" (the LLM decides whether to answer first), "ground" or "answer".
            box_prompt: (4,) normalised canvas box for the pointer's geometric prompt term,
                or None.
            point_prompt: (2,) normalised canvas point, likewise.

        Returns:
            Located with every candidate's decoded box, best first (one for the MLP read-out).
        """
        try:
            states, hidden, answer, answered = self.query_states(context, query, policy)
            features = context.features
            if states is None:
                outputs = self._text3d_outputs(context, hidden)
                return self._single(outputs, features, answer, answered)
            if self.pointer is None:
                assert self.heads is not None
                outputs = {
                    k: v.float() for k, v in self.heads(states.f3d, self.log_priors[-1]).items()
                }
                return self._single(outputs, features, answer, answered)
            assert features.candidates is not None
            nan4 = torch.full((1, 4), float("nan"), device=self.device)
            nan2 = torch.full((1, 2), float("nan"), device=self.device)
            box = nan4 if box_prompt is None else box_prompt.reshape(1, 4).to(self.device)
            point = nan2 if point_prompt is None else point_prompt.reshape(1, 2).to(self.device)
            pointed = self.point(states, features.candidates, box, point)
            return self._ranked(features, pointed.logits[0], pointed.residual[0], answer, answered)
        finally:
            _rewind(context.cache, context.prefix_length)

    def _single(
        self, outputs: dict[str, torch.Tensor], features: ImageFeatures, answer: str,
        answered: bool,
    ) -> Located:  # fmt: skip
        """Located of one box from (1, k) physical outputs (MLP read-out or Text3D)."""
        boxes = decode_boxes(outputs, features.K, features.image_size, self.config)
        score = torch.sigmoid(outputs["score_logit"].reshape(-1)[:1])
        return Located(
            boxes=boxes,
            scores=score,
            categories=torch.full((1,), -1, dtype=torch.long),
            answer=answer,
            answered=answered,
        )

    def _ranked(
        self, features: ImageFeatures, logits: torch.Tensor, residual: torch.Tensor, answer: str,
        answered: bool,
    ) -> Located:  # fmt: skip
        """Located of every valid candidate, best first, scored by the calibrated pointer."""
        cands = features.candidates
        assert cands is not None
        probabilities = self.scores(logits)  # (K + 1,)
        scores, nothing = probabilities[:-1], float(probabilities[-1])
        order = torch.argsort(scores, descending=True)
        order = order[cands.valid[0, order]]
        outputs = self.corrected(
            {k: v[0, order].float() for k, v in cands.outputs.items()}, residual[order]
        )
        n = len(order)
        boxes = decode_boxes(
            outputs, features.K.expand(n, 3, 3), features.image_size.expand(n, 2), self.config
        )
        category = outputs.get("category")
        categories = (
            category.argmax(dim=-1) if category is not None
            else torch.full((n,), -1, dtype=torch.long, device=self.device)
        )  # fmt: skip
        return Located(
            boxes=boxes, scores=scores[order], categories=categories, answer=answer,
            answered=answered, nothing_score=nothing,
        )  # fmt: skip

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
        outputs = {k: v.to(self.device) for k, v in outputs.items()}
        if "dims" in outputs:
            outputs["dims"] = outputs["dims"].clamp(min=1e-3)
        return outputs
