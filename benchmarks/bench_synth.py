"""Throughput of the IG3D-Synth generator (llmi3d_core.data.synth.generator) on one core.

    python benchmarks/bench_synth.py                    # 60 images per camera group
    python benchmarks/bench_synth.py --num-images 200 --groups vga_normal vga_wide

Prints a markdown table per camera group: images per second in wall-clock time and per CPU
second of this process (on a busy shared machine the CPU figure is the per-core throughput; wall
time also counts waiting for the core), and the split of a frame's time between making it
(scene sampling, rendering, ground truth, queries), PNG encoding, and writing the files. The
last row runs the real `generate_dataset` end to end on the 640x480 groups.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# one core: set before numpy/torch/OpenCV create their thread pools
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import cv2  # noqa: E402
import torch  # noqa: E402

from llmi3d_core.data.synth.generator import (  # noqa: E402
    SynthConfig,
    dataset_info,
    generate_dataset,
    generate_image,
    novel_categories,
)
from llmi3d_core.data.synth.scene import CAMERA_GROUPS  # noqa: E402
from llmi3d_core.data.synth.shapes import CATEGORIES, build_mesh  # noqa: E402
from llmi3d_core.data.writer import DatasetWriter, encode_image  # noqa: E402


class Clock:
    """Accumulates wall and process-CPU seconds of a code section."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def bench_group(group: str, num_images: int, seed: int, out: Path) -> dict[str, float]:
    """Time the stages for `num_images` images of one camera group."""
    config = SynthConfig(num_images=num_images, seed=seed, camera_groups=(group,))
    novel = frozenset(novel_categories(seed, config.novel_fraction))
    make, encode, write, total = Clock(), Clock(), Clock(), Clock()
    objects = queries = png_bytes = 0
    info = dataset_info(config, sorted(novel))
    with DatasetWriter(out, info, overwrite=True) as writer, total:
        for index in range(num_images):
            with make:
                record, image, made = generate_image(config, index, novel)
            with encode:
                encoded = encode_image(image, config.image_suffix)
            with write:
                writer.add_image(record, encoded=encoded)
                for query in made:
                    writer.add_query(query)
            objects += len(record.objects)
            queries += len(made)
            png_bytes += len(encoded)
    return {
        "wall_ips": num_images / total.wall,
        "cpu_ips": num_images / total.cpu,
        "make_ms": 1000 * make.cpu / num_images,
        "encode_ms": 1000 * encode.cpu / num_images,
        "write_ms": 1000 * write.cpu / num_images,
        "objects": objects / num_images,
        "queries": queries / num_images,
        "png_kb": png_bytes / num_images / 1024,
    }


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--groups", nargs="+", default=list(CAMERA_GROUPS))
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    for category in CATEGORIES:  # one-off mesh building is not per-image cost
        build_mesh(category.name)
    generate_image(SynthConfig(num_images=1), 0, frozenset())  # warm up imports and caches

    print(f"IG3D-Synth, one process, {args.num_images} images per row, seed {args.seed}\n")
    header = (
        "| camera group | size | img/s wall | img/s per CPU s | make ms | PNG ms | write ms "
        "| objects/img | queries/img | PNG KiB |"
    )
    print(header)
    print("|---" * 10 + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for group in args.groups:
            g = CAMERA_GROUPS[group]
            r = bench_group(group, args.num_images, args.seed, Path(tmp) / group)
            print(
                f"| {group} | {g.width}x{g.height} | {r['wall_ips']:.1f} | {r['cpu_ips']:.1f} "
                f"| {r['make_ms']:.1f} | {r['encode_ms']:.1f} | {r['write_ms']:.1f} "
                f"| {r['objects']:.1f} | {r['queries']:.1f} | {r['png_kb']:.0f} |"
            )
        vga = tuple(n for n, g in CAMERA_GROUPS.items() if (g.width, g.height) == (640, 480))
        config = SynthConfig(num_images=args.num_images, seed=args.seed, camera_groups=vga)
        clock = Clock()
        with clock:
            generate_dataset(config, Path(tmp) / "e2e", progress=False, overwrite=True)
        print(
            f"| generate_dataset ({', '.join(vga)}) | 640x480 | {args.num_images / clock.wall:.1f} "
            f"| {args.num_images / clock.cpu:.1f} | | | | | | |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
