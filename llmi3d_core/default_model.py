"""The embedded default model and its held-out test set, both made on first use and cached.

    checkpoint = ensure_default_model()      # trains config/train/smol_synth.yaml once
    test_root = default_test_data()          # synthetic scenes from a seed the recipe never used

The demo, `llmi3d eval --checkpoint default` and the benchmarks share these, so that they serve
and measure the same model. Everything lives under the user cache (paths.cache_dir).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset
from llmi3d_core.data.synth.query_config import QueryConfig
from llmi3d_core.paths import cache_dir, config_path
from llmi3d_core.train import ensure_trained
from llmi3d_core.train_config import config_to_dict, load_train_config, resolve_model_config

DEFAULT_RECIPE = ("train", "smol_synth.yaml")
# The test scenes: a seed no recipe trains on, with the recipe's held-out categories.
TEST_SEED = 9001
TEST_IMAGES = 200
# Bumped when the model's code changes what a checkpoint holds (new modules, new buffers) or how
# its values are fitted (6: the score calibration; 7: the pointer stage's LLM pass runs queries
# in groups of similar length, which moves their states by ~1e-5; 8: the crop heads; 9: the
# spatial-relation heads; 10: the crop descriptors and the pointer stage's LLM states computed
# in bfloat16 on a CPU with bfloat16 units; 11: the crops stage keeps the step whose heads err
# least, not the lowest loss; 12: the candidates are picked by 2D-box NMS; 13: the candidates
# after the best have a score calibration of their own; 14: the model's own answer ratio,
# `answer_ratio`; 15: a worded query's best candidate scored from its evidence,
# `answer_calibration`; 16: the crop heads name from the whole descriptor, trained with mixup),
# so that a cached default model of an older release is retrained instead of failing to load or
# serving the old values.
MODEL_REVISION = 16


def default_recipe() -> Path:
    """The default model's training config (installed with the package)."""
    return config_path(*DEFAULT_RECIPE)


def default_model_dir(recipe: Path | None = None) -> Path:
    """Cache directory of the default model, named by a hash of the resolved recipe.

    A release that changes the recipe or the model's defaults gets a fresh directory (and a
    new training run) instead of refusing to resume a run of a different config.
    """
    config = load_train_config(recipe or default_recipe())
    model = dataclasses.asdict(resolve_model_config(config.model))
    resolved = json.dumps(
        [config_to_dict(config), model, MODEL_REVISION], sort_keys=True, default=str
    )
    return cache_dir(f"default_model-{hashlib.sha256(resolved.encode()).hexdigest()[:10]}")


def ensure_default_model(model_dir: Path | None = None) -> Path:
    """The default model's best checkpoint, training it first when it is not cached yet."""
    recipe = default_recipe()
    return ensure_trained(recipe, model_dir or default_model_dir(recipe))


def default_test_data(num_images: int = TEST_IMAGES, progress: bool = True) -> Path:
    """A synthetic test set for the default model: new images, the recipe's held-out categories.

    Its images come from TEST_SEED, which no recipe trains on; its held-out (novel) categories
    are those of the default recipe's training set, so "novel" means the same in both. Every
    image is in its "test" split.
    """
    config = load_train_config(default_recipe())
    train_seed = config.data.synth.seed if config.data.synth is not None else 0
    out = cache_dir("synthetic_eval", f"v2_seed{TEST_SEED}_novel{train_seed}_n{num_images}")
    if not (out / "dataset.json").is_file():
        synth = SynthConfig(
            num_images=num_images,
            seed=TEST_SEED,
            novel_seed=train_seed,
            split_fractions=(0.0, 0.0, 1.0),
            queries=QueryConfig(negatives_per_image=1, multi_target_per_image=1),
        )
        generate_dataset(
            synth, out, overwrite=True, workers=min(2, os.cpu_count() or 1), progress=progress
        )
    return out


__all__ = [
    "DEFAULT_RECIPE",
    "TEST_SEED",
    "default_model_dir",
    "default_recipe",
    "default_test_data",
    "ensure_default_model",
]
