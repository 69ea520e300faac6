"""`QueryConfig`: how many queries of each kind an image gets, and the margins that verify them."""

from __future__ import annotations

from dataclasses import dataclass

from llmi3d_core.errors import ConfigError


@dataclass(frozen=True)
class QueryConfig:
    """How many queries of each kind an image gets, and the safety margins of captions.

    Attributes:
        captions_per_image: referring expressions per image (fewer when none can be verified).
        questions_per_image: common-sense questions per image.
        box_prompts_per_image: 2D-box prompts per image.
        point_prompts_per_image: 2D-point prompts per image.
        min_target_visibility: targets must be at least this visible.
        max_target_truncation: and at most this truncated.
        min_target_height_px: and at least this tall in the image (tight box).
        min_anchor_visibility: anchors of relations must be at least this visible.
        lateral_margin: left/right/between margin, a fraction of the image width.
        depth_margin_m: nearest/farthest/behind margin in metres ...
        depth_margin_rel: ... or this fraction of the distance, whichever is larger.
        volume_ratio: "largest" needs this volume ratio to the runner-up.
        box_jitter: relative jitter of box prompts (of the box size).
        negatives_per_image: negative queries per image (no target; captions and questions).
        multi_target_per_image: multi-target captions per image (fewer when none is verified).

    Raises:
        ConfigError: a negative count.
    """

    captions_per_image: int = 3
    questions_per_image: int = 1
    box_prompts_per_image: int = 1
    point_prompts_per_image: int = 1
    min_target_visibility: float = 0.3
    max_target_truncation: float = 0.5
    min_target_height_px: float = 14.0
    min_anchor_visibility: float = 0.2
    lateral_margin: float = 0.03
    depth_margin_m: float = 0.5
    depth_margin_rel: float = 0.1
    volume_ratio: float = 1.3
    box_jitter: float = 0.04
    negatives_per_image: int = 0
    multi_target_per_image: int = 0

    def __post_init__(self) -> None:
        for name in (
            "captions_per_image",
            "questions_per_image",
            "box_prompts_per_image",
            "point_prompts_per_image",
            "negatives_per_image",
            "multi_target_per_image",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"QueryConfig.{name} must be an integer >= 0, got {value!r}")
