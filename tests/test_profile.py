from __future__ import annotations

import math
import tomllib

import pytest
from tts_helpers import SlowEngine, answering_script

from edgetts.errors import ConfigError
from edgetts.profile import (
    DeviceProfile, cache_dir, dumps, from_toml_dict, load_profile, measure_profile, profile_path,
    reference_profiles, save_profile, to_toml_dict,
)


def make_profile(**overrides) -> DeviceProfile:
    fields = dict(name="t", source="measured", model="m", runtime="fake", device="cpu", prefill_fixed=0.001,
                  prefill_per_token=0.0001, batch=[1, 2, 4, 8], step_seconds=[0.01, 0.012, 0.02, 0.04])
    return DeviceProfile(**{**fields, **overrides})


@pytest.fixture(scope="module")
def measured():
    engine = SlowEngine(delay=0.01, script=answering_script(), n_seq_max=17)
    return measure_profile(engine, name="slow", model="fake", steps=3, repeats=1, load_seconds=0.5)


def test_measure_profile_times_prefill_and_every_batch_size(measured):
    assert measured.batch == [1, 2, 4, 8, 16] and measured.source == "measured"
    # The slowed engine sleeps 10 ms * (1 + 0.25 (n - 1)) per step: the sleep is a floor, and a busy
    # machine only adds to it, so check the floor and the growth with batch size (4.75x noise-free).
    assert measured.step_seconds[0] >= 0.01
    assert measured.step_seconds[-1] > 2 * measured.step_seconds[0]
    assert measured.prefill_s(64) > 0 and measured.load_seconds == 0.5


def test_measure_profile_skips_batches_the_engine_cannot_hold():
    engine = SlowEngine(delay=0.0, script=answering_script(), n_seq_max=5)
    profile = measure_profile(engine, name="small", model="fake", steps=2, repeats=1)
    assert profile.batch == [1, 2, 4]


def test_profile_round_trips_through_toml(measured, tmp_path):
    path = save_profile(measured, tmp_path / "p.toml")
    again = load_profile(path)
    assert again.batch == measured.batch
    assert again.step_seconds == pytest.approx(measured.step_seconds, rel=1e-5)
    assert again.prefill_per_token == pytest.approx(measured.prefill_per_token, rel=1e-5)
    assert again.measured_at == measured.measured_at


def edited(mutate) -> dict:
    doc = tomllib.loads(dumps(to_toml_dict(make_profile())))
    mutate(doc)
    return doc


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["decode"].update(step_secnds=d["decode"].pop("step_seconds")),
     "unknown field decode.step_secnds; did you mean decode.step_seconds?"),
    (lambda d: d.update(decod=d.pop("decode")), "unknown section decod; did you mean decode?"),
    (lambda d: d["prefill"].pop("seconds_per_token"), "missing field prefill.seconds_per_token"),
    (lambda d: d["prefill"].update(seconds_fixed="fast"), "prefill.seconds_fixed must be float"),
    (lambda d: d["profile"].update(source="guess"), "profile.source = 'guess'"),
    (lambda d: d["decode"].update(batch=[1, 2]), "same length"),
    (lambda d: d["profile"].update(schema=9), "schema = 9"),
])
def test_hand_edit_mistakes_name_the_field(mutate, message):
    with pytest.raises(ConfigError) as info:
        from_toml_dict(edited(mutate), origin="my.toml")
    assert message in str(info.value) and "my.toml" in str(info.value)


def test_invalid_toml_says_how_to_fix(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[decode\nbatch = [1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profile(path)
    with pytest.raises(ConfigError, match="edgetts profile"):
        load_profile(tmp_path / "missing.toml")


def test_step_time_interpolates_between_and_extrapolates_beyond_the_table():
    p = make_profile()
    assert p.step_s(1) == pytest.approx(0.01)
    assert p.step_s(3) == pytest.approx(0.016)
    assert p.step_s(16) == pytest.approx(0.04 + 0.02 / 4 * 8)
    assert p.step_s(0.5) == pytest.approx(0.01)


def test_online_update_is_a_moving_average_of_the_log_ratio():
    p = make_profile()
    for _ in range(12):
        p.observe("decode", p.step_s(1), 2 * 0.01)  # the device became twice as slow
    assert p.step_s(1) == pytest.approx(0.02, rel=0.05)
    assert p.prefill_s(10) == pytest.approx(0.002)  # other components are untouched
    g = p.log_ratio["decode"]
    p.observe("decode", p.step_s(1), p.step_s(1))
    assert p.log_ratio["decode"] == pytest.approx(g)
    with pytest.raises(ConfigError, match="valid: prefill, decode, verifier"):
        p.observe("decoder", 1, 1)


def test_online_state_is_saved_with_the_profile(tmp_path):
    p = make_profile()
    p.observe("verifier", 1.0, math.e)
    again = load_profile(save_profile(p, tmp_path / "p.toml"))
    assert again.log_ratio["verifier"] == pytest.approx(0.25) and again.observations == 1


def test_shipped_reference_profiles_validate_and_are_labelled():
    shipped = reference_profiles()
    assert shipped, "profiles/ ships at least one reference profile"
    for name, profile in shipped.items():
        assert profile.source in ("measured", "estimate"), name
        assert profile.note, f"{name}: say where the numbers come from"


def test_cache_dir_follows_edgetts_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGETTS_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    assert profile_path("embedded-torch-cpu") == tmp_path / "profiles" / "embedded-torch-cpu.toml"


def test_decode_corrections_are_kept_per_batch_size(tmp_path):
    p = make_profile()
    for _ in range(20):
        p.observe("decode", p.step_s(4), 2 * 0.02, batch=4)  # batches of 4 became twice as slow
    assert p.step_s(4) == pytest.approx(0.04, rel=0.05)
    assert p.step_s(1) == pytest.approx(0.01)  # smaller batches keep their own measurement
    assert p.step_s(8) == pytest.approx(2 * 0.04, rel=0.05)  # larger ones, never seen, slow alike
    assert 0.012 < p.step_s(3) < 0.03 * 1.05
    again = load_profile(save_profile(p, tmp_path / "p.toml"))
    assert again.step_s(4) == pytest.approx(p.step_s(4), rel=1e-4)


def test_the_verifier_is_timed_on_candidates_that_part_after_the_prompt():
    # identical candidates share every token, so a verifier that scores only what they do not share
    # would be timed on nothing per candidate (the embedded verifier read 0.2 ms instead of 18 ms)
    from edgetts.profile import _distinct

    candidates = _distinct("\n37*40=1480\nAnswer: 1480", 8)
    assert len(set(candidates)) == 8 and {len(c) for c in candidates} == {len(candidates[0])}
    assert all(c.startswith("\n") and c[2:] == candidates[0][2:] for c in candidates)
    assert len(set(_distinct("no digits here", 3))) == 3

    scored = []

    class Recording:  # a verifier that remembers what it was timed on
        def score(self, prompt, texts):
            scored.append(list(texts))
            return [0.5] * len(texts)

    engine = SlowEngine(delay=0.0, script=answering_script(), n_seq_max=17)
    measure_profile(engine, name="v", model="fake", steps=2, repeats=1, verifier=Recording())
    assert max(len(set(texts)) for texts in scored) == 8
