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

The class wires the parts and keeps the entry points; the work is in outputs.py (what the stages
return), candidates.py, sequence.py (the LLM side), batch_losses.py and located.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from llmi3d_core.errors import ConfigError
from llmi3d_core.model import candidates as candidate_set
from llmi3d_core.model import located, sequence
from llmi3d_core.model.batch_losses import (
    ObjectCells,
    dense_losses,
    mlp_readout_losses,
    residual_loss,
    text_losses,
)
from llmi3d_core.model.config import ModelConfig, check_choice
from llmi3d_core.model.crops import (
    CropHeads,
    crop_boxes,
    crop_descriptors,
    mix,
    refine,
)
from llmi3d_core.model.decode import ROTATIONS, decode_boxes
from llmi3d_core.model.detector import (
    CellGrid,
    DenseHeads,
    cell_outputs,
    distinct_boxes,
    gather_cells,
    local_maxima,
    peaks,
    values_at,
)
from llmi3d_core.model.heads import READOUTS, Heads
from llmi3d_core.model.llm import LanguageModel
from llmi3d_core.model.losses import weighted_total
from llmi3d_core.model.outputs import (
    Candidates,
    ImageContext,
    ImageFeatures,
    Located,
    ModelOutput,
    QueryStates,
)
from llmi3d_core.model.pointer import EVIDENCE, CandidatePointer, PointerOutput, pointer_loss
from llmi3d_core.model.positions import FOURIER_WIDTH
from llmi3d_core.model.secba import build_fusion
from llmi3d_core.model.vision import HighResBranch, LowResBranch
from llmi3d_core.prediction import NO_ANSWER_RATIO

DEFAULT_LOG_PRIOR = (0.0, 0.0, 0.0)  # 1 m cubes until set_size_priors is called
# detector.candidate_nms "box2d" ranks this many of the strongest cells (of 1,056 on the default
# 192 x 352 canvas): the local maxima among them are kept, and an object's other cells, which
# regress near-identical boxes, are dropped.
CANDIDATE_POOL = 256


class LLMI3D(nn.Module):
    """The LLMI3D model; see the module docstring for the sequence layout."""

    log_priors: torch.Tensor
    score_calibration: torch.Tensor
    others_calibration: torch.Tensor
    answer_ratio: torch.Tensor
    answer_calibration: torch.Tensor

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
        self.crop_heads: CropHeads | None = None
        if config.high_res.enabled:
            self.high_res = HighResBranch(config.high_res, load_pretrained)
            channels = self.high_res.out_channels
            self.dense_heads = DenseHeads(channels, config)
            self.fusion = build_fusion(config.fusion, lr_dim, channels, self.low_res.grid)
            self.candidate_width = (
                channels + FOURIER_WIDTH + categories + len(config.detector.colors) + 1 + 3
            )
            if config.detector.crop_heads and categories:
                maps: list[int] = list(self.high_res.backbone.channels)  # type: ignore[arg-type]
                self.crop_heads = CropHeads(
                    maps, categories, len(config.detector.colors), config.detector.crop_hidden,
                    config.detector.crop_names_from,
                )  # fmt: skip
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
                    spatial=config.heads.pointer_spatial,
                )
            else:
                self.heads = Heads(hidden, config.heads)
        priors = torch.tensor([DEFAULT_LOG_PRIOR] * (categories + 1), dtype=torch.float32)
        self.register_buffer("log_priors", priors)
        # temperature and bias of the pointer's scores, fitted on validation queries (pointer.py):
        # of each query's best candidate ("no object" too), and of the candidates after it
        self.register_buffer("score_calibration", torch.tensor([1.0, 0.0]))
        self.register_buffer("others_calibration", torch.tensor([1.0, 0.0]))
        # the answer rule's min_ratio_to_nothing fitted for this model on validation queries
        # (prediction.fit_min_ratio_to_nothing); negative (NO_ANSWER_RATIO): none, the node's
        # default serves it
        self.register_buffer("answer_ratio", torch.tensor(NO_ANSWER_RATIO))
        # weights and bias over pointer.EVIDENCE of a worded query's best candidate's score,
        # fitted on validation queries (pointer.fit_answer_calibration); zeros: none, the
        # logit's calibration (score_calibration) serves
        self.register_buffer("answer_calibration", torch.zeros(len(EVIDENCE) + 1))
        self.prefix_ids = [*self.llm.tokenize(self.llm.template.prefix), self.llm.image_id]
        self._word_targets: torch.Tensor | None = None
        # an evaluation seam, None in use and in training: called with each image's candidate
        # outputs (names mixed, 2D boxes corrected) before they are described, it may replace
        # their names (eval_predict.predict_with_true_names: the upper bound of naming)
        self.rename_candidates: Callable[[dict[str, torch.Tensor]], None] | None = None

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
        """Calibrated probabilities of pointer logits: sigmoid(logit / T + b).

        The calibration of a query's best candidate and of "no object"; `other_scores` holds
        the one of the candidates ranked after the best.
        """
        temperature, bias = self.score_calibration.float()
        return torch.sigmoid(logits.float() / temperature + bias)

    def best_scores(
        self, pointed: PointerOutput, choice: torch.Tensor, worded: torch.Tensor
    ) -> torch.Tensor:
        """(B,) calibrated scores of each query's best candidate `choice` (B,).

        A worded query's best candidate (`worded` (B,): no box or point prompt) is scored from
        its evidence when the model has an answer calibration (pointer.py); any other from its
        logit (`scores`).
        """
        rows = torch.arange(choice.shape[0], device=choice.device)
        plain = self.scores(pointed.logits[rows, choice])
        weights = self.answer_calibration.float()
        if pointed.evidence is None or not bool(weights.any()):
            return plain
        evidence = pointed.evidence[rows, choice].float()  # (B, E)
        from_evidence = torch.sigmoid(evidence @ weights[:-1] + weights[-1])
        return torch.where(worded.to(plain.device), from_evidence, plain)

    @property
    def fitted_answer_ratio(self) -> float | None:
        """The min_ratio_to_nothing fitted for this model (`answer_ratio`), None without one."""
        value = float(self.answer_ratio)
        return value if value >= 0 else None

    def other_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of pointer logits read as a candidate after the best.

        A second box is right far less often than a best box of the same logit (another
        object must match too), so it has a temperature and bias of its own (pointer.py).
        """
        temperature, bias = self.others_calibration.float()
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
        *,
        image_hr: torch.Tensor | None = None,
        box2d: torch.Tensor | None = None,
    ) -> Candidates:
        """The K strongest heatmap peaks of each image (or the given cells (B, N)) as candidates.

        With the canvas `image_hr` and fitted crop heads, the candidates are also named, and
        their 2D boxes corrected, from crops of their boxes (model/crops.py). `box2d` (B, N, 4),
        normalised canvas xyxy, replaces the dense heads' 2D boxes (a box prompt's).
        """
        if cells is None:
            cells = self._candidate_cells(dense, image_size)
        raw = {name: gather_cells(maps, cells) for name, maps in dense.items()}
        return self._candidates_at(
            raw, gather_cells(hr_map, cells), cells, K, image_size, image_hr=image_hr,
            box2d=box2d,
        )  # fmt: skip

    def _candidate_cells(
        self, dense: dict[str, torch.Tensor], image_size: torch.Tensor
    ) -> torch.Tensor:
        """(B, K) the cells whose outputs become the candidates (detector.candidate_nms)."""
        detector = self.config.detector
        if detector.candidate_nms == "heatmap":
            cells, _ = peaks(dense["heatmap"], detector.max_objects, detector.nms_kernel)
            return cells
        heatmap = dense["heatmap"]
        grid = self._grid(heatmap, image_size)
        pool, _ = peaks(heatmap, CANDIDATE_POOL, kernel=1)  # the strongest cells
        raw = {name: gather_cells(maps, pool) for name, maps in dense.items()}
        boxes = cell_outputs(raw, pool, grid, self.log_priors, self.config)["box2d"]
        maxima = local_maxima(heatmap, detector.nms_kernel).gather(1, pool)
        chosen = distinct_boxes(boxes, detector.max_objects, detector.candidate_nms_iou, maxima)
        return pool.gather(1, chosen)

    def box_prompt_candidate(
        self, features: ImageFeatures, box_prompt: torch.Tensor
    ) -> Candidates | None:
        """The candidate a box prompt adds to its query (candidates.box_prompt_cell), or None.

        Read at the strongest heatmap cell in the middle of the box, with the prompt as its 2D
        box (corrected from a crop when the crop heads are fitted). `features`: one image's;
        `box_prompt`: (4,) normalised canvas xyxy. None without the dense maps, or when the
        prompt is NaN (a batch's "no prompt").
        """
        dense, hr_map = features.dense, features.hr_map
        if dense is None or hr_map is None or not bool(torch.isfinite(box_prompt).all()):
            return None
        height, width = self.config.high_res.image_size
        box = box_prompt.reshape(4).to(self.device, torch.float32)
        scale = box.new_tensor([width, height, width, height])
        grid = self._grid(hr_map, features.image_size)
        cell = candidate_set.box_prompt_cell(dense["heatmap"][0].flatten(), grid, box * scale)
        image_hr = None if features.image_hr is None else features.image_hr[:1]
        return self.candidates(
            hr_map[:1], {k: v[:1] for k, v in dense.items()}, features.K[:1],
            features.image_size[:1], torch.tensor([[cell]], device=self.device),
            image_hr=image_hr, box2d=box.reshape(1, 1, 4),
        )  # fmt: skip

    def crop_outputs(
        self, image_hr: torch.Tensor, rows: torch.Tensor, boxes_px: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The crop heads' outputs for boxes (N, 4) canvas px xyxy of images `rows` (N,)."""
        assert self.crop_heads is not None and self.high_res is not None
        outputs: dict[str, torch.Tensor] = self.crop_heads(
            self.crop_descriptors(image_hr, rows, boxes_px)
        )
        return outputs

    def crop_descriptors(
        self, image_hr: torch.Tensor, rows: torch.Tensor, boxes_px: torch.Tensor
    ) -> torch.Tensor:
        """`crops.crop_descriptors` of boxes (N, 4) canvas px xyxy of images `rows` (N,)."""
        assert self.high_res is not None
        detector = self.config.detector
        vision_dtype = next(self.projector.parameters()).dtype
        crops = crop_boxes(image_hr.to(self.device, vision_dtype), rows, boxes_px,
                           detector.crop_size, detector.crop_context)  # fmt: skip
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.high_res.trainable):
            maps = self.high_res.backbone(crops)
        return crop_descriptors(maps, crops, boxes_px.to(crops.device))

    def _candidates_at(
        self,
        raw: dict[str, torch.Tensor],
        feature_at: torch.Tensor,
        cells: torch.Tensor,
        K: torch.Tensor,
        image_size: torch.Tensor,
        *,
        image_hr: torch.Tensor | None = None,
        box2d: torch.Tensor | None = None,
    ) -> Candidates:
        """Candidates from the raw dense values (B, N, k) and F (B, N, C) at their cells (B, N).

        `box2d` (B, N, 4), normalised canvas xyxy, replaces the dense heads' 2D boxes (a box
        prompt's candidate: corrected once from its crop, whatever `detector.crop_passes` says).
        """
        height, width = self.config.high_res.image_size
        assert self.high_res is not None
        grid = CellGrid(float(self.high_res.stride), height // self.high_res.stride,
                        width // self.high_res.stride, float(width), float(height))  # fmt: skip
        outputs = cell_outputs(raw, cells, grid, self.log_priors, self.config)
        if box2d is not None:
            outputs["box2d"] = box2d.to(outputs["box2d"])
        heads = self.crop_heads
        if image_hr is not None and heads is not None and bool(heads.fitted):
            B, N = cells.shape
            rows = torch.arange(B, device=cells.device).repeat_interleave(N)
            scale = outputs["box2d"].new_tensor([width, height, width, height])
            boxes_px = (outputs["box2d"].float() * scale).reshape(B * N, 4)
            passes = 1 if box2d is not None else self.config.detector.crop_passes
            for index in range(passes):
                seen = self.crop_outputs(image_hr, rows, boxes_px)
                if index == 0:
                    for name in ("category", "color"):
                        if name in outputs and name in seen:
                            outputs[name] = mix(outputs[name], seen[name].reshape(B, N, -1))
                boxes_px = refine(boxes_px, seen["box"].float())
            refined = boxes_px / scale
            outputs["box2d"] = refined.reshape(B, N, 4).to(outputs["box2d"].dtype)
        if self.rename_candidates is not None:
            self.rename_candidates(outputs)
        return candidate_set.candidates_from_outputs(
            outputs, feature_at, cells, K, image_size, dense_config=self._dense_config
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
        if self.crop_heads is not None:
            features.image_hr = image_hr.to(self.device)
        candidates = self.candidates(
            features.hr_map, features.dense, features.K, features.image_size,
            image_hr=features.image_hr,
        )  # fmt: skip
        tokens = self.projector(tokens)  # (B, N', hidden)
        if self.object_projector is not None:
            objects = self.object_projector(candidates.features.to(vision_dtype))
            tokens = torch.cat([tokens, objects], dim=1)
        features.tokens = tokens.to(self.dtype)
        features.candidates = candidates
        return features

    # ------------------------------------------------------------------ detector (stage 1)

    def _word_embeddings(self) -> torch.Tensor:
        """(C, hidden) mean LLM input embedding of each category name (the alignment targets)."""
        if self._word_targets is None or self._word_targets.device != self.device:
            rows = []
            with torch.no_grad():
                for name in self.config.detector.categories:
                    ids = self.llm.tokenize(" " + name)
                    rows.append(sequence.embed_ids(self, ids)[0].float().mean(0))
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
        grid = self._grid(features.hr_map, features.image_size)
        losses, objects = dense_losses(batch, features, grid, log_priors=self.log_priors,
                                       config=self.config, device=self.device)  # fmt: skip
        if objects is not None:
            align = self._align_loss(batch, features, objects)
            if align is not None:
                losses["align"] = align
        return losses

    def _align_loss(
        self, batch: dict[str, Any], features: ImageFeatures, objects: ObjectCells
    ) -> torch.Tensor | None:
        """1 - cosine of the object tokens at objects' cells and their category name's embedding.

        None without object tokens or when no object has a known category.

        The alignment names the training categories; it does not reach the held-out ones.
        Measured 2026-12-04 on the default model's test captions and questions, for queries
        where some candidate matches the target (2D IoU > 0.5). The oracle picked the candidate
        whose object token is nearest (cosine) to the embedding of the target's true category
        name. It found the target on 345 of 539 queries of trained categories, and on 18 of 123
        of held-out ones (bed, bus, ...).
        """
        if self.object_projector is None or not self.config.detector.categories:
            return None
        assert features.hr_map is not None
        labels: torch.Tensor = batch["obj_category"].to(self.device)[objects.rows, objects.objects]
        known = labels >= 0
        if not bool(known.any()):
            return None
        r, c = objects.rows[known], objects.cells[known]
        at = self._candidates_at(
            {k: v[known] for k, v in objects.raw.items()},
            values_at(features.hr_map, r, c)[:, None, :],
            c[:, None],
            features.K[r],
            features.image_size[r],
        )
        vision_dtype = next(self.projector.parameters()).dtype
        tokens = self.object_projector(at.features[:, 0].to(vision_dtype))
        words = self._word_embeddings().to(tokens)[labels[known]]
        return (1 - nn.functional.cosine_similarity(tokens, words, -1)).mean()

    # ------------------------------------------------------------------ read-outs

    def point(
        self, states: QueryStates, candidates: Candidates, box_prompt: torch.Tensor,
        point_prompt: torch.Tensor,
    ) -> PointerOutput:  # fmt: skip
        """The pointer's scores (B, K + 1) and residuals (B, K, 4) of queries' candidates."""
        assert self.pointer is not None
        inputs = candidate_set.pointer_inputs(states, candidates, box_prompt, point_prompt)
        return self.pointer(inputs)  # type: ignore[no-any-return]

    def text_losses(self, pointed: PointerOutput, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Cross-entropy of the category and colour the query names (batch_losses.text_losses)."""
        return text_losses(pointed, batch)

    @staticmethod
    def corrected(
        outputs: dict[str, torch.Tensor], residual: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Apply the pointer's residual (..., 4) to log depth and log (L, W, H) of `outputs`."""
        return candidate_set.corrected(outputs, residual)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        """Teacher-forced forward pass on a collated query batch (data/dataset.py contract).

        With the targets in the batch (training and validation) it also returns the losses.
        """
        features = self.encode_image(
            batch["image_lr"], batch["image_hr"], batch["K"], batch["image_size"]
        )
        with_targets = "dims_lwh" in batch
        tails, middles = sequence.query_tails(
            self, batch, self.readout.offset is None and with_targets
        )
        hidden, start, ends = sequence.run_teacher_forced(self, features.tokens, tails)
        losses: dict[str, torch.Tensor] = {}
        result = ModelOutput(boxes={})
        if self.readout.offset is not None:
            states = sequence.read_states(self, hidden, start, middles, ends)
            if self.pointer is not None:
                result, losses = self._pointer_forward(batch, features, states, with_targets)
            else:
                result, losses = self._mlp_forward(batch, features, states, with_targets)
        if with_targets:
            if features.dense is not None and "heatmap" in batch:
                for name, value in self.detector_losses(batch, features).items():
                    # the MLP read-out's box terms share names with the dense ones: add both
                    losses[name] = losses[name] + value if name in losses else value
            losses["text"] = sequence.tail_loss(self, hidden, start, tails, middles)
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
        only their first target) add nothing (batch_losses.residual_loss).
        """
        return residual_loss(batch, candidates, residual, is_target, self.config)

    def target_slots(self, batch: dict[str, Any], cells: torch.Tensor) -> torch.Tensor:
        """(B, K) bool: candidate cells the dense targets assign to one of the query's targets."""
        return candidate_set.target_slots(batch, cells)

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
        grid = self._grid(features.hr_map, features.image_size)
        injected = candidate_set.inject_missing_targets(
            batch, cands.cells, grid, features.image_size
        )
        if injected is None:
            return cands, is_target
        cells, slots = injected
        # the injected targets take the last slots: only those columns are read anew (a crop of
        # each candidate runs through the backbone, which dominates the pointer stage's caching)
        first = cells.shape[1] - int(slots.sum(dim=1).max())
        fresh = self.candidates(features.hr_map, features.dense, features.K, features.image_size,
                                cells[:, first:], image_hr=features.image_hr)  # fmt: skip
        return cands.leading(first).extended(fresh), self.target_slots(batch, cells) | slots

    def _mlp_forward(
        self, batch: dict[str, Any], features: ImageFeatures, states: QueryStates,
        with_targets: bool,
    ) -> tuple[ModelOutput, dict[str, torch.Tensor]]:  # fmt: skip
        assert self.heads is not None
        outputs = self.heads(states.f3d, self.log_priors[-1])
        outputs = {k: v.float() for k, v in outputs.items()}
        boxes = decode_boxes(outputs, features.K, features.image_size, self.config)
        losses = mlp_readout_losses(batch, outputs, boxes, self.config) if with_targets else {}
        return ModelOutput(boxes=boxes, chosen_box2d=outputs["box2d"]), losses

    def _text3d_ids(self, batch: dict[str, Any], index: int) -> list[int]:
        """Token ids of sample `index`'s Text3D numbers, then EOS (sequence.text3d_ids)."""
        return sequence.text3d_ids(self, batch, index)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def prepare_context(self, features: ImageFeatures, index: int = 0) -> ImageContext:
        """Run the LLM over [prefix, <image>, image tokens] of one image and keep its KV cache."""
        return sequence.prefix_context(self, features, index)

    @torch.no_grad()
    def teacher_forced_states(
        self, context: ImageContext, items: Sequence[dict[str, Any]]
    ) -> list[QueryStates]:
        """The states of dataset queries of one image, training layout (what the pointer caches).

        See sequence.teacher_forced_states.
        """
        return sequence.teacher_forced_states(self, context, items)

    @torch.no_grad()
    def query_states(
        self, context: ImageContext, query: str, policy: str = "auto"
    ) -> tuple[QueryStates | None, torch.Tensor, str, bool]:
        """Run one query on a prepared image: F_3D and the query words' states.

        Returns (the states, None for Text3D; the last hidden states (1, t, H); the answer
        phrase; whether it was generated), see sequence.query_states. The cache is left
        extended by the query: the caller rewinds it to `context.prefix_length`.
        """
        return sequence.query_states(self, context, query, policy)

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
            query: the query text, prompts already formatted in (sequence.format_query).
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
                outputs = sequence.text3d_outputs(self, context, hidden)
                return located.single(
                    outputs, features, self.config, answer=answer, answered=answered
                )
            if self.pointer is None:
                assert self.heads is not None
                outputs = {
                    k: v.float() for k, v in self.heads(states.f3d, self.log_priors[-1]).items()
                }
                return located.single(
                    outputs, features, self.config, answer=answer, answered=answered
                )
            assert features.candidates is not None
            nan4 = torch.full((1, 4), float("nan"), device=self.device)
            nan2 = torch.full((1, 2), float("nan"), device=self.device)
            box = nan4 if box_prompt is None else box_prompt.reshape(1, 4).to(self.device)
            point = nan2 if point_prompt is None else point_prompt.reshape(1, 2).to(self.device)
            candidates = features.candidates
            extra = None if box_prompt is None else self.box_prompt_candidate(features, box_prompt)
            if extra is not None:
                candidates = candidates.extended(extra)
                features = replace(features, candidates=candidates)
            pointed = self.point(states, candidates, box, point)
            logits = pointed.logits[0]
            K = logits.shape[0] - 1
            choice = logits[:K].argmax().reshape(1)
            worded = torch.tensor([box_prompt is None and point_prompt is None])
            return located.ranked(
                features, self.scores(logits), pointed.residual[0], self.config,
                answer=answer, answered=answered, other_probabilities=self.other_scores(logits),
                best_score=float(self.best_scores(pointed, choice, worded)[0]),
            )  # fmt: skip
        finally:
            sequence.rewind_cache(context.cache, context.prefix_length)
