"""Latency on one backbone, interleaved: 3D Query vs Text3D decoding, first vs repeated query,
llmi3d_node end to end vs the bare Predictor.

    python benchmarks/bench_latency.py                     # smol, 5 runs, 1 thread, domain 57
    python benchmarks/bench_latency.py --preset tiny --runs 3 --skip-node

Used by run_benchmarks.py (section "Latency"). All timings are wall-clock seconds around the
public call (`Predictor.predict`, or the service round trip), medians over runs; each run
draws a fresh random 640 x 480 frame, and the order of the compared variants alternates between
runs (ABBA) so that a slow spell of the shared machine hits both.

Decoding. Both models are the same preset built from the same seed; only the read-out differs
("query": the preset as the default recipe serves it (its model.llm settings: for smol, the
first 15 LM layers without LoRA), one LLM pass after <pos>, the pointer chooses among the
detector's candidates and their dense heads give the box; "text": `heads.readout=text` and
`heads.pointer=false` as in config/train/baseline_text3d.yaml, with the preset's whole LM, the
box is generated as text numbers after <pos>, Text3D). An untrained Text3D model writes arbitrary
tokens, so its generation limit (`llm.max_text_tokens`) is set to the token count of a formatted box
(the length a trained model writes before EOS); its parse error is expected and ignored. Queries use
answer_policy="ground" (no answer phrase), as a trained model does for grounding queries.

Node. The query-readout model is saved as a checkpoint; llmi3d_node loads it in its own process
and the bare Predictor in this process holds the same weights, both with the default
answer_policy and the node's default answer rule (config/params.yaml), so they do the same work
(the table says whether their answers matched: the service's answer text, which the bare
Predictor's predictions give the node's way).
The node round trip covers the service call from a real rclpy client, Image decoding, the
Predictor, and publishing detections, markers and the debug image before the response returns.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
for _path in (HERE.parent, HERE):  # run from a checkout, uninstalled; bench_node next to us
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# Text3D as config/train/baseline_text3d.yaml builds it: the box as text, so no pointer (the
# pointer chooses among the detector's objects and needs the 3D Query's read-out)
TEXT3D_HEADS = {"heads": {"readout": "text", "pointer": False}}
K_VGA = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
FIRST_QUERY = "find the lamp on the desk"
REPEATED_QUERY = "find the red chair"
# a typical box in the Text3D print format (centre uv, virtual depth, dims, 6D, 2D box)
TYPICAL_BOX = {
    "center_uv": [0.512, 0.433],
    "depth": [12.31],
    "xyz": [0.35, -0.21, 4.82],
    "rot6d": [0.998, 0.001, -0.05, 0.001, 1.0, 0.0],
    "euler": [0.01, 1.2, 0.0],
    "dims": [1.2, 0.45, 0.8],
    "box2d": [0.21, 0.3, 0.65, 0.72],
    "keypoints": [0.351, 0.684],
}
TYPICAL_VALUE = 0.512  # a field TYPICAL_BOX does not know: this value, of the field's width


def served_overrides(preset: str) -> dict[str, Any]:
    """The default recipe's model.llm settings when it builds on `preset`: what the node serves."""
    from llmi3d_core.default_model import default_recipe
    from llmi3d_core.train_config import load_train_config

    model = load_train_config(default_recipe()).model
    return {"llm": dict(model.get("llm", {}))} if model.get("preset") == preset else {}


def build_model(preset: str, seed: int, overrides: dict[str, Any] | None = None) -> Any:
    """An LLMI3D of `preset` with nested config overrides, e.g. {"heads": {"readout": "text"}}."""
    import torch

    from llmi3d_core.model.config import config_from_dict
    from llmi3d_core.model.llmi3d import LLMI3D
    from llmi3d_core.model.presets import get_preset

    data = get_preset(preset).to_dict()
    for section, values in (overrides or {}).items():
        data[section] = {**data[section], **values}
    torch.manual_seed(seed)
    return LLMI3D(config_from_dict(data))


def text3d_token_count(model: Any) -> int:
    """Tokens of TYPICAL_BOX printed the Text3D way, plus the EOS a trained model writes."""
    import torch

    from llmi3d_core.model import text3d

    fields = text3d.text_fields(model.config.heads)
    values = {
        name: torch.tensor(TYPICAL_BOX.get(name, [TYPICAL_VALUE] * width))
        for name, width in fields.items()
    }
    return len(model.llm.tokenize(text3d.format_numbers(values, model.config.heads))) + 1


def timed(call: Callable[[], Any], expected: tuple[type[BaseException], ...] = ()) -> float:
    """Wall seconds of `call()`; exceptions of the `expected` types are swallowed."""
    start = time.perf_counter()
    with contextlib.suppress(*expected):
        call()
    return time.perf_counter() - start


def median_ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values)


def measure_decoding(preset: str, runs: int, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """3D Query vs Text3D decoding and first vs repeated query on one `preset` backbone.

    Returns:
        {"times": {"query": {"first": [s...], "repeated": [s...]}, "text": {...},
         "query_bf16": {...} (the query model in bfloat16)}, "cpu_bf16": str, "text_tokens": int,
         "load_s": {...}, "stages_first"/"stages_repeated": median ms per Predictor stage
         of the 3D Query model}
    """
    from llmi3d_core.errors import ModelOutputError
    from llmi3d_core.inference import Predictor
    from llmi3d_core.precision import cpu_bfloat16_units

    start = time.perf_counter()
    query_model = build_model(preset, seed, served_overrides(preset))
    load_query = time.perf_counter() - start
    start = time.perf_counter()
    text_model = build_model(preset, seed, TEXT3D_HEADS)
    load_text = time.perf_counter() - start
    probe_tokens = text3d_token_count(text_model)
    text_model.config.llm.max_text_tokens = probe_tokens  # read at each generation
    low_model = build_model(preset, seed, served_overrides(preset))  # the same weights
    predictors = {
        "query": Predictor(query_model, device=device, answer_policy="ground"),
        "text": Predictor(text_model, device=device, answer_policy="ground"),
        # the node's dtype=bfloat16: on a CPU with bfloat16 units (AVX512-BF16, AMX) its matrix
        # products run there; elsewhere they are emulated and slower
        "query_bf16": Predictor(low_model, device=device, dtype="bfloat16", answer_policy="ground"),
    }
    times: dict[str, dict[str, list[float]]] = {
        name: {"first": [], "repeated": []} for name in predictors
    }
    stages: dict[str, list[dict[str, float]]] = {"first": [], "repeated": []}
    rng = np.random.default_rng(seed)
    for run in range(runs + 1):  # run 0 warms up (first-call allocations) and is not counted
        image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        order = list(predictors) if run % 2 else list(reversed(predictors))
        for name in order:
            predictor = predictors[name]
            first = timed(
                partial(predictor.predict, image, K_VGA, FIRST_QUERY), (ModelOutputError,)
            )
            first_stages = dict(predictor.last_timings)
            repeated = timed(
                partial(predictor.predict, image, K_VGA, REPEATED_QUERY), (ModelOutputError,)
            )
            if run:
                times[name]["first"].append(first)
                times[name]["repeated"].append(repeated)
                if name == "query":
                    stages["first"].append(first_stages)
                    stages["repeated"].append(dict(predictor.last_timings))
    stage_names = [k for k in stages["first"][0] if k != "total"] if stages["first"] else []
    return {
        "preset": preset,
        "cpu_bf16": ", ".join(cpu_bfloat16_units()) or "none",
        "runs": runs,
        "load_s": {"query": load_query, "text": load_text},
        "text_tokens": probe_tokens,
        "times": times,
        "stages": {
            kind: {s: median_ms([t.get(s, 0.0) for t in rows]) for s in stage_names}
            for kind, rows in stages.items()
        },
    }


def node_answer_text(predictions: list[Any], query: str) -> str:
    """The service's `answer` for these predictions (llmi3d_node: label, or its "not here")."""
    from llmi3d_core.inference import not_found_answer

    if predictions:
        return str(predictions[0].answer or predictions[0].label)
    return not_found_answer(query)


def measure_node_overhead(  # noqa: PLR0917 (the measurement's knobs)
    preset: str, runs: int, workdir: Path, threads: int = 0, seed: int = 0, device: str = "cpu"
) -> dict[str, Any]:
    """llmi3d_node round trip vs the bare Predictor on the same weights and frames.

    Call bench_node.ros_environment first (DDS on loopback).

    Returns:
        {"node": {"first": [s...], "repeated": [...]}, "bare": {...}, "answers_match": bool,
         "node_ready_s": float}
    """
    from dataclasses import asdict

    from bench_node import RELIABLE_INPUT, NodeClient, running_node

    from llmi3d_core.inference import Predictor
    from llmi3d_core.model.checkpoint import save_checkpoint

    model = build_model(preset, seed, served_overrides(preset))
    checkpoint = save_checkpoint(model, workdir / f"checkpoint_{preset}", {"seed": seed})
    bare = Predictor(model, device=device)  # default answer_policy, as in the node
    params = {"checkpoint": str(checkpoint), "device": device, **RELIABLE_INPUT}
    times: dict[str, dict[str, list[float]]] = {
        "node": {"first": [], "repeated": []},
        "bare": {"first": [], "repeated": []},
    }
    mismatches: list[str] = []
    sample_answers: list[str] = []
    rng = np.random.default_rng(seed + 1)
    with running_node(params, workdir / f"node_latency_{preset}.log", threads) as node:
        client = NodeClient()
        try:
            ready_s = client.wait_ready(node)
            for run in range(runs + 1):
                image = rng.integers(0, 255, (client.height, client.width, 3), dtype=np.uint8)
                stamp = client.publish_frame(image)
                client.spin_until(lambda: False, 0.3)  # let the node receive the frame
                row: dict[str, dict[str, float]] = {"node": {}, "bare": {}}
                answers: dict[str, list[str]] = {"node": [], "bare": []}
                order = ["node", "bare"] if run % 2 else ["bare", "node"]
                for kind, text in (("first", FIRST_QUERY), ("repeated", REPEATED_QUERY)):
                    for name in order:
                        if name == "node":
                            response, seconds = client.query_on_frame(text, stamp)
                            answers[name].append(response.answer)
                        else:
                            start = time.perf_counter()
                            found = bare.predict(image, client.K, text, **asdict(bare.served_rule))
                            seconds = time.perf_counter() - start
                            answers[name].append(node_answer_text(found, text))
                        row[name][kind] = seconds
                    order.reverse()
                sample_answers = sample_answers or answers["node"]
                if answers["node"] != answers["bare"]:
                    mismatches.append(f"{answers['node']} != {answers['bare']}")
                if run:  # run 0 warms up
                    for name, seconds_of in row.items():
                        for kind, seconds in seconds_of.items():
                            times[name][kind].append(seconds)
        finally:
            client.close()
    return {
        "preset": preset,
        "runs": runs,
        "node_ready_s": ready_s,
        "times": times,
        "answers_match": not mismatches,
        "sample_answers": sample_answers,
        "mismatches": mismatches[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smol")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--ros-domain-id", type=int, default=57)
    parser.add_argument("--skip-node", action="store_true")
    args = parser.parse_args()
    from bench_node import ros_environment

    ros_environment(args.ros_domain_id)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    decoding = measure_decoding(args.preset, args.runs)
    for name, kinds in decoding["times"].items():
        for kind, values in kinds.items():
            print(f"{name:6s} {kind:9s} {median_ms(values):8.1f} ms")
    print(f"Text3D tokens: {decoding['text_tokens']}")
    if not args.skip_node:
        with tempfile.TemporaryDirectory(prefix="bench_latency_") as tmp:
            node = measure_node_overhead(args.preset, args.runs, Path(tmp), args.threads)
        for name, kinds in node["times"].items():
            for kind, values in kinds.items():
                print(f"{name:6s} {kind:9s} {median_ms(values):8.1f} ms")
        print(f"answers match: {node['answers_match']} {node['mismatches']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
