"""Which precision training computes in, and where a CPU computes bfloat16 natively.

`TrainConfig.mixed_precision` names it. On a GPU, accelerate's autocast carries it out (the joint
stage's forward). On a CPU, bfloat16 pays only where the CPU has bfloat16 matrix units (Intel
AMX or AVX512-BF16; elsewhere oneDNN emulates it, slower than float32), so "auto" turns it on
there and nowhere else, and only for the frozen passes whose results feed the crop heads and the
pointer (train_stages):

- the crop descriptors (autocast);
- the LLM states and candidates the pointer stage caches (a bfloat16 copy of the model: autocast
  alone gained 10 % there, as it re-casts the weights at every call, the copy 45 %).

Trained weights and losses stay float32. The detector stage stays float32 too: it would gain
most (its cached backbone maps 2x faster, its steps 1.7x) but its 3D boxes lost accuracy.
Measured on the default recipe's detector stage (2-core AMX CPU; Acc@0.25 of the dense heads
read at each test target's own cell, 1,142 queries): float32 31.6 and 31.5 %, 30.6 % with
another seed; bfloat16 maps 30.6 %, bfloat16 steps 30.2 %, both 29.2 % (29.9 % with 900 steps
instead of 600).
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmi3d_core.errors import ConfigError

# /proc/cpuinfo flag -> the name of the unit
BFLOAT16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty off Linux)."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text(encoding="utf-8").split())
    except OSError:
        return frozenset()


def cpu_bfloat16_units(flags: frozenset[str] | None = None) -> tuple[str, ...]:
    """The bfloat16 matrix units among `flags` (default: this CPU's), e.g. ("AMX-BF16",)."""
    present = cpu_flags() if flags is None else flags
    return tuple(name for flag, name in BFLOAT16_FLAGS.items() if flag in present)


def resolve_mixed_precision(requested: str, cuda: bool, flags: frozenset[str] | None = None) -> str:
    """What `requested` means on this device: "no", "bf16" or "fp16" (module docstring).

    "auto" is bf16 on a GPU that has it, else fp16 on a GPU; on a CPU, bf16 where it has
    bfloat16 units (`flags`, default this CPU's), else "no".

    Raises:
        ConfigError: fp16 without a GPU.
    """
    if requested == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_bfloat16_units(flags) else "no"
    if requested == "fp16" and not cuda:
        raise ConfigError("mixed_precision 'fp16' needs a GPU; use 'no', 'bf16' or 'auto' on CPU")
    return requested


def cpu_bfloat16(mixed_precision: str, device: str) -> bool:
    """True when a run of these settings computes its CPU passes in bfloat16 (module docstring)."""
    cuda = torch.cuda.is_available() and device != "cpu"
    return not cuda and resolve_mixed_precision(mixed_precision, cuda) == "bf16"


__all__ = [
    "cpu_bfloat16",
    "cpu_bfloat16_units",
    "cpu_flags",
    "resolve_mixed_precision",
]
