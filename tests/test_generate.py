"""Generation: streaming, stop conditions, the context guard, chat templates and `sample_n`."""

from __future__ import annotations

import time

import numpy as np
import pytest
from tts_helpers import one_step_script

from edgetts.errors import ConfigError, ContextOverflowError
from edgetts.generate import generate, prompt_tokens, sample_n, stream_generate
from edgetts.testing import FakeEngine
from edgetts.types import SamplingParams

EOS = 257


def scripted(text: str, then_eos: bool = True):
    """A FakeEngine script that writes `text` after any prompt, then EOS (or repeats the last byte)."""
    target = list(text.encode())

    def script(prefix):
        logits = np.full(258, -10.0, dtype=np.float32)
        done = len(prefix) - script.prompt_len
        nxt = target[done] if 0 <= done < len(target) else (EOS if then_eos else target[-1])
        logits[nxt] = 10.0
        return logits

    return script


def fake_writing(text: str, prompt: str = "hi", then_eos: bool = True, **options):
    script = scripted(text, then_eos)
    engine = FakeEngine(script=script, **options)
    script.prompt_len = len(engine.tokenizer.encode(prompt))
    return engine


def test_generate_stops_at_eos_without_showing_it():
    r = generate(fake_writing("hello"), "hi", max_tokens=50)
    assert r.text == "hello" and r.finish_reason == "stop"
    assert r.tokens == list(b"hello") and len(r.logprobs) == 5
    assert r.prompt_tokens == 3 and r.tokens_per_s > 0


def test_generate_stops_at_max_tokens():
    r = generate(fake_writing("hello world"), "hi", max_tokens=4)
    assert r.text == "hell" and r.finish_reason == "length" and len(r.tokens) == 4


def test_stop_string_cuts_text_and_tokens_even_across_tokens():
    r = generate(fake_writing("x = 1\n\ny = 2"), "hi", max_tokens=50, stop=["\n\n"])
    assert r.text == "x = 1" and r.finish_reason == "stop"
    assert bytes(r.tokens).decode().startswith("x = 1")
    assert len(r.tokens) <= len("x = 1\n")


def test_streamed_text_adds_up_and_never_shows_a_stop_prefix():
    pieces = [resp.text for resp in stream_generate(fake_writing("ab\nc\n\nd"), "hi", stop=["\n\n"])]
    assert "".join(pieces) == "ab\nc"
    shown = ""
    for piece in pieces:
        shown += piece
        assert "\n\n" not in shown


def test_stream_reports_logprobs_and_finish_on_the_last_response():
    responses = list(stream_generate(fake_writing("ok"), "hi"))
    assert [r.finish_reason for r in responses] == [None, None, "stop"]
    assert all(r.logprob <= 0 for r in responses)
    assert responses[-1].generation_tokens == 2


def test_context_guard_fails_clearly_and_caps_generation():
    engine = fake_writing("abcdefgh", then_eos=False, n_ctx=8)
    with pytest.raises(ContextOverflowError, match="context holds 8"):
        generate(engine, "a long prompt", max_tokens=5)
    r = generate(engine, "hi", max_tokens=100)  # 3 prompt tokens: 5 positions left
    assert r.finish_reason == "length" and len(r.tokens) == 5


def test_bad_max_tokens_is_refused():
    with pytest.raises(ConfigError, match="max_tokens=0"):
        generate(FakeEngine(), "hi", max_tokens=0)


def test_chat_template_is_applied_when_the_model_has_one(tiny_model):
    from edgetts.tokenizer import HFTokenizer

    tok = HFTokenizer.from_dir(tiny_model("qwen2"))
    chat = prompt_tokens(tok, "What is 2+2?")
    raw = prompt_tokens(tok, "What is 2+2?", chat=False)
    assert tok.decode(chat, skip_special=False).startswith("<|im_start|>user\nWhat is 2+2?<|im_end|>")
    assert tok.decode(raw, skip_special=False) == "What is 2+2?"
    assert prompt_tokens(FakeEngine().tokenizer, "hi") == [256, 104, 105]  # no template: plain encode


def test_sequence_is_released_after_generation():
    engine = FakeEngine()
    generate(engine, "hi", max_tokens=3)
    assert engine.sequences() == []


# --- sample_n ---------------------------------------------------------------------------

def test_sample_n_equals_independent_generations_with_the_same_seeds():
    engine = FakeEngine()
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=123)
    prompt = engine.tokenizer.encode("What is 3*4?")
    batch = sample_n(engine, prompt, 4, params, max_tokens=12)
    for i, completion in enumerate(batch):
        alone = generate(engine, prompt, SamplingParams(temperature=0.8, top_p=0.95, seed=123 + i), max_tokens=12)
        assert completion.tokens == alone.tokens
        np.testing.assert_allclose(completion.logprobs, alone.logprobs, rtol=1e-6)
    assert len({tuple(c.tokens) for c in batch}) > 1


def test_sample_n_on_torch_equals_independent_generations(tiny_model):
    from edgetts.runtimes.torch import TorchEngine

    engine = TorchEngine(tiny_model("llama"), n_seq_max=4, n_threads=1)
    params = SamplingParams(temperature=1.0, seed=5)
    prompt = engine.tokenizer.encode("What is 37*48+15?")
    batch = sample_n(engine, prompt, 3, params, max_tokens=8)
    for i, completion in enumerate(batch):
        alone = generate(engine, prompt, SamplingParams(temperature=1.0, seed=5 + i), max_tokens=8)
        assert completion.tokens == alone.tokens
        np.testing.assert_allclose(completion.logprobs, alone.logprobs, atol=1e-4)


def test_sample_n_prefills_once_forks_and_decodes_as_one_batch():
    engine = FakeEngine()
    prompt = engine.tokenizer.encode("shared prompt")
    sample_n(engine, prompt, 3, SamplingParams(temperature=1.0, seed=0), max_tokens=4)
    evals = [c for c in engine.calls if c[0] == "eval_batch"]
    assert evals[0][1] == {0: prompt}  # the prompt is evaluated once
    assert [c for c in engine.calls if c[0] == "fork"] == [("fork", 0, 1), ("fork", 0, 2)]
    assert all(sorted(c[1]) == [0, 1, 2] and all(len(t) == 1 for t in c[1].values()) for c in evals[1:])
    assert engine.sequences() == []


def test_sample_n_stops_each_sequence_on_its_own():
    def script(prefix):  # after the prompt, the first generated byte decides how long a sample runs
        logits = np.full(258, -30.0, dtype=np.float32)
        generated = prefix[3:]
        if not generated:
            logits[[97, 98]] = 0.0  # 'a' or 'b', equally likely
        elif len(generated) >= (2 if generated[0] == 97 else 6):
            logits[EOS] = 30.0
        else:
            logits[120] = 30.0
        return logits

    engine = FakeEngine(script=script)
    out = sample_n(engine, engine.tokenizer.encode("hi"), 8, SamplingParams(temperature=1.0, seed=1), max_tokens=20)
    lengths = {c.text[0]: len(c.tokens) for c in out}
    assert lengths == {"a": 2, "b": 6} and all(c.finish_reason == "stop" for c in out)


def test_sample_n_deadline_ends_unfinished_samples():
    out = sample_n(FakeEngine(), [256, 1, 2], 3, SamplingParams(temperature=1.0), max_tokens=50,
                   deadline=time.monotonic() - 1)
    assert all(c.finish_reason == "deadline" and len(c.tokens) == 1 for c in out)


def test_sample_n_refuses_more_samples_than_sequences():
    with pytest.raises(ConfigError, match="n=5"):
        sample_n(FakeEngine(n_seq_max=4), [1, 2], 5, SamplingParams(), max_tokens=3)


# --- edgetts run ----------------------------------------------------------------------------

def _cli(*args):
    from typer.testing import CliRunner

    from edgetts.cli import app

    return CliRunner().invoke(app, list(args))


def test_run_cli_json_has_text_tokens_latency_and_stats(tiny_model):
    import json

    out = _cli("run", "def add(a, b):", "--model", str(tiny_model("qwen2")), "--draft", "ngram",
               "--max-tokens", "12", "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert {"text", "tokens", "latency_s", "stats"} <= set(result)
    assert len(result["tokens"]) == result["stats"]["generated_tokens"] == 12
    assert result["stats"]["drafter"] == "ngram" and "acceptance_rate" in result["stats"]


def test_run_cli_streams_text_and_prints_stats(tiny_model):
    from edgetts.runner import run

    model = tiny_model("qwen2")
    pieces = []
    result = run("hi", model, max_tokens=6, on_text=pieces.append)
    assert "".join(pieces) == result["text"]
    out = _cli("run", "hi", "--model", str(model), "--max-tokens", "6", "--stats")
    assert out.exit_code == 0 and result["text"] in out.stdout
    assert "tok/s" in out.stderr


def test_run_cli_n_samples_share_one_prompt(tiny_model):
    import json

    out = _cli("run", "hi", "--model", str(tiny_model("qwen2")), "--n", "3", "--temperature", "1",
               "--seed", "4", "--max-tokens", "5", "--json")
    assert out.exit_code == 0, out.output
    samples = json.loads(out.stdout)["samples"]
    assert len(samples) == 3 and len({tuple(s["tokens"]) for s in samples}) > 1


def test_run_refuses_draft_with_several_samples(tiny_model):
    from edgetts.runner import run

    with pytest.raises(ConfigError, match="--draft"):
        run("hi", tiny_model("qwen2"), draft="ngram", n=2)


def test_incremental_detokenization_equals_decoding_everything(tiny_model):
    from edgetts.generate import TextTracker
    from edgetts.tokenizer import HFTokenizer

    tok = HFTokenizer.from_dir(tiny_model("llama"))
    ids = tok.encode("Zürich 日本語 🚀 What is 37*48+15? " * 8, add_special=False)
    rng = np.random.default_rng(0)
    ids += rng.integers(0, tok.vocab_size, 200).tolist()  # random ids split multi-byte characters too
    tracker, shown = TextTracker(tok), ""
    for token in ids:
        if token in tok.eos_ids:
            continue
        shown += tracker.add(token, 0.0)
    assert tracker.text == tok.decode(tracker.tokens)
    assert tok.decode(tracker.tokens).startswith(shown)


# --- step repair ------------------------------------------------------------------------

def test_step_repair_rewinds_a_wrong_step_and_draws_it_again():
    from edgetts.arithmetic import first_wrong_step

    prompt = FakeEngine().tokenizer.encode("hi")
    engine = FakeEngine(script=one_step_script(len(prompt)))
    params = SamplingParams(temperature=1.0, seed=3)
    plain = sample_n(engine, prompt, 8, params, max_tokens=20)
    repaired = sample_n(engine, prompt, 8, params, max_tokens=20, repair=first_wrong_step)
    assert {c.text for c in plain} == {"1+1=2,", "1+1=3,"}
    # the engine's cache was cut back with the text: a stale token would have derailed the script
    assert all(c.text == "1+1=2," and c.finish_reason == "stop" for c in repaired)
    assert any(c.rewound >= 6 for c in repaired) and all(c.rewound % 6 == 0 for c in repaired)
    assert all(c.decode_steps == len(c.tokens) + c.rewound for c in repaired)
    assert engine.sequences() == []


def test_step_repair_gives_up_after_its_retries():
    prompt = FakeEngine().tokenizer.encode("hi")
    engine = FakeEngine(script=one_step_script(len(prompt)))
    always_wrong = lambda text: 0 if text.endswith(",") else None  # noqa: E731
    out = sample_n(engine, prompt, 2, SamplingParams(temperature=1.0, seed=0), max_tokens=20, repair=always_wrong,
                   retries=3)
    assert all(c.rewound == 3 * 6 and c.text.endswith(",") and c.finish_reason == "stop" for c in out)
