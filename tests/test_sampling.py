"""Sampling: each filter alone, the composed sampler, seeds, and argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from edgetts.errors import ConfigError
from edgetts.sampling import (Sampler, apply_min_p, apply_repetition_penalty, apply_temperature, apply_top_k,
                              apply_top_p, log_softmax, make_sampler, sample_seeds)
from edgetts.types import SamplingParams

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03]))


def kept(logits):
    return np.flatnonzero(np.isfinite(logits)).tolist()


def test_temperature_zero_is_argmax_and_reports_the_model_logprob():
    token, logprob = Sampler(SamplingParams(temperature=0))(LOGITS)
    assert token == 0
    assert logprob == pytest.approx(np.log(0.5))


def test_top_k_keeps_the_k_largest():
    assert kept(apply_top_k(LOGITS, 2)) == [0, 1]
    assert kept(apply_top_k(LOGITS, 0)) == [0, 1, 2, 3, 4]


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    assert kept(apply_top_p(LOGITS, 0.5)) == [0]
    assert kept(apply_top_p(LOGITS, 0.6)) == [0, 1]
    assert kept(apply_top_p(LOGITS, 0.9)) == [0, 1, 2]
    assert kept(apply_top_p(LOGITS, 0.01)) == [0]  # the top token always stays


def test_min_p_keeps_tokens_above_a_fraction_of_the_top():
    assert kept(apply_min_p(LOGITS, 0.35)) == [0, 1]  # 0.15 < 0.35 * 0.5
    assert kept(apply_min_p(LOGITS, 0.1)) == [0, 1, 2, 3]


def test_repetition_penalty_lowers_seen_tokens_only():
    logits = np.array([2.0, -1.0, 3.0])
    out = apply_repetition_penalty(logits, [0, 1, 0], 2.0)
    np.testing.assert_allclose(out, [1.0, -2.0, 3.0])
    assert Sampler(SamplingParams(repetition_penalty=2.0))(np.array([2.0, 1.5]), [0])[0] == 1


def test_temperature_flattens_and_sharpens():
    hot = np.exp(log_softmax(apply_temperature(LOGITS, 2.0)))
    cold = np.exp(log_softmax(apply_temperature(LOGITS, 0.5)))
    assert hot[0] < 0.5 < cold[0]


@pytest.mark.parametrize("call, name, value", [
    (lambda: apply_top_k(LOGITS, -1), "top_k", "-1"),
    (lambda: apply_top_p(LOGITS, 0.0), "top_p", "0.0"),
    (lambda: apply_min_p(LOGITS, 1.0), "min_p", "1.0"),
    (lambda: apply_temperature(LOGITS, -0.5), "temperature", "-0.5"),
    (lambda: apply_repetition_penalty(LOGITS, [1], 0), "repetition_penalty", "0"),
    (lambda: make_sampler(temperature=-1), "temperature", "-1"),
    (lambda: make_sampler(top_p=1.5), "top_p", "1.5"),
])
def test_bad_arguments_name_the_value(call, name, value):
    with pytest.raises(ConfigError, match=f"{name}={value}"):
        call()


def test_seeded_sampling_replays_and_seeds_differ():
    logits = np.zeros(50)
    a = Sampler(SamplingParams(temperature=1.0, seed=7))
    b = Sampler(SamplingParams(temperature=1.0, seed=7))
    c = Sampler(SamplingParams(temperature=1.0, seed=8))
    seq_a, seq_b, seq_c = ([s(logits)[0] for _ in range(20)] for s in (a, b, c))
    assert seq_a == seq_b != seq_c


def test_samples_follow_the_filtered_distribution():
    sampler = make_sampler(temperature=1.0, top_k=3, seed=0)
    counts = np.bincount([sampler(LOGITS)[0] for _ in range(6000)], minlength=5)
    expected = np.array([0.5, 0.25, 0.15, 0, 0]) / 0.9 * 6000
    assert counts[3:].sum() == 0
    np.testing.assert_allclose(counts[:3], expected[:3], rtol=0.08)


def test_probs_is_what_the_sampler_draws_from():
    sampler = make_sampler(temperature=0.7, top_p=0.8)
    probs = sampler.probs(LOGITS)
    assert probs.sum() == pytest.approx(1.0)
    assert (probs[2:] == 0).all() and probs[0] > 0.5
    assert Sampler(SamplingParams()).probs(LOGITS).tolist() == [1, 0, 0, 0, 0]


def test_sample_seeds_are_consecutive():
    assert sample_seeds(SamplingParams(seed=10), 3) == [10, 11, 12]
    assert sample_seeds(SamplingParams(), 2) == [None, None]
