"""Text3D baseline (heads.readout = "text"): the 3D box is printed as numbers after <pos>.

The LLM is trained (teacher forcing, cross-entropy) to write, after the answer and <pos>,

    "0.512 0.433 12.31 1.20 0.45 0.80 0.998 0.001 ... 0.210 0.300 0.650 0.720" + EOS

i.e. the same quantities the MLP heads predict, in the order of `head_widths` (without the
score), each with a fixed number of decimals. At inference the numbers are generated greedily and
parsed back; a count mismatch raises ModelOutputError.
"""

from __future__ import annotations

import re

import torch

from llmi3d_core.errors import ModelOutputError
from llmi3d_core.model.config import HeadConfig
from llmi3d_core.model.heads import head_widths

DECIMALS: dict[str, int] = {
    "center_uv": 3,
    "depth": 2,
    "xyz": 2,
    "rot6d": 3,
    "euler": 3,
    "dims": 2,
    "box2d": 3,
    "keypoints": 3,
}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def text_fields(config: HeadConfig) -> dict[str, int]:
    """The printed quantities and their widths, in printing order."""
    return {k: w for k, w in head_widths(config).items() if k in DECIMALS}


def format_numbers(values: dict[str, torch.Tensor], config: HeadConfig) -> str:
    """One sample's targets {name: (k,)} -> the text the LLM learns to write."""
    parts: list[str] = []
    for name in text_fields(config):
        parts.extend(f"{float(x):.{DECIMALS[name]}f}" for x in values[name].reshape(-1))
    return " ".join(parts)


def parse_numbers(text: str, config: HeadConfig) -> dict[str, torch.Tensor]:
    """Generated text -> {name: (1, k)} float32 tensors, the inverse of `format_numbers`.

    Raises:
        ModelOutputError: when the text does not hold exactly the expected count of numbers.
    """
    fields = text_fields(config)
    expected = sum(fields.values())
    numbers = [float(x) for x in _NUMBER.findall(text)]
    if len(numbers) != expected:
        raise ModelOutputError(
            f"Text3D output holds {len(numbers)} numbers, expected {expected} "
            f"({', '.join(fields)}): {text[:200]!r}"
        )
    out, start = {}, 0
    for name, width in fields.items():
        out[name] = torch.tensor([numbers[start : start + width]], dtype=torch.float32)
        start += width
    return out
