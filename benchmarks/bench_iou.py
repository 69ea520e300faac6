"""Throughput of the exact oriented 3D IoU (llmi3d_core.iou.box3d_iou_batch) on one core.

    python benchmarks/bench_iou.py                # default batch sizes
    python benchmarks/bench_iou.py --batch 1 4096 --repeats 5

Prints a markdown table: pairs per second for random pairs of rotated boxes that overlap
(about 2/3 of the pairs intersect), for several batch sizes, plus the single-pair latency of
`box3d_iou` and, for reference, the axis-aligned Mono3DVG variant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# one core: set before numpy/torch create their thread pools
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402
import torch  # noqa: E402

from llmi3d_core.geometry import box3d_corners  # noqa: E402
from llmi3d_core.iou import box3d_iou, box3d_iou_batch, box3d_iou_mono3dvg  # noqa: E402
from llmi3d_core.rotation import rotation_6d_to_matrix  # noqa: E402


def random_pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Corners of n random box pairs (N, 8, 3) x 2, and their centres/dims for the AA variant."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(2, n, 3)) * 0.5 + np.array([0.0, 0.0, 10.0])
    dims = rng.uniform(0.5, 3.0, (2, n, 3))
    rot = rotation_6d_to_matrix(rng.normal(size=(2, n, 6)))
    corners = box3d_corners(centers, dims, rot)
    return corners[0], corners[1], centers, dims


def pairs_per_second(fn, n: int, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 256, 4096, 32768])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    print("| method | batch (pairs) | pairs/s | us/pair |")
    print("|---|---:|---:|---:|")
    for n in args.batch:
        a, b, centers, dims = random_pairs(n)
        rate = pairs_per_second(lambda a=a, b=b: box3d_iou_batch(a, b), n, args.repeats)
        print(f"| box3d_iou_batch (exact) | {n} | {rate:,.0f} | {1e6 / rate:.1f} |")
    a, b, centers, dims = random_pairs(1)
    rate = pairs_per_second(lambda: box3d_iou(a[0], b[0]), 1, max(args.repeats, 20))
    print(f"| box3d_iou (one pair) | 1 | {rate:,.0f} | {1e6 / rate:.1f} |")
    n = max(args.batch)
    a, b, centers, dims = random_pairs(n)
    rate = pairs_per_second(
        lambda: box3d_iou_mono3dvg(centers[0], dims[0], centers[1], dims[1]), n, args.repeats
    )
    print(f"| box3d_iou_mono3dvg (axis-aligned) | {n} | {rate:,.0f} | {1e6 / rate:.2f} |")
    overlap = float((box3d_iou_batch(a, b) > 0).mean())
    print(f"\n{overlap:.0%} of the benchmark pairs intersect; numpy {np.__version__}, 1 thread.")


if __name__ == "__main__":
    main()
