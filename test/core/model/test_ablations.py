"""Each baseline / ablation switch changes the computation it names (tiny preset)."""

from __future__ import annotations

import pytest
import torch

from llmi3d_core import geometry, rotation
from llmi3d_core.errors import ConfigError, ModelOutputError
from llmi3d_core.model import text3d
from llmi3d_core.model.detector import values_at
from llmi3d_core.model.losses import laplacian_nll
from llmi3d_core.model.secba import build_fusion, windows_to_grid

# the loss terms of the dense heads (detector.py) for a config without categories or colours
DETECTOR_TERMS = {"heatmap", "center_uv", "depth", "dims", "rotation", "box2d", "keypoints"}


def _outputs(model, batch):
    with torch.no_grad():
        return model.eval()(batch)


def _features(model, batch):
    """Image features (candidates included) of a batch's images, in eval mode."""
    with torch.no_grad():
        return model.eval().encode_image(
            batch["image_lr"], batch["image_hr"], batch["K"], batch["image_size"]
        )


def _flat_candidates(model, batch):
    """The candidates' physical outputs, boxes, K and canvas size, flattened to (B * K, ...)."""
    candidates = _features(model, batch).candidates
    B, N = candidates.cells.shape
    outputs = {k: v.reshape(B * N, -1).double() for k, v in candidates.outputs.items()}
    boxes = {k: v.reshape(B * N, *v.shape[2:]).double() for k, v in candidates.boxes.items()}
    K = batch["K"].double().repeat_interleave(N, dim=0)
    size = batch["image_size"].double().repeat_interleave(N, dim=0)
    return outputs, boxes, K, size


def _capture_heads(model):
    """Collect the physical outputs of the MLP heads (pointer-less read-out) on every call."""
    captured = []
    model.heads.register_forward_hook(lambda _m, _i, out: captured.append(out))
    return captured


def test_default_fuses_virtual_and_keypoint_height_depth_by_uncertainty(make_model, make_batch):
    model = make_model()
    batch = make_batch(model.config)
    out, boxes, K, size = _flat_candidates(model, batch)
    z1 = out["depth"][:, 0] * (K[:, 0, 0] / 512.0) * (448.0 / size[:, 0])  # eq. 17 inverted
    uv = out["center_uv"] * size
    h_px = (out["keypoints"][:, 1] - out["keypoints"][:, 0]) * size[:, 1]
    z2 = geometry.keypoint_height_depth(h_px, out["dims"][:, 2], uv[:, 1], boxes["R"], K)
    w1, w2 = torch.exp(-out["depth_log_scale"][:, 0]), torch.exp(-out["height_log_scale"][:, 0])
    z = torch.exp((w1 * z1.log() + w2 * z2.log()) / (w1 + w2))
    torch.testing.assert_close(boxes["z_head"], z1, rtol=1e-4, atol=0)
    torch.testing.assert_close(boxes["z_height"], z2, rtol=1e-4, atol=0)
    torch.testing.assert_close(boxes["z"], z, rtol=1e-4, atol=0)
    torch.testing.assert_close(boxes["center"][:, 2], boxes["z"], rtol=1e-5, atol=0)
    back = geometry.backproject(uv[:, 0], uv[:, 1], z, K)
    torch.testing.assert_close(boxes["center"], back, rtol=1e-4, atol=1e-5)


def test_forward_box_is_the_pointed_candidate(make_model, make_batch, without_targets):
    """At initialisation (zero residual) the box is the chosen candidate's, decoded as above."""
    model = make_model()
    batch = without_targets(make_batch(model.config, size=3))
    out = _outputs(model, batch)
    candidates = _features(model, batch).candidates
    choice = out.pointer_logits[:, :-1].argmax(dim=-1)  # the best object, not "no object"
    rows = torch.arange(3)
    for name in ("center", "dims", "R", "z"):
        torch.testing.assert_close(out.boxes[name], candidates.boxes[name][rows, choice])
    torch.testing.assert_close(out.chosen_box2d, candidates.outputs["box2d"][rows, choice])


def test_paper_eq20_uses_the_tight_box_and_the_plain_mean(make_model, make_batch):
    model = make_model(**{"heads.height_extent": "tight_box", "heads.depth_fusion": "mean"})
    out, boxes, K, size = _flat_candidates(model, make_batch(model.config))
    h_box = ((out["box2d"][:, 3] - out["box2d"][:, 1]) * size[:, 1]).clamp(min=1.0)
    z2 = K[:, 1, 1] * out["dims"][:, 2] / h_box  # eq. 19
    torch.testing.assert_close(boxes["z_height"], z2, rtol=1e-4, atol=0)
    torch.testing.assert_close(boxes["z"], (boxes["z_head"] + z2) / 2, rtol=1e-4, atol=0)


def test_no_height_depth_uses_the_head_depth_alone(make_model, make_batch):
    model = make_model(**{"heads.use_height_depth": False})
    batch = make_batch(model.config)
    _, boxes, _, _ = _flat_candidates(model, batch)
    assert "z_height" not in boxes
    assert torch.equal(boxes["z"], boxes["z_head"])
    out = _outputs(model, batch).boxes
    assert "z_height" not in out and torch.equal(out["z"], out["z_head"])


def test_set_decoding_switches_the_depth_at_inference(make_model, make_batch):
    """One model (as trained), three decodings of z: fused (default), eq. 20 as written, virtual
    depth alone; each equals a model built with those switches. The weights stay."""
    batch = make_batch(make_model().config)
    model = make_model()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    decodings = {
        "fused": {"use_height_depth": True, "height_extent": "keypoints",
                  "depth_fusion": "uncertainty"},
        "eq. 20": {"height_extent": "tight_box", "depth_fusion": "mean"},
        "virtual alone": {"use_height_depth": False},
    }  # fmt: skip
    z = {}
    for name, switches in decodings.items():
        model.set_decoding(**switches)
        assert all(getattr(model.config.heads, k) == v for k, v in switches.items())
        out, boxes, K, size = _flat_candidates(model, batch)
        built = make_model(**{f"heads.{k}": v for k, v in switches.items()})
        _, expected, _, _ = _flat_candidates(built, batch)
        torch.testing.assert_close(boxes["z"], expected["z"], rtol=1e-5, atol=0)
        # the query's box (forward: the pointed candidate, zero residual) decodes the same way
        pointed = _outputs(model, batch)
        choice = pointed.pointer_logits[:, :-1].argmax(dim=-1)
        at_choice = boxes["z"].view(len(choice), -1)[torch.arange(len(choice)), choice]
        torch.testing.assert_close(pointed.boxes["z"], at_choice.float(), rtol=1e-5, atol=0)
        z[name] = boxes
        model.set_decoding(**decodings["fused"])  # back to the default between switches
    assert torch.equal(z["virtual alone"]["z"], z["virtual alone"]["z_head"])
    h_box = ((out["box2d"][:, 3] - out["box2d"][:, 1]) * size[:, 1]).clamp(min=1.0)
    z2 = K[:, 1, 1] * out["dims"][:, 2] / h_box  # eq. 19 with the tight box
    torch.testing.assert_close(
        z["eq. 20"]["z"], (z["eq. 20"]["z_head"] + z2) / 2, rtol=1e-4, atol=0
    )
    assert not torch.allclose(z["fused"]["z"], z["eq. 20"]["z"])
    assert not torch.allclose(z["fused"]["z"], z["virtual alone"]["z"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_set_decoding_refuses_what_training_fixed(make_model):
    model = make_model()
    with pytest.raises(ConfigError, match=r"set_decoding: \['pointer'\] cannot change after"):
        model.set_decoding(pointer=False)
    with pytest.raises(ConfigError, match=r"\['readout', 'use_virtual_depth'\].*allowed: \["):
        model.set_decoding(use_virtual_depth=False, readout="pos_token", depth_fusion="mean")
    assert model.config.heads.depth_fusion == "uncertainty"  # nothing changed
    with pytest.raises(ConfigError, match=r"heads.depth_fusion 'max' is unknown"):
        model.set_decoding(depth_fusion="max")


def test_no_virtual_depth_reads_and_learns_metric_depth(make_model, make_batch):
    model = make_model(**{"heads.use_virtual_depth": False, "heads.use_height_depth": False})
    batch = make_batch(model.config)
    out, boxes, _, _ = _flat_candidates(model, batch)
    torch.testing.assert_close(boxes["z"], out["depth"][:, 0].clamp(min=1e-2), rtol=1e-5, atol=0)
    # the dense depth loss compares log depth with log Z (metres), not the virtual depth
    with torch.no_grad():
        features = model.image_side(batch["image_hr"], batch["K"], batch["image_size"])
        losses = model.detector_losses(batch, features)
    rows, cells = torch.nonzero(batch["assign"] >= 0, as_tuple=True)
    objects = batch["assign"][rows, cells]
    raw_depth = values_at(features.dense["depth"], rows, cells)[:, 0]
    depth = raw_depth.clamp(max=8.0).exp() * model.config.heads.depth_scale
    log_scale = values_at(features.dense["depth_log_scale"], rows, cells)[:, 0]
    Z = batch["obj_center_cam"][rows, objects, 2]
    expected = laplacian_nll(depth.log(), Z.log(), log_scale)
    assert losses["depth"].item() == pytest.approx(expected.item(), rel=1e-5)
    virtual = laplacian_nll(depth.log(), batch["obj_virtual_depth"][rows, objects].log(), log_scale)
    assert losses["depth"].item() != pytest.approx(virtual.item(), rel=1e-3)


def test_xyz_regression_has_no_uv_or_depth_head(make_model, make_batch):
    model = make_model(**{"heads.location": "xyz", "heads.pointer": False})
    assert set(model.heads.mlps) == {
        "xyz", "rot6d", "dims", "box2d", "keypoints", "height_log_scale", "score_logit"
    }  # fmt: skip
    captured = _capture_heads(model)
    batch = make_batch(model.config)
    out = _outputs(model, batch)
    xyz = captured[-1]["xyz"]
    assert torch.equal(out.boxes["center"], xyz)
    torch.testing.assert_close(out.boxes["center_uv_px"], geometry.project(xyz, batch["K"]))
    with pytest.raises(ConfigError, match=r"heads.location 'xyz' needs heads.pointer: false"):
        make_model(**{"heads.location": "xyz"})


def test_euler_rotation_head_and_target(make_model, make_batch):
    model = make_model(**{"heads.rotation": "euler"})
    assert model.dense_heads.widths["euler"] == 3 and "rot6d" not in model.dense_heads.widths
    batch = make_batch(model.config)
    out, boxes, K, _ = _flat_candidates(model, batch)
    assert out["euler"].shape[1] == 3 and "rot6d" not in out
    uv = boxes["center_uv_px"]
    R_allo = rotation.euler_to_matrix(out["euler"])
    expected = rotation.allocentric_to_egocentric(R_allo, uv[:, 0], uv[:, 1], K)
    torch.testing.assert_close(boxes["R"], expected, rtol=1e-5, atol=1e-5)
    assert "rotation" in model.train()(batch).losses


def test_no_hr_branch_feeds_only_vit_tokens(make_model, make_batch):
    with pytest.raises(ConfigError, match=r"heads.pointer needs the HR branch"):
        make_model(**{"high_res.enabled": False})
    model = make_model(**{"high_res.enabled": False, "heads.pointer": False})
    assert model.high_res is None and model.fusion is None and model.dense_heads is None
    batch = make_batch(model.config)
    out = model(batch)
    assert out.pointer_logits is None and "heatmap" not in out.losses
    # the box terms are the MLP heads' own (there are no dense heads to share them with)
    assert set(out.losses) == (DETECTOR_TERMS - {"heatmap"}) | {"score", "text", "total"}
    args = (batch["K"], batch["image_size"])
    features = model.encode_image(batch["image_lr"], batch["image_hr"], *args)
    assert features.dense is None and features.candidates is None
    assert features.tokens.shape[1] == model.config.low_res.grid**2
    blank = torch.zeros_like(batch["image_hr"])
    assert torch.equal(model.encode_image(batch["image_lr"], blank, *args).tokens, features.tokens)


def test_no_depth_branch_has_no_depth_output(make_model, make_batch):
    model = make_model(**{"high_res.depth_branch": False})
    assert not {"depth", "depth_log_scale"} & set(model.dense_heads.outputs)
    assert "height_log_scale" in model.dense_heads.outputs
    batch = make_batch(model.config)
    out, boxes, _, _ = _flat_candidates(model, batch)
    assert "depth" not in out and "z_head" not in boxes
    assert torch.equal(boxes["z"], boxes["z_height"])
    result = model.train()(batch)
    assert "z_head" not in result.boxes
    assert torch.isfinite(result.losses["depth"])  # the height depth is still trained
    with pytest.raises(ConfigError, match=r"leaves no depth estimate"):
        make_model(**{"high_res.depth_branch": False, "heads.use_height_depth": False})


@pytest.mark.parametrize(
    ("kind", "multiplier"),
    [
        ("secba", 1),
        ("secba_local", 1),
        ("maxpool", 1),
        ("concat", 2),
    ],
)
def test_fusion_variants_token_counts(make_model, make_batch, kind, multiplier):
    model = make_model(**{"fusion.kind": kind})
    batch = make_batch(model.config)
    tokens = _features(model, batch).tokens
    objects = model.config.detector.max_objects  # the candidates follow the global tokens
    assert tokens.shape[1] == multiplier * model.config.low_res.grid**2 + objects
    assert "total" in model.train()(batch).losses


def test_object_tokens_can_be_left_out(make_model, make_batch):
    model = make_model(**{"detector.object_tokens": False})
    assert model.object_projector is None
    batch = make_batch(model.config)
    assert _features(model, batch).tokens.shape[1] == model.config.low_res.grid**2
    assert "pointer" in model.train()(batch).losses  # the pointer still chooses among them


@pytest.mark.parametrize(
    ("kind", "local"), [("secba", False), ("secba_local", True), ("maxpool", True)]
)
def test_local_variants_only_see_their_window(tiny_config, kind, local):
    """Changing HR features far from LR token 0 changes it only for global attention."""
    torch.manual_seed(0)
    config = tiny_config.replace(**{"fusion.kind": kind}).fusion
    fusion = build_fusion(config, lr_dim=8, hr_dim=6, grid=4)
    tokens = torch.randn(1, 16, 8)
    features = torch.randn(1, 6, 8, 8)  # r = 2: token 0 owns rows 0-1, columns 0-1
    changed = features.clone()
    changed[..., 4:, 4:] += 5.0
    before, after = fusion(tokens, features), fusion(tokens, changed)
    assert torch.equal(before[:, 0], after[:, 0]) == local
    assert not torch.equal(before[:, -1], after[:, -1])


def test_secba_position_encoding_tells_tokens_apart(tiny_config):
    """Identical LR tokens attend identically unless their positions are encoded."""
    torch.manual_seed(0)
    tokens = torch.zeros(1, 16, 8)
    features = torch.randn(1, 6, 8, 8)
    for encoded in (True, False):
        config = tiny_config.replace(**{"fusion.position_encoding": encoded}).fusion
        fusion = build_fusion(config, lr_dim=8, hr_dim=6, grid=4)
        assert (fusion.lr_position is not None) == encoded
        with torch.no_grad():
            out = fusion(tokens, features)
        assert torch.allclose(out[:, 0], out[:, -1]) != encoded


def test_no_pointer_ablation_is_the_plain_readout(make_model, make_batch):
    model = make_model(**{"heads.pointer": False})
    assert model.pointer is None and model.heads is not None
    out = model(make_batch(model.config))
    assert out.pointer_logits is None and not {"pointer", "residual"} & set(out.losses)
    assert "score" in out.losses
    pointed = make_model()
    assert pointed.heads is None and pointed.pointer is not None
    batch = make_batch(pointed.config, size=3)
    out = pointed(batch)
    assert out.pointer_logits.shape == (3, pointed.config.detector.max_objects + 1)
    assert torch.isfinite(out.losses["pointer"]) and "score" not in out.losses


def test_windows_to_grid_layout():
    features = torch.arange(16.0).view(1, 1, 4, 4)
    windows, r = windows_to_grid(features, grid=2)
    assert r == 2
    assert windows[0, 0, :, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert windows[0, 3, :, 0].tolist() == [10.0, 11.0, 14.0, 15.0]


@pytest.mark.parametrize(
    ("readout", "uses_query"), [("query", True), ("pos_token", False), ("text_feature", False)]
)
@pytest.mark.parametrize("pointer", [True, False])
def test_readouts_use_the_3d_query_only_when_named(
    make_model, make_batch, readout, uses_query, pointer
):
    model = make_model(**{"heads.readout": readout, "heads.pointer": pointer})
    model(make_batch(model.config)).losses["total"].backward()
    grad = model.query_embedding.grad
    assert (grad is not None and bool(grad.abs().sum() > 0)) == uses_query


def test_pos_token_and_text_feature_read_different_positions(
    make_model, make_batch, without_targets
):
    logits = {}
    for readout in ("pos_token", "text_feature"):
        model = make_model(seed=3, **{"heads.readout": readout})
        batch = without_targets(make_batch(model.config))
        logits[readout] = _outputs(model, batch).pointer_logits
    assert not torch.allclose(logits["pos_token"], logits["text_feature"])


def test_text3d_has_no_heads_and_supervises_numbers(make_model, make_batch):
    with pytest.raises(ConfigError, match=r"heads.readout 'text' \(Text3D\) needs heads.pointer"):
        make_model(**{"heads.readout": "text"})
    model = make_model(**{"heads.readout": "text", "heads.pointer": False})
    assert model.heads is None and model.pointer is None
    batch = make_batch(model.config)
    out = model(batch)
    assert out.boxes == {} and out.pointer_logits is None
    assert set(out.losses) == DETECTOR_TERMS | {"text", "total"}  # no box head on F_3D
    numbers = model._text3d_ids(batch, 0)
    assert len(numbers) > 30 and numbers[-1] == model.llm.eos_token_id


def test_text3d_format_parse_round_trip(tiny_config):
    config = tiny_config.heads
    values = {
        "center_uv": torch.tensor([0.5, 0.25]),
        "depth": torch.tensor([12.345]),
        "rot6d": torch.tensor([1.0, 0, 0, 0, 1, 0]),
        "dims": torch.tensor([1.0, 0.5, 2.0]),
        "box2d": torch.tensor([0.1, 0.2, 0.3, 0.4]),
        "keypoints": torch.tensor([0.15, 0.35]),
    }
    text = text3d.format_numbers(values, config)
    assert text.startswith("0.500 0.250 12.35 1.000")
    assert text.endswith("0.150 0.350")
    parsed = text3d.parse_numbers(text, config)
    assert set(parsed) == set(values)
    for name, value in values.items():
        assert torch.allclose(parsed[name][0], value, atol=5e-3), name


def test_text3d_unparsable_output_raises(tiny_config):
    with pytest.raises(ModelOutputError, match=r"holds 2 numbers, expected 18"):
        text3d.parse_numbers("lamp 1.0 2.0", tiny_config.heads)


def test_text3d_inference_reports_unparsable_text(make_model, make_batch):
    overrides = {"heads.readout": "text", "heads.pointer": False, "llm.max_text_tokens": 4}
    model = make_model(**overrides).eval()
    batch = make_batch(model.config, size=1)
    context = model.prepare_context(_features(model, batch))
    with pytest.raises(ModelOutputError, match=r"Text3D output holds"):
        model.locate(context, "find the lamp", policy="ground")
    assert context.cache.get_seq_length() == context.prefix_length


@pytest.mark.parametrize("pointer", [True, False])
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("heads.readout", "magic", "unknown heads.readout 'magic'; available: pos_token, query"),
        ("heads.rotation", "quat", "unknown heads.rotation 'quat'"),
        ("fusion.kind", "sum", "unknown fusion.kind 'sum'"),
        ("high_res.kind", "resnet", "unknown high_res.kind 'resnet'"),
        ("low_res.kind", "dino", "unknown low_res.kind 'dino'"),
        ("llm.kind", "gpt", "unknown llm.kind 'gpt'"),
    ],
)
def test_unknown_variant_names_are_rejected(make_model, key, value, message, pointer):
    with pytest.raises(ConfigError, match=message):
        make_model(**{key: value, "heads.pointer": pointer})


def test_unknown_location_is_rejected(make_model):
    with pytest.raises(ConfigError, match=r"unknown heads\.location 'polar'"):
        make_model(**{"heads.location": "polar", "heads.pointer": False})
    with pytest.raises(ConfigError, match=r"heads\.location"):  # the pointer reads uv + depth
        make_model(**{"heads.location": "polar"})
