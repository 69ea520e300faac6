"""The Predictor (the node's and the CLI's entry point) on the tiny preset."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from llmi3d_core.errors import ConfigError, InvalidInputError, ModelOutputError
from llmi3d_core.inference import Predictor, not_found_answer, object_phrase
from llmi3d_core.model import LLMI3D, get_preset
from llmi3d_core.prediction import (
    DEFAULT_MIN_SCORE,
    DUPLICATE_IOU_2D,
    MIN_NEGATIVES_TO_FIT,
    RATIO_STEP,
    Answer,
    AnswerRule,
    Prediction,
    fit_min_ratio_to_nothing,
    suppress_duplicates,
)

K_VGA = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models on one thread (see test/core/model/conftest.py for why)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(LLMI3D(get_preset("tiny")), answer_policy="ground")


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_predict_returns_one_prediction_with_contract_fields(predictor, image):
    predictions = predictor.predict(image, K_VGA, "Find the red lamp.")
    assert len(predictions) == 1
    pred = predictions[0]
    assert isinstance(pred, Prediction)
    assert pred.label == "red lamp" and pred.answer == ""
    assert pred.center.shape == (3,) and pred.dims.shape == (3,)
    assert pred.rotation.shape == (3, 3) and pred.box2d.shape == (4,)
    assert pred.center_uv.shape == (2,) and 0.0 <= pred.score <= 1.0
    np.testing.assert_allclose(pred.rotation @ pred.rotation.T, np.eye(3), atol=1e-5)
    assert pred.center[2] > 0 and np.all(pred.dims > 0)
    expected = {"validate", "preprocess", "encode_image", "prefill", "llm", "decode", "total"}
    assert set(predictor.last_timings) == expected


def test_repeated_query_on_the_same_image_skips_the_image_encoder(predictor, image):
    low_calls = _count_calls(predictor.model.low_res)
    high_calls = _count_calls(predictor.model.dense_heads)  # the HR branch's last module
    predictor.predict(image, K_VGA, "find the lamp")
    assert not predictor.last_cache_hit and low_calls == [1] and high_calls == [1]
    predictor.predict(image, K_VGA, "find the chair")
    predictor.predict(image.copy(), K_VGA.copy(), "find the table")  # same content, new arrays
    assert predictor.last_cache_hit and low_calls == [1] and high_calls == [1]
    assert predictor.last_timings["encode_image"] == 0.0
    predictor.predict(image, K_VGA * np.array([[1.1], [1.1], [1.0]]), "find the lamp")
    assert low_calls == [2]  # another K is another key
    other = image.copy()
    other[0, 0, 0] ^= 1
    predictor.predict(other, K_VGA, "find the lamp")
    assert low_calls == [3]


def test_cached_and_fresh_predictions_agree(predictor, image):
    first = predictor.predict(image, K_VGA, "find the lamp")[0]
    second = predictor.predict(image, K_VGA, "find the lamp")[0]
    predictor.clear_cache()
    third = predictor.predict(image, K_VGA, "find the lamp")[0]
    np.testing.assert_array_equal(first.center, second.center)
    np.testing.assert_allclose(first.center, third.center, rtol=1e-6)


def test_cache_is_lru_bounded(image):
    torch.manual_seed(0)
    predictor = Predictor(LLMI3D(get_preset("tiny")), cache_size=2, answer_policy="ground")
    calls = _count_calls(predictor.model.low_res)
    images = [image, image[::-1].copy(), image[:, ::-1].copy()]
    for img in images:
        predictor.predict(img, K_VGA, "find the lamp")
    predictor.predict(images[2], K_VGA, "find the lamp")
    assert calls == [3]
    predictor.predict(images[0], K_VGA, "find the lamp")  # evicted: encoded again
    assert calls == [4]


def test_predict_batch_encodes_each_image_once_together(predictor, image):
    calls = _count_calls(predictor.model.low_res)
    other = image[::-1].copy()
    results = predictor.predict_batch(
        [image, other, image], [K_VGA] * 3, ["find the lamp", "find the cup", "find the chair"]
    )
    assert [len(r) for r in results] == [1, 1, 1]
    assert calls == [1]  # one vision pass for the two distinct images
    single = predictor.predict(other, K_VGA, "find the cup")[0]
    np.testing.assert_allclose(results[1][0].center, single.center, rtol=1e-5)


def test_prompts_are_pixels_of_the_input_image(predictor, image):
    plain = predictor.predict(image, K_VGA, "what is this")[0]
    boxed = predictor.predict(image, K_VGA, "what is this", box2d=[100, 50, 300, 250])[0]
    pointed = predictor.predict(image, K_VGA, "what is this", point2d=(320.0, 240.0))[0]
    assert not np.allclose(plain.center, boxed.center)
    assert not np.allclose(boxed.center, pointed.center)


def test_a_box_prompt_is_answered_with_the_object_in_the_box(predictor, image):
    """The prompt is a candidate of its own: its box comes back in pixels of the input image."""
    box = [100.0, 50.0, 300.0, 250.0]
    first = predictor.predict(image, K_VGA, "what is this", box2d=box)[0]
    # letterboxed to the canvas and back (the tiny preset has no crop heads to correct it)
    np.testing.assert_allclose(first.box2d, box, atol=0.05)


@pytest.mark.parametrize(("policy", "passes"), [("ground", 1), ("answer", 3)])
def test_answer_policy_sets_the_llm_passes(image, policy, passes):
    """ "ground" is one LLM pass per query; "answer" rewinds, generates, then reads the box."""
    torch.manual_seed(0)
    predictor = Predictor(
        LLMI3D(get_preset("tiny").replace(**{"llm.max_answer_tokens": 1})), answer_policy=policy
    )
    predictor.predict(image, K_VGA, "what should I use to read?")  # fills the image cache
    calls = _count_calls(predictor.model.llm.causal_lm.get_decoder())
    pred = predictor.predict(image, K_VGA, "what should I use to read?")[0]
    assert calls == [passes]  # answer: speculative pass + 1 answer token + [<pos>, 3D Query]
    assert pred.label == (pred.answer or "what should I use to read")


def test_bfloat16_on_cpu(image):
    torch.manual_seed(0)
    predictor = Predictor(LLMI3D(get_preset("tiny")), dtype="bfloat16", answer_policy="ground")
    assert predictor.model.query_embedding.dtype == torch.bfloat16
    pred = predictor.predict(image, K_VGA, "find the lamp")[0]
    assert pred.center.dtype == np.float64 and np.all(np.isfinite(pred.center))


def test_bfloat16_on_cpu_runs_the_trained_models_parts(image):
    """What a trained default model has and the bare preset lacks (category priors, fitted
    crop heads) runs in bfloat16 too (it once raised). Random weights put their heatmap peaks
    anywhere, and rounding moves them, so the answers are not compared with float32's."""
    config = get_preset("tiny").replace(
        **{"detector.crop_heads": True, "detector.crop_size": 32,
           "detector.categories": ("lamp", "chair"), "detector.colors": ("red", "blue")}
    )  # fmt: skip
    torch.manual_seed(0)
    model = LLMI3D(config)
    model.crop_heads.fitted.fill_(True)  # candidates are named and boxed from crops
    predictor = Predictor(model, dtype="bfloat16", answer_policy="ground")
    answers = predictor.predict(image, K_VGA, "find the lamp", max_results=3)
    assert len(answers) == 3 and predictor.model.crop_heads.mean.dtype == torch.bfloat16
    for answer in answers:
        assert np.all(np.isfinite(answer.center)) and np.all(np.isfinite(answer.box2d))
        assert answer.category in ("lamp", "chair")


def test_nan_model_output_raises(predictor, image):
    with torch.no_grad():
        predictor.model.dense_heads.outputs["dims"].bias.fill_(float("nan"))
    with pytest.raises(ModelOutputError, match=r"decoded \w+ is not finite: \[\[nan"):
        predictor.predict(image, K_VGA, "find the lamp")


def test_nan_mlp_output_raises(image):
    torch.manual_seed(0)
    model = LLMI3D(get_preset("tiny").replace(**{"heads.pointer": False}))
    predictor = Predictor(model, answer_policy="ground")
    with torch.no_grad():
        predictor.model.heads.mlps["dims"][2].bias.fill_(float("nan"))
    with pytest.raises(ModelOutputError, match=r"decoded \w+ is not finite"):
        predictor.predict(image, K_VGA, "find the lamp")


def test_max_results_ranks_the_detected_objects(predictor, image):
    predictions = predictor.predict(image, K_VGA, "find the lamp", max_results=3)
    assert len(predictions) == 3
    scores = [p.score for p in predictions]
    # best first; each a probability of its own (they need not sum to 1)
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    [best] = predictor.predict(image, K_VGA, "find the lamp")
    np.testing.assert_array_equal(predictions[0].center, best.center)
    everything = predictor.predict(image, K_VGA, "find the lamp", max_results=100)
    # every detected object once: duplicates of one object are suppressed
    assert 3 <= len(everything) <= predictor.config.detector.max_objects
    assert len(suppress_duplicates(everything)) == len(everything)
    for first, again in zip(predictions, everything, strict=False):
        np.testing.assert_array_equal(first.center, again.center)


@pytest.mark.parametrize("size", [(375, 1242), (480, 640), (900, 1600), (300, 200)])
def test_2d_outputs_are_pixels_of_the_input_image(predictor, size):
    """The letterbox is undone: each box's projected centre is the 3D centre seen with K, and
    its 2D box lies in the image (clipped there: Letterbox.boxes_to_image)."""
    height, width = size
    image = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
    K = np.array([[0.8 * width, 0, width / 2 - 3], [0, 0.8 * width, height / 2 + 2], [0, 0, 1]])
    for pred in predictor.predict(image, K, "find the car", max_results=4):
        projected = K @ pred.center
        np.testing.assert_allclose(projected[:2] / projected[2], pred.center_uv, atol=1e-3)
        x1, y1, x2, y2 = pred.box2d
        assert -0.5 <= x1 <= x2 <= width - 0.5 and -0.5 <= y1 <= y2 <= height - 0.5


def test_category_head_names_the_object(image):
    torch.manual_seed(0)
    config = get_preset("tiny").replace(**{"detector.categories": ["chair", "lamp", "car"]})
    predictor = Predictor(LLMI3D(config), answer_policy="ground")
    for pred in predictor.predict(image, K_VGA, "find the thing", max_results=8):
        assert pred.category in config.detector.categories
        assert pred.label == pred.category  # no answer: the detector's category names it


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_rgb": [[1, 2, 3]]}, "image_rgb must be a numpy array, got list"),
        ({"image_rgb": np.zeros((48, 64, 3), np.float32)}, "must have dtype uint8, got float32"),
        ({"image_rgb": np.zeros((48, 64), np.uint8)}, "must have shape (H, W, 3), got (48, 64)"),
        ({"image_rgb": np.zeros((48, 64, 4), np.uint8)}, "got (48, 64, 4)"),
        ({"image_rgb": np.zeros((4, 64, 3), np.uint8)}, "at least 8 x 8 pixels"),
        ({"K": np.eye(2)}, "K must have shape (3, 3), got (2, 2)"),
        ({"K": [[1, 0, 0], [0, "a", 0], [0, 0, 1]]}, "K must be a 3x3 array of numbers"),
        ({"K": np.where(np.eye(3) > 0, np.nan, 0.0)}, "K must be finite"),
        ({"K": np.diag([0.0, 500.0, 1.0])}, "focal lengths must be > 0 px, got f_x=0.0"),
        ({"K": np.diag([500.0, -5.0, 1.0])}, "f_y=-5.0"),
        ({"K": np.diag([500.0, 500.0, 2.0])}, "last row must be (0, 0, 1)"),
        ({"query": "   "}, "query must not be empty"),
        ({"query": 42}, "query must be a string, got int"),
        ({"query": "x" * 2001}, "at most 2000 are allowed"),
        ({"box2d": [10, 10, 700, 100]}, "lies outside the image (width 64, height 48 px)"),
        ({"box2d": [30, 10, 20, 40]}, "box_prompt must have x_min < x_max and y_min < y_max"),
        ({"box2d": [1, 2, 3]}, "box_prompt must be 4 finite numbers, got [1.0, 2.0, 3.0]"),
        (
            {"box2d": [1, 2, float("nan"), 4]},
            "box_prompt must be 4 finite numbers, got [1.0, 2.0, nan, 4.0]",
        ),
        (
            {"point2d": np.array([np.nan, 5.0])},
            "point_prompt must be 2 finite numbers, got [nan, 5.0]",
        ),
        ({"point2d": [-5, 10]}, "point_prompt [-5.0, 10.0] lies outside the image"),
        ({"max_results": 0}, "max_results must be an integer >= 1, got 0"),
        ({"max_results": 1.5}, "max_results must be an integer >= 1, got 1.5"),
        ({"min_score": 1.5}, "min_score must be a number in [0, 1], got 1.5"),
        ({"min_score": -0.1}, "min_score must be a number in [0, 1], got -0.1"),
        ({"min_score": "high"}, "min_score must be a number in [0, 1], got 'high'"),
    ],
)
def test_bad_input_raises_invalid_input(predictor, kwargs, message):
    args = {
        "image_rgb": np.zeros((48, 64, 3), np.uint8),
        "K": [[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]],
        "query": "find the lamp",
    }
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        predictor.predict(**args)


def test_predict_batch_length_mismatch(predictor, image):
    with pytest.raises(InvalidInputError, match="equally long lists, got 2 images, 1 K"):
        predictor.predict_batch([image, image], [K_VGA], ["a", "b"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="requested but this torch build sees no CUDA GPU"):
        Predictor(LLMI3D(get_preset("tiny")), device="cuda")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float16"}, "float16 needs device='cuda'"),
        ({"dtype": "int8"}, "unknown dtype 'int8'; available: float32, bfloat16, float16"),
        ({"device": "tpu"}, "invalid device 'tpu': use 'cpu', 'cuda' or 'cuda:N'"),
        ({"device": "meta"}, "unsupported device 'meta'; use 'cpu' or 'cuda'"),
        ({"device": "gpu:x"}, "invalid device 'gpu:x'"),
        ({"answer_policy": "never"}, "unknown answer_policy 'never'"),
        ({"cache_size": 0}, "cache_size must be >= 1, got 0"),
    ],
)
def test_bad_predictor_settings(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Predictor(LLMI3D(get_preset("tiny")), **kwargs)


def test_from_preset_and_config_file(tmp_path, image):
    predictor = Predictor.from_preset("tiny")
    assert predictor.config.name == "tiny"
    path = tmp_path / "model.yaml"
    path.write_text("preset: tiny\nheads:\n  rotation: euler\n")
    predictor = Predictor.from_preset(str(path))
    assert predictor.config.heads.rotation == "euler"
    assert len(predictor.predict(image, K_VGA, "find the lamp")) == 1
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        Predictor.from_preset("huge")


@pytest.mark.parametrize(
    ("query", "phrase"),
    [
        ("Find the red lamp.", "red lamp"),
        ("please locate a chair", "chair"),
        ("where is the cup?", "cup"),
        ("Give me the 3D box of the traffic cone.", "traffic cone"),
        ("lamp", "lamp"),
        ("the", "the"),
    ],
)
def test_object_phrase(query, phrase):
    assert object_phrase(query) == phrase


@pytest.mark.parametrize(
    ("query", "answer"),
    [
        ("find the fire extinguisher", "no 'fire extinguisher' found"),
        ("Where is the cup?", "no 'cup' found"),
        (
            "What could take thirty people across town?",
            "nothing here answers 'What could take thirty people across town?'",
        ),
        (
            " I want to read but it is too dark: what should I use? ",
            "nothing here answers 'I want to read but it is too dark: what should I use?'",
        ),
    ],
)
def test_not_found_answer_names_the_object_or_the_question(query, answer):
    assert not_found_answer(query) == answer


# ------------------------------------------------------------------------------------------
# answers: thresholds, duplicates, messages
# ------------------------------------------------------------------------------------------


def _box(
    label: str, score: float, center=(0.0, 0.0, 5.0), dims=(1.0, 1.0, 1.0), box2d=None
) -> Prediction:
    """An upright box (camera frame) with a score; its 10 px 2D box moves with x and y."""
    center = np.asarray(center, dtype=float)
    left, top = 10.0 + 100.0 * center[:2]
    box2d = [left, top, left + 10.0, top + 10.0] if box2d is None else box2d
    return Prediction(
        label=label,
        answer="",
        center=center,
        dims=np.asarray(dims, dtype=float),
        rotation=np.eye(3),
        score=score,
        box2d=np.asarray(box2d, dtype=float),
        center_uv=np.array([left + 5.0, top + 5.0]),
    )


class _Located:
    nothing_score = 0.125


def test_suppress_duplicates_keeps_one_box_per_object():
    lamp = _box("lamp", 0.9)
    copy = _box("lamp", 0.8)  # the same box again (a neighbouring heatmap peak)
    assert suppress_duplicates([lamp, copy]) == [lamp]
    near = _box("lamp", 0.7, center=(0.1, 0.0, 5.0))  # 3D IoU 0.82 > DUPLICATE_IOU
    far = _box("chair", 0.6, center=(2.0, 0.0, 5.0))  # no overlap
    half = _box("chair", 0.5, center=(0.7, 0.0, 5.0))  # 3D IoU 0.18: another object
    assert suppress_duplicates([lamp, near, far, half]) == [lamp, far, half]
    assert suppress_duplicates([lamp, far]) == [lamp, far]  # two distinct boxes: both
    assert suppress_duplicates([far, lamp]) == [far, lamp]  # the order is kept
    # a duplicate of a dropped box is judged against the kept ones only
    assert suppress_duplicates([lamp, copy, near]) == [lamp]
    assert suppress_duplicates([]) == [] and suppress_duplicates([copy]) == [copy]


def test_suppress_duplicates_drops_one_object_seen_at_two_depths():
    lamp = _box("lamp", 0.9)
    deeper = _box("lamp", 0.8, center=(0.0, 0.0, 7.0))  # 3D IoU 0, the same 2D box
    assert suppress_duplicates([lamp, deeper]) == [lamp]
    # 2D IoU 6 x 10 / (2 x 100 - 60) = 0.43 <= DUPLICATE_IOU_2D: two objects side by side
    beside = _box("lamp", 0.8, center=(0.0, 0.0, 7.0), box2d=[14.0, 10.0, 24.0, 20.0])
    assert suppress_duplicates([lamp, beside]) == [lamp, beside]
    overlapping = _box("lamp", 0.7, center=(0.0, 0.0, 9.0), box2d=[12.0, 10.0, 22.0, 20.0])
    assert suppress_duplicates([lamp, beside, overlapping]) == [lamp, beside]  # 2D IoU 0.67
    assert DUPLICATE_IOU_2D == 0.5


def test_answer_select_thresholds_deduplicates_and_cuts():
    ranked = [
        _box("lamp", 0.9),
        _box("lamp", 0.85),  # a copy of the first
        _box("chair", 0.5, center=(2.0, 0.0, 5.0)),
        _box("table", 0.4, center=(-2.0, 0.0, 5.0)),
        _box("cup", 0.2, center=(0.0, 2.0, 5.0)),
    ]
    answer = Answer.select("find it", ranked, _Located(), max_results=10, rule=AnswerRule(0.35))
    assert [p.label for p in answer.predictions] == ["lamp", "chair", "table"]
    assert answer.best is ranked[0] and answer.query == "find it"
    assert answer.nothing_score == 0.125 and answer.min_score == 0.35
    assert answer.message == "found 3: lamp (0.90), chair (0.50), table (0.40)"
    # max_results cuts after the duplicate is gone
    two = Answer.select("find it", ranked, _Located(), max_results=2, rule=AnswerRule(0.35))
    assert [p.score for p in two.predictions] == [0.9, 0.5]
    everything = Answer.select("find it", ranked, None, max_results=10, rule=AnswerRule())
    assert len(everything.predictions) == 4 and everything.nothing_score == 0.0


def test_answer_select_equals_deduplicating_every_candidate_the_rule_passes():
    """select deduplicates only what the rule can keep (a shortcut): the same answers as
    suppressing every candidate above min_score, keeping, then cutting (random scenes)."""
    rng = np.random.default_rng(5)
    for trial in range(150):
        count = int(rng.integers(0, 9))
        scores = np.sort(rng.uniform(0.0, 1.0, count))[::-1]
        ranked = [  # clustered centres, so that many boxes are duplicates of others
            _box(f"o{i}", float(score), center=(*rng.integers(0, 3, 2) * 0.4, 5.0))
            for i, score in enumerate(scores)
        ]
        rule = AnswerRule(*rng.choice([0.0, 0.2, 0.4, 0.6], 3))
        max_results = int(rng.integers(1, 6))
        located = _Located()
        deduplicated = suppress_duplicates([p for p in ranked if p.score >= rule.min_score])
        expected = rule.keep(deduplicated, located.nothing_score)[:max_results]
        got = Answer.select("q", ranked, located, max_results=max_results, rule=rule)
        assert got.predictions == expected, (trial, rule, max_results)


def test_answer_not_here_keeps_the_best_candidate_and_says_why():
    ranked = [_box("lamp", 0.3), _box("chair", 0.1, center=(2.0, 0.0, 5.0))]
    answer = Answer.select("the lamp", ranked, _Located(), max_results=1, rule=AnswerRule(0.35))
    assert answer.predictions == [] and answer.best is ranked[0]
    assert answer.message == (
        "nothing matching was found in this frame (best candidate 'lamp', score 0.30 < "
        "min_score 0.35)"
    )
    nothing = Answer.select("the lamp", [], _Located(), max_results=1, rule=AnswerRule(0.35))
    assert nothing.best is None and nothing.predictions == []
    assert nothing.message == "nothing matching was found in this frame (no object detected)"
    # a score equal to min_score is kept
    kept = Answer.select("the lamp", ranked, None, max_results=1, rule=AnswerRule(0.3))
    assert kept.predictions == [ranked[0]]


def test_answer_rule_weighs_the_best_against_nothing_and_the_others_by_their_own_floor():
    """The best box needs min_score and min_ratio_to_nothing x nothing_score; the boxes after it
    need min_score_others (and min_score); each refusal says which test failed."""
    ranked = [
        _box("lamp", 0.3),
        _box("chair", 0.25, center=(2.0, 0.0, 5.0)),
        _box("table", 0.2, center=(-2.0, 0.0, 5.0)),
    ]
    located = _Located()  # nothing_score 0.125
    rule = AnswerRule(min_score=0.15, min_ratio_to_nothing=2.0, min_score_others=0.22)
    answer = Answer.select("the lamp", ranked, located, max_results=5, rule=rule)
    assert [p.label for p in answer.predictions] == ["lamp", "chair"]  # 0.3 >= 2 x 0.125
    assert answer.rule is rule and answer.min_score == 0.15
    stricter = AnswerRule(min_score=0.15, min_ratio_to_nothing=2.5, min_score_others=0.22)
    refused = Answer.select("the lamp", ranked, located, max_results=5, rule=stricter)
    assert refused.predictions == [] and refused.best is ranked[0]
    assert refused.message == (
        "nothing matching was found in this frame (best candidate 'lamp', score 0.30 < "
        "min_ratio_to_nothing 2.50 x 0.12, the probability that nothing matches)"
    )
    # min_score is a floor for the others too, whatever min_score_others says
    floor = AnswerRule(min_score=0.22, min_score_others=0.0)
    assert [p.score for p in floor.keep(ranked, 0.0)] == [0.3, 0.25]
    # what a rule keeps is a prefix, so a stricter rule on kept answers is exact
    assert AnswerRule().keep(ranked, 0.9) == ranked
    assert AnswerRule(min_score_others=0.22).keep(ranked, 0.9) == ranked[:2]
    assert AnswerRule(min_ratio_to_nothing=0.5).keep(ranked, 0.9) == []  # 0.3 < 0.45
    assert AnswerRule(min_ratio_to_nothing=1.0).keep([], 0.0) == []


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"min_score": 1.5}, "min_score"),
        ({"min_score": -0.1}, "min_score"),
        ({"min_ratio_to_nothing": 101.0}, "min_ratio_to_nothing"),
        ({"min_ratio_to_nothing": -1.0}, "min_ratio_to_nothing"),
        ({"min_score_others": float("nan")}, "min_score_others"),
        ({"min_score": "high"}, "min_score"),
        ({"min_score": True}, "min_score"),
    ],
)
def test_answer_rule_refuses_values_out_of_range(values, name):
    with pytest.raises(InvalidInputError, match=name):
        AnswerRule(**values)


def refused_share(best: np.ndarray, nothing: np.ndarray, ratio: float, min_score: float) -> float:
    rule = AnswerRule(min_score, ratio)
    return float(np.mean([not rule.answers_best(b, n) for b, n in zip(best, nothing, strict=True)]))


@pytest.mark.parametrize("rate", [0.5, 0.8, 0.85, 0.95])
def test_the_fitted_ratio_is_the_lowest_that_refuses_the_rate(rate):
    """On negative queries' scores, the fitted ratio makes AnswerRule refuse at least `rate` of
    them, and the next lower multiple of RATIO_STEP does not."""
    rng = np.random.default_rng(int(rate * 100))
    best, nothing = rng.uniform(0.0, 0.9, 300), rng.uniform(0.3, 0.9, 300)
    ratio = fit_min_ratio_to_nothing(best, nothing, rate, 0.15)
    assert ratio is not None and ratio > 0
    assert round(ratio / RATIO_STEP, 6).is_integer()
    assert refused_share(best, nothing, ratio, 0.15) >= rate
    assert refused_share(best, nothing, ratio - RATIO_STEP, 0.15) < rate


def test_the_ratio_is_not_fitted_on_too_few_negatives_nor_past_its_range():
    """Fewer than MIN_NEGATIVES_TO_FIT negatives: no ratio (the default serves); a rate the
    range cannot reach (nothing scores 0): none; one min_score reaches alone: ratio 0."""
    few = np.full(MIN_NEGATIVES_TO_FIT - 1, 0.3)
    assert fit_min_ratio_to_nothing(few, few, 0.8, 0.15) is None
    many = np.full(100, 0.3)
    assert fit_min_ratio_to_nothing(many, np.zeros(100), 0.8, 0.15) is None
    assert fit_min_ratio_to_nothing(many, many, 0.8, 0.5) == 0.0


def test_served_rule_takes_the_models_ratio_when_it_has_one():
    assert AnswerRule.served(None) == AnswerRule.served(-1.0) == AnswerRule.SERVED
    own = AnswerRule.served(0.8)
    assert own.min_ratio_to_nothing == 0.8
    assert (own.min_score, own.min_score_others) == (
        AnswerRule.SERVED.min_score, AnswerRule.SERVED.min_score_others
    )  # fmt: skip


def test_answer_batch_applies_min_score_and_reports_nothing(predictor, image):
    [low] = predictor.answer_batch([image], [K_VGA], ["find the lamp"], max_results=3)
    [high] = predictor.answer_batch([image], [K_VGA], ["find the lamp"], min_score=1.0)
    assert len(low.predictions) == 3 and low.best is not None
    assert 0.0 <= low.nothing_score <= 1.0 and low.message.startswith("found 3: ")
    assert high.predictions == [] and high.best is not None  # nothing scores 1.0
    np.testing.assert_array_equal(high.best.center, low.predictions[0].center)
    assert high.nothing_score == pytest.approx(low.nothing_score)
    assert "nothing matching was found" in high.message and "< min_score 1.00" in high.message
    # predict and predict_batch return the answers' predictions
    assert predictor.predict(image, K_VGA, "find the lamp", min_score=1.0) == []
    batch = predictor.predict_batch([image], [K_VGA], ["find the lamp"], max_results=3)
    assert [p.score for p in batch[0]] == [p.score for p in low.predictions]
    kept = [p for p in low.predictions if p.score >= low.predictions[1].score]
    middle = predictor.predict(
        image, K_VGA, "find the lamp", max_results=3, min_score=low.predictions[1].score
    )
    assert [p.score for p in middle] == [p.score for p in kept]
    assert 0.0 < DEFAULT_MIN_SCORE < 1.0
    # the ratio to "nothing matches" reaches the rule: 100 x nothing_score is out of reach
    [refused] = predictor.answer_batch(
        [image], [K_VGA], ["find the lamp"], max_results=3, min_ratio_to_nothing=100.0
    )
    assert refused.predictions == [] and "min_ratio_to_nothing 100.00 x" in refused.message
    others = predictor.predict(
        image, K_VGA, "find the lamp", max_results=3, min_score_others=low.predictions[1].score
    )
    assert [p.score for p in others] == [p.score for p in kept]
    with pytest.raises(InvalidInputError, match="min_ratio_to_nothing"):
        predictor.answer_batch([image], [K_VGA], ["find the lamp"], min_ratio_to_nothing=-1.0)


@pytest.mark.parametrize(("answer_types", "policy"), [((), "ground"), (("question",), "auto")])
def test_default_answer_policy_follows_the_training(answer_types, policy):
    """A model never trained to answer grounds every query; one trained to answer decides."""
    torch.manual_seed(0)
    model = LLMI3D(get_preset("tiny").replace(answer_types=answer_types))
    assert Predictor(model).answer_policy == policy
    assert Predictor(model, answer_policy="answer").answer_policy == "answer"
