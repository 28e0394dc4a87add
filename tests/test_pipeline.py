"""Pipeline parsing (both written forms, every kind of mistake) and planning into stages."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from audioserver.audio.pipeline import MAX_STEPS, Pipeline
from audioserver.exceptions import ParameterError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, [{"step": "normalize", "peak_db": -1.0}]),
        ("", []),
        ("   ", []),
        ("gain", [{"step": "gain", "db": 0.0}]),
        ("gain=db=-3", [{"step": "gain", "db": -3.0}]),
        ("gain=-3", [{"step": "gain", "db": -3.0}]),
        (
            "highpass=freq=80:order=4, normalize=peak_db=-2",
            [
                {"step": "highpass", "freq": 80.0, "order": 4},
                {"step": "normalize", "peak_db": -2.0},
            ],
        ),
        ("highpass=80:4", [{"step": "highpass", "freq": 80.0, "order": 4}]),
        ("lowpass=order=3:freq=5000", [{"step": "lowpass", "freq": 5000.0, "order": 3}]),
        ('[{"step": "gain", "db": 6}]', [{"step": "gain", "db": 6.0}]),
        (
            [{"step": "highpass", "freq": 100, "order": 2.0}],
            [{"step": "highpass", "freq": 100.0, "order": 2}],
        ),
    ],
)
def test_parse_gives_normalised_json(spec, expected):
    assert Pipeline.parse(spec).to_json() == expected


def test_text_and_json_forms_are_the_same_pipeline():
    text = Pipeline.parse("highpass=freq=80:order=4,gain=db=2,normalize")
    array = Pipeline.parse(
        '[{"step": "highpass", "freq": 80, "order": 4}, {"step": "gain", "db": 2},'
        ' {"step": "normalize"}]'
    )
    assert text.to_json() == array.to_json()


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("reverb", ["unknown step", "reverb"]),
        ("gain=volume=3", ["gain", "unknown parameter 'volume'"]),
        ("gain=db=100", ["gain", "'db'", "between -60 and 40"]),
        ("gain=db=nan", ["gain", "'db'", "finite"]),
        ("gain=db=inf", ["gain", "'db'", "finite"]),
        ("gain=db=-Infinity", ["gain", "'db'", "finite"]),
        ("gain=db=loud", ["gain", "'db'", "number"]),
        ("gain=db=", ["gain", "'db'", "number"]),
        ("highpass", ["highpass", "'freq'", "required"]),
        ("highpass=freq=80:order=2.5", ["highpass", "'order'", "whole number"]),
        ("highpass=freq=80:order=9", ["highpass", "'order'", "between 1 and 8"]),
        ("highpass=freq=80:freq=90", ["highpass", "'freq'", "twice"]),
        ("gain=1:2", ["gain", "positional"]),
        ("gain=:db=1", ["gain", "empty"]),
        ("gain=db=1:", ["gain", "empty"]),
        ("gain==1", ["gain", "empty name"]),
        ("gain,,normalize", ["Step 2", "empty"]),
        (",gain", ["Step 1", "empty"]),
        ("gain;normalize", ["','"]),
        ('[{"step": "gain", "db": "x"}]', ["gain", "'db'", "number"]),
        ('[{"step": "gain", "db": true}]', ["gain", "'db'", "number"]),
        ('[{"step": "gain", "db": null}]', ["gain", "'db'", "number"]),
        ('[{"step": "gain", "db": [1]}]', ["gain", "'db'", "number"]),
        ('[{"step": "gain", "db": NaN}]', ["gain", "'db'", "finite"]),
        ('[{"step": "gain", "db": Infinity}]', ["gain", "'db'", "finite"]),
        ('[{"db": 1}]', ["Step 1", '"step"']),
        ('[{"step": 5}]', ["Step 1", '"step"']),
        ("[1, 2]", ["Step 1", '"step"']),
        ('{"step": "gain"}', ["array"]),
        ('[{"step": "gain"', ["not valid JSON"]),
        (",".join(["gain"] * (MAX_STEPS + 1)), [f"at most {MAX_STEPS}"]),
    ],
)
def test_malformed_pipelines_name_the_problem(spec, words):
    with pytest.raises(ParameterError) as caught:
        Pipeline.parse(spec)
    assert caught.value.code == "invalid_pipeline"
    for word in words:
        assert word in caught.value.message


def test_errors_name_step_and_parameter_in_fields():
    with pytest.raises(ParameterError) as caught:
        Pipeline.parse("gain,highpass=freq=5")
    assert caught.value.extra == {"step": "highpass", "parameter": "freq", "position": 2}
    assert caught.value.message.startswith("Step 2 'highpass'")


def test_exactly_max_steps_is_allowed():
    assert len(Pipeline.parse(",".join(["gain"] * MAX_STEPS)).steps) == MAX_STEPS


def test_frequency_above_the_rate_limit_is_refused_when_planned():
    pipeline = Pipeline.parse("lowpass=freq=30000")
    pipeline.plan(96000, 2)  # fine at 96 kHz
    with pytest.raises(ParameterError, match=r"0.49 x the sample rate .* at 44100 Hz"):
        pipeline.plan(44100, 2)


def test_a_rate_error_names_the_position_of_the_step():
    pipeline = Pipeline.parse("lowpass=freq=3000,resample=rate=8000,lowpass=freq=5000")
    with pytest.raises(ParameterError) as caught:
        pipeline.plan(44100, 2)
    assert caught.value.extra == {"step": "lowpass", "parameter": "freq", "position": 3}
    assert caught.value.message.startswith("Step 3 'lowpass'")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_parser_never_fails_other_than_with_a_parameter_error(text):
    try:
        Pipeline.parse(text)
    except ParameterError as error:
        assert error.message
        assert error.code == "invalid_pipeline"


json_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["step", "db", "freq", "order", "peak_db", "x"]),
            st.one_of(st.sampled_from(["gain", "highpass", "normalize", "lowpass"]), json_value),
        ),
        max_size=5,
    )
)
def test_json_parser_never_fails_other_than_with_a_parameter_error(entries):
    try:
        pipeline = Pipeline.parse(entries)
    except ParameterError as error:
        assert error.message
    else:
        assert len(pipeline.steps) == len(entries)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('[{"step": "gain", "db": ' + "[" * 500 + "]" * 500 + "}]", "not an array or object"),
        ('[{"step": "gain", "db": {"a": 1}}]', "not an array or object"),
        ('[{"step": "gain", "db": ' + "1" * 5000 + "}]", "finite number, got inf"),
        ('[{"step": "highpass", "freq": 80, "order": ' + "9" * 400 + "}]", "finite number"),
        ('[{"step": "gain", "db": -' + "1" * 300 + "}]", "between -60 and 40"),
        ("gain=db=" + "1" * 5000, "finite number, got '" + "1" * 40 + "...'"),
        ("gain=" + "x" * 100_000 + "=1", "unknown parameter '" + "x" * 40 + "...'"),
        ("gain=" + "x" * 100_000, "must be a number, got '" + "x" * 40 + "...'"),
        ("gain=db=1:" + "x" * 100_000, "option '" + "x" * 40 + "'... (100000 characters)"),
    ],
    ids=["100,000 deep", "500 deep", "object", "5,000 digits", "400 digits", "300 digits",
         "5,000 digit text", "long name", "long value", "long option"],
)  # fmt: skip
def test_hostile_pipelines_are_parameter_errors_with_short_messages(spec, words):
    with pytest.raises(ParameterError) as caught:
        Pipeline.parse(spec)
    assert words in caught.value.message
    assert len(caught.value.message) < 250
    assert len(str(caught.value.extra.get("parameter", ""))) <= 64


def test_plan_splits_stages_at_global_steps():
    stages = Pipeline.parse(
        "highpass=freq=80,normalize,gain=db=-1,normalize,lowpass=freq=9000"
    ).plan(44100, 2)
    assert [[step.name for step in stage.steps] for stage in stages] == [
        ["highpass"],
        ["normalize", "gain"],
        ["normalize", "lowpass"],
    ]
    assert [stage.boundary and stage.boundary.name for stage in stages] == [
        "normalize",
        "normalize",
        None,
    ]


def test_pre_roll_of_a_stage_adds_its_filters_settling_times():
    stage = Pipeline.parse("highpass=freq=20:order=4,lowpass=freq=100").plan(48000, 1)[0]
    highpass, lowpass = stage.steps
    assert highpass.pre_roll() > 0 and lowpass.pre_roll() > 0
    assert stage.pre_roll == highpass.pre_roll() + lowpass.pre_roll()
    # A lower cut-off rings longer, so it needs more pre-roll.
    slower = Pipeline.parse("highpass=freq=10:order=4").plan(48000, 1)[0]
    assert slower.pre_roll > highpass.pre_roll()


def test_whole_signal_call_matches_scipy():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.2, size=(20000, 2))
    y, rate = Pipeline.parse("highpass=freq=100:order=3,gain=db=6")(x, 16000)
    sos = signal.butter(3, 100, btype="highpass", fs=16000, output="sos")
    assert rate == 16000
    np.testing.assert_allclose(y, signal.sosfilt(sos, x, axis=0) * 10 ** (6 / 20), atol=1e-12)


@pytest.mark.parametrize(
    ("spec", "outcome"),
    [
        ("normalize=peak_db=0", nullcontext()),
        ("normalize=peak_db=0.1", pytest.raises(ParameterError)),
        ("gain=db=40", nullcontext()),
        ("gain=db=40.001", pytest.raises(ParameterError)),
        ("highpass=freq=10", nullcontext()),
        ("highpass=freq=9.99", pytest.raises(ParameterError)),
    ],
)
def test_range_edges(spec, outcome):
    with outcome:
        Pipeline.parse(spec)
