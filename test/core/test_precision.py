"""bfloat16 training passes on a CPU (precision.py): when they apply, and that they stay close.

The bfloat16 runs are forced ("bf16"), so these tests check the same code on a CPU without
bfloat16 units (slower there: oneDNN emulates it) as on one with them.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from llmi3d_core.data.dataset import ImageDataset
from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset
from llmi3d_core.data.synth.query_config import QueryConfig
from llmi3d_core.errors import ConfigError
from llmi3d_core.model import get_preset
from llmi3d_core.model.llmi3d import LLMI3D
from llmi3d_core.precision import cpu_bfloat16, cpu_bfloat16_units, resolve_mixed_precision
from llmi3d_core.train_config import StageConfig, load_train_config
from llmi3d_core.train_stages import FrozenBackbone, make_task

AMX = frozenset({"fpu", "avx512f", "amx_bf16", "amx_tile"})
AVX2 = frozenset({"fpu", "avx2", "fma"})


def test_mixed_precision_resolves_by_device_and_cpu_units():
    """ "auto" is bfloat16 only on a CPU with bfloat16 units; "bf16" forces it; fp16 needs a GPU."""
    assert cpu_bfloat16_units(AMX) == ("AMX-BF16",)
    assert cpu_bfloat16_units(AMX | {"avx512_bf16"}) == ("AVX512-BF16", "AMX-BF16")
    assert cpu_bfloat16_units(AVX2) == ()
    assert resolve_mixed_precision("auto", cuda=False, flags=AMX) == "bf16"
    assert resolve_mixed_precision("auto", cuda=False, flags=AVX2) == "no"
    assert resolve_mixed_precision("no", cuda=False, flags=AMX) == "no"
    assert resolve_mixed_precision("bf16", cuda=False, flags=AVX2) == "bf16"
    with pytest.raises(ConfigError, match="fp16"):
        resolve_mixed_precision("fp16", cuda=False, flags=AMX)
    assert not cpu_bfloat16("no", "cpu")
    assert cpu_bfloat16("bf16", "cpu")


def test_an_unquoted_no_is_refused_with_the_fix():
    """YAML reads `mixed_precision: no` as False: the error says to quote it."""
    with pytest.raises(ConfigError, match=r"mixed_precision: .*quote it \('no'\)"):
        load_train_config("config/train/tiny_synth.yaml", ["mixed_precision=no"])
    config = load_train_config("config/train/tiny_synth.yaml", ["mixed_precision='no'"])
    assert config.mixed_precision == "no"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision") / "synth"
    queries = QueryConfig(negatives_per_image=1, multi_target_per_image=1)
    config = SynthConfig(num_images=6, seed=3, split_fractions=(1.0, 0.0, 0.0), queries=queries)
    return generate_dataset(config, root, progress=False)


def train_config(root: Any, precision: str) -> Any:
    return load_train_config(
        "config/train/tiny_synth.yaml",
        [f"data.root={root}", "data.val_split=train", "data.val_queries=8", "data.synth=null",
         f"mixed_precision='{precision}'", "device=cpu"],
    )  # fmt: skip


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().mean() / want.float().abs().mean())


def test_bfloat16_backbone_maps_are_close_to_float32(synth_root):
    model = LLMI3D(get_preset("tiny"))
    picture = ImageDataset(synth_root, "train", model.config)[0]["image_hr"][None]
    exact, fast = FrozenBackbone(model)(picture), FrozenBackbone(model, bfloat16=True)(picture)
    assert len(fast) == len(exact)
    for got, want in zip(fast, exact, strict=True):
        assert got.dtype == torch.float16 and got.shape == want.shape
        assert relative_error(got, want) < 0.1


def test_detector_stage_stays_float32_under_bf16(synth_root):
    """Its 3D boxes lost accuracy in bfloat16 (precision.py): the same batch gives the same
    losses under "bf16" as under "no"."""
    torch.manual_seed(0)
    model = LLMI3D(get_preset("tiny"))
    terms = {}
    for precision in ("no", "bf16"):
        config = train_config(synth_root, precision)
        task = make_task(config, next(s for s in config.stages if s.kind == "detector"))
        assert task.bfloat16 == (precision == "bf16")
        train, _ = task.datasets(model)
        with torch.no_grad():
            losses = task.losses(model, task.collate([train[i] for i in range(4)]))
        terms[precision] = {name: float(value) for name, value in losses.items()}
    assert terms["bf16"] == terms["no"]


def test_pointer_stage_caches_float32_items_in_bfloat16(synth_root):
    """A bfloat16 copy computes the LLM states and candidates: the items have the float32
    run's keys, dtypes and shapes, values close to them, and the model stays float32."""
    torch.manual_seed(0)
    model = LLMI3D(get_preset("tiny"))
    items = {}
    for precision in ("no", "bf16"):
        task = make_task(train_config(synth_root, precision), StageConfig(kind="pointer"))
        items[precision], _ = task.datasets(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert len(items["bf16"]) == len(items["no"]) > 0
    for fast, exact in zip(items["bf16"], items["no"], strict=True):
        assert fast.keys() == exact.keys()
        for key, want in exact.items():
            if isinstance(want, torch.Tensor):
                assert fast[key].dtype == want.dtype and fast[key].shape == want.shape, key
        cosine = torch.nn.functional.cosine_similarity(fast["f3d"], exact["f3d"], dim=-1)
        assert float(cosine) > 0.99
    # bfloat16 did compute them
    assert any(not torch.equal(a["f3d"], b["f3d"]) for a, b in zip(items["bf16"], items["no"],
                                                                    strict=True))  # fmt: skip


def test_crops_stage_descriptors_in_bfloat16_are_close_to_float32(synth_root):
    """The same objects, boxes (the jitter is seeded) and labels; float32 descriptors within
    5 % mean relative error of the float32 run's (and not equal: bfloat16 did compute them)."""
    categories = sorted({o.category_name for r in ImageDataset(synth_root, "train", get_preset(
        "tiny")).records for o in r.objects})  # fmt: skip
    config = get_preset("tiny").replace(
        **{"detector.crop_heads": True, "detector.crop_size": 32,
           "detector.categories": tuple(categories)}
    )  # fmt: skip
    torch.manual_seed(0)
    model = LLMI3D(config)
    items = {}
    for precision in ("no", "bf16"):
        task = make_task(train_config(synth_root, precision), StageConfig(kind="crops"))
        items[precision], _ = task.datasets(model)
    assert len(items["bf16"]) == len(items["no"]) > 0
    fast = torch.stack([item["descriptor"] for item in items["bf16"]])
    exact = torch.stack([item["descriptor"] for item in items["no"]])
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    for key in ("category", "box", "correction"):
        assert all(torch.equal(a[key], b[key]) for a, b in zip(items["bf16"], items["no"],
                                                                 strict=True))  # fmt: skip
    assert 0 < relative_error(fast, exact) < 0.05
