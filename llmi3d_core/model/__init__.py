"""The LLMI3D model: configuration, presets, network, decoding and checkpoints.

from llmi3d_core.model import LLMI3D, get_preset, save_checkpoint, load_checkpoint
model = LLMI3D(get_preset("tiny"))
out = model(batch)            # batch from llmi3d_core.data.dataset.collate_grounding
out.losses["total"].backward()
"""

from llmi3d_core.model.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from llmi3d_core.model.config import ModelConfig, config_from_dict
from llmi3d_core.model.llmi3d import LLMI3D
from llmi3d_core.model.outputs import ImageContext, ImageFeatures, ModelOutput
from llmi3d_core.model.presets import PRESETS, get_preset, load_config_file, resolve_config
from llmi3d_core.model.sequence import format_query

__all__ = [
    "LLMI3D",
    "PRESETS",
    "ImageContext",
    "ImageFeatures",
    "ModelConfig",
    "ModelOutput",
    "config_from_dict",
    "format_query",
    "get_preset",
    "load_checkpoint",
    "load_config_file",
    "read_checkpoint_meta",
    "resolve_config",
    "save_checkpoint",
]
