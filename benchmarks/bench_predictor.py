"""CPU latency of the Predictor: first query on an image vs a repeated query on the same image.

    python benchmarks/bench_predictor.py                        # tiny and smol, 5 runs each
    python benchmarks/bench_predictor.py --presets smol --runs 9 --threads 2

For each preset: the model load time, then per run a fresh random 640 x 480 image and
  first     predict() on the new image: resize, image encoders, LLM prefill of the image prefix,
            the query pass and decoding
  repeated  another query on the same image: only the query pass and decoding (features and the
            LLM's KV cache of the image prefix come from the cache)
  question  a repeated query with answer_policy="answer": the answer phrase is generated token by
            token (an untrained model writes `llm.max_answer_tokens` tokens) before the box
Medians over the runs, in milliseconds, with the stage split of `Predictor.last_timings`. The
plain queries use answer_policy="ground" (one LLM pass), which is what a trained model does for
grounding queries under the default "auto" policy.

Timings are only comparable on an idle machine: on a 2-core CPU shared with other processes,
torch's threads wait on each other (use --threads 1 there).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import numpy as np
import torch

from llmi3d_core.inference import Predictor

K_VGA = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
STAGES = ("preprocess", "encode_image", "prefill", "llm", "decode")


def measure(preset: str, runs: int) -> dict[str, object]:
    """Load `preset` and time `runs` first / repeated / question queries (seconds)."""
    torch.manual_seed(0)
    start = time.perf_counter()
    predictor = Predictor.from_preset(preset, answer_policy="ground")
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    rows: dict[str, list[dict[str, float]]] = {"first": [], "repeated": [], "question": []}
    for run in range(runs + 1):  # run 0 warms up (first-call allocations) and is not counted
        image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        predictor.answer_policy = "ground"
        predictor.predict(image, K_VGA, "find the lamp on the desk")
        first = dict(predictor.last_timings)
        predictor.predict(image, K_VGA, "find the red chair")
        repeated = dict(predictor.last_timings)
        predictor.answer_policy = "answer"
        predictor.predict(image, K_VGA, "what should I use to read?")
        question = dict(predictor.last_timings)
        if run:
            rows["first"].append(first)
            rows["repeated"].append(repeated)
            rows["question"].append(question)
    return {
        "load_s": load_s,
        "answer_tokens": predictor.config.llm.max_answer_tokens,
        "rows": rows,
    }


def median_ms(samples: list[dict[str, float]], key: str) -> float:
    return 1000.0 * statistics.median(s[key] for s in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "smol"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.runs}")
    print()
    header = "| preset | load s | query | total ms | " + " | ".join(STAGES) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for preset in args.presets:
        result = measure(preset, args.runs)
        for name, samples in result["rows"].items():  # type: ignore[union-attr]
            label = name
            if name == "question":
                label = f"question ({result['answer_tokens']} answer tokens)"
            stages = " | ".join(f"{median_ms(samples, s):.1f}" for s in STAGES)
            load = f"{result['load_s']:.1f}" if name == "first" else ""
            print(f"| {preset} | {load} | {label} | {median_ms(samples, 'total'):.1f} | {stages} |")


if __name__ == "__main__":
    main()
