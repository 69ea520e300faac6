"""One formula for numpy and torch: the array plumbing and input checks of the geometry code.

`geometry`, `rotation` and `iou` write each formula once against `Ops`; `ops_for` picks numpy or
torch from the arguments, and the ``check_*`` functions validate inputs the same way everywhere.

Numeric functions accept numpy arrays (computed in float64) and torch tensors (computed in the
tensor's dtype and device, differentiable), with any leading batch shape; Python floats are
accepted where a scalar makes sense and give a Python float back. The box IoU functions are
evaluation code: they run in float64 numpy and are not differentiable.

Validation: every function checks its input by default and raises `InvalidInputError` (a
ValueError) naming the argument, the offending value and what is allowed, instead of returning NaN.
On torch tensors a check is one reduction and one host sync per argument; it never touches the
autograd graph. Training loops that have already guaranteed their inputs (for example a depth made
positive by softplus) may pass ``validate=False`` to skip the checks; the functions then still avoid
NaN where a clamp is cheap (6D normalisation) but otherwise compute the formula as is.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from llmi3d_core.errors import InvalidInputError

__all__ = [
    "ArrayLike",
    "ArrayT",
    "FloatArray",
    "Ops",
    "any_true",
    "check_finite",
    "check_last_dims",
    "check_positive",
    "describe_bad",
    "finish_like",
    "ops_for",
]

FloatArray = npt.NDArray[np.float64]
# Value of the same kind as the input: numpy array, torch tensor or Python float.
ArrayT = TypeVar("ArrayT", npt.NDArray[Any], torch.Tensor, float)
# Secondary arguments (focal lengths, widths): scalars or arrays that broadcast with the first one.
ArrayLike = float | npt.NDArray[Any] | torch.Tensor


class _NumpyOps:
    """The few array operations the formulas need, numpy flavour (float64)."""

    is_torch = False

    @staticmethod
    def asarray(x: Any) -> Any:
        return np.asarray(x, dtype=np.float64)

    @staticmethod
    def stack(xs: list[Any], axis: int) -> Any:
        return np.stack(np.broadcast_arrays(*xs), axis=axis)

    @staticmethod
    def transpose(m: Any) -> Any:
        return np.swapaxes(m, -1, -2)

    @staticmethod
    def cross(a: Any, b: Any) -> Any:
        return np.cross(a, b)

    @staticmethod
    def norm(x: Any, keepdims: bool = True) -> Any:
        return np.linalg.norm(x, axis=-1, keepdims=keepdims)

    @staticmethod
    def dot(a: Any, b: Any) -> Any:
        return (a * b).sum(axis=-1, keepdims=True)

    @staticmethod
    def clamp_min(x: Any, lo: float) -> Any:
        return np.maximum(x, lo)

    @staticmethod
    def clip(x: Any, lo: float, hi: float) -> Any:
        return np.clip(x, lo, hi)

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> Any:
        return np.where(cond, a, b)

    @staticmethod
    def sqrt(x0: Any) -> Any:
        return np.sqrt(x0)

    @staticmethod
    def sin(x0: Any) -> Any:
        return np.sin(x0)

    @staticmethod
    def cos(x0: Any) -> Any:
        return np.cos(x0)

    @staticmethod
    def asin(x0: Any) -> Any:
        return np.arcsin(x0)

    @staticmethod
    def atan2(x0: Any, x1: Any) -> Any:
        return np.arctan2(x0, x1)

    @staticmethod
    def abs(x0: Any) -> Any:
        return np.abs(x0)

    @staticmethod
    def ones_like(x0: Any) -> Any:
        return np.ones_like(x0)

    @staticmethod
    def zeros_like(x0: Any) -> Any:
        return np.zeros_like(x0)


class _TorchOps:
    """Same operations in torch, in the dtype/device of a reference tensor (differentiable)."""

    is_torch = True

    def __init__(self, ref: torch.Tensor) -> None:
        self.dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        self.device = ref.device

    def asarray(self, x: Any) -> Any:
        return torch.as_tensor(x, dtype=self.dtype, device=self.device)

    @staticmethod
    def stack(xs: list[Any], axis: int) -> Any:
        tensors = torch.broadcast_tensors(*xs)  # type: ignore[no-untyped-call]
        return torch.stack(tensors, dim=axis)

    @staticmethod
    def transpose(m: Any) -> Any:
        return m.transpose(-1, -2)

    @staticmethod
    def cross(a: Any, b: Any) -> Any:
        a, b = torch.broadcast_tensors(a, b)  # type: ignore[no-untyped-call]
        return torch.linalg.cross(a, b, dim=-1)

    @staticmethod
    def norm(x: Any, keepdims: bool = True) -> Any:
        return torch.linalg.vector_norm(x, dim=-1, keepdim=keepdims)

    @staticmethod
    def dot(a: Any, b: Any) -> Any:
        return (a * b).sum(dim=-1, keepdim=True)

    @staticmethod
    def clamp_min(x: Any, lo: float) -> Any:
        return torch.clamp(x, min=lo)

    @staticmethod
    def clip(x: Any, lo: float, hi: float) -> Any:
        return torch.clamp(x, lo, hi)

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> Any:
        return torch.where(cond, a, b)

    @staticmethod
    def sqrt(x0: Any) -> Any:
        return torch.sqrt(x0)

    @staticmethod
    def sin(x0: Any) -> Any:
        return torch.sin(x0)

    @staticmethod
    def cos(x0: Any) -> Any:
        return torch.cos(x0)

    @staticmethod
    def asin(x0: Any) -> Any:
        return torch.asin(x0)

    @staticmethod
    def atan2(x0: Any, x1: Any) -> Any:
        return torch.atan2(x0, x1)

    @staticmethod
    def abs(x0: Any) -> Any:
        return torch.abs(x0)

    @staticmethod
    def ones_like(x0: Any) -> Any:
        return torch.ones_like(x0)

    @staticmethod
    def zeros_like(x0: Any) -> Any:
        return torch.zeros_like(x0)


Ops = _NumpyOps | _TorchOps


def ops_for(*values: Any) -> Ops:
    """Torch operations if any argument is a tensor (in the first tensor's dtype), else numpy."""
    for value in values:
        if isinstance(value, torch.Tensor):
            return _TorchOps(value)
    return _NumpyOps()


def _is_python_scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finish_like(result: Any, primary: Any) -> Any:
    """Return a Python float when the primary input was one, else the array/tensor as is."""
    if _is_python_scalar(primary):
        return float(result)
    return result


def describe_bad(value: Any, mask: Any) -> str:
    """Short text naming the first offending element of `value` where `mask` is True."""
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    bad = np.asarray(mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask)
    if arr.ndim == 0:
        return f"{arr.item()!r}"
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return (
        f"{arr[index].item()!r} at index {index} (shape {tuple(arr.shape)}, {int(bad.sum())} bad)"
    )


def any_true(mask: Any) -> bool:
    """Whether any entry of a numpy or torch boolean mask is True (one host sync on torch)."""
    if isinstance(mask, torch.Tensor):
        return bool(mask.any().item())
    return bool(np.any(mask))


def check_finite(name: str, value: Any) -> None:
    """Raise InvalidInputError if `value` has NaN or infinite entries (not part of autograd)."""
    if isinstance(value, torch.Tensor):
        bad = ~torch.isfinite(value.detach())
    else:
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise InvalidInputError(f"{name} must be real numbers, got dtype {arr.dtype}")
        bad = ~np.isfinite(arr)
    if any_true(bad):
        raise InvalidInputError(f"{name} must be finite, got {describe_bad(value, bad)}")


def check_positive(name: str, value: Any, what: str = "") -> None:
    """Raise InvalidInputError unless every entry of `value` is finite and > 0."""
    check_finite(name, value)
    bad = (value.detach() if isinstance(value, torch.Tensor) else np.asarray(value)) <= 0
    if any_true(bad):
        extra = f" ({what})" if what else ""
        raise InvalidInputError(f"{name} must be > 0{extra}, got {describe_bad(value, bad)}")


def check_last_dims(name: str, value: Any, dims: tuple[int, ...]) -> None:
    """Raise InvalidInputError unless `value` has shape (..., *dims)."""
    shape = tuple(value.shape) if hasattr(value, "shape") else ()
    if len(shape) < len(dims) or shape[len(shape) - len(dims) :] != dims:
        wanted = ", ".join(str(d) for d in dims)
        raise InvalidInputError(f"{name} must have shape (..., {wanted}), got {shape}")
