"""Train the built-in models: `python -m edgetts.embedded.train generator|draft|verifier`.

Deterministic (seeded; every batch is drawn from a generator seeded by its step), resumable (state is
checkpointed every `--save-every` steps under `--work`; rerunning the same command continues), and
sized to finish within an hour on one CPU thread. Weights land in `edgetts/embedded/<name>/`.

- generator: a Llama trained on fresh problems every batch (loss on the solution only), with a
  LayerSkip-style auxiliary loss at every intermediate layer (final norm + tied head on that layer's
  output), so its first K layers are a usable self-speculative drafter.
- draft: a smaller Llama on the same data, for speculative decoding.
- verifier: starts from the generator's weights and learns to answer ` yes`/` no` after
  `<prompt><solution>\\nCorrect?`, on the generator's own samples labelled by the checker.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path

from edgetts import arithmetic
from edgetts.embedded import MODELS_DIR, VERIFIER_SUFFIX, VERIFIER_WORDS

# Architecture per model: a table, not branches. The verifier copies the generator's shape.
ARCHS = {
    "generator": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2),
    "draft": dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
}
# Training recipe per model (lr: AdamW peak; steps of `batch` sequences).
RECIPES = {
    "generator": dict(steps=2600, batch=32, lr=3e-3, warmup=100, exit_weight=0.15),
    "draft": dict(steps=800, batch=32, lr=3e-3, warmup=100, exit_weight=0.0),
    "verifier": dict(steps=300, batch=32, lr=5e-4, warmup=50, exit_weight=0.0,
                     problems=600, samples=8),
}
LEVEL_WEIGHTS = [0.25, 0.25, 0.2, 0.15, 0.15]  # easy problems are short and teach the basics fastest
CURRICULUM = 300  # steps over which levels 2..5 are unlocked one by one
DECAY = 0.3  # fraction of steps spent cooling the learning rate down
SEED = 1234


def tokenizer_texts(n: int = 4000) -> list[str]:
    rng = random.Random("tokenizer")
    texts = []
    for i in range(n):
        p = arithmetic.training_problem(rng, arithmetic.LEVELS[i % 5])
        text = p.prompt + arithmetic.solve(p.expression, rng)
        texts.append(text + VERIFIER_SUFFIX + VERIFIER_WORDS[i % 2])
    return texts


def shared_tokenizer(work: Path) -> Path:
    """The one tokenizer of the family: byte-level BPE, every digit its own token (Qwen2 split)."""
    from edgetts.testing import train_tokenizer

    folder = work / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        train_tokenizer(folder, tokenizer_texts(), vocab_size=320, bos=False, chat_template=None)
    return folder


def build_model(name: str, tokenizer_dir: Path):
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    raw = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eos = raw.token_to_id("<|endoftext|>")
    config = LlamaConfig(vocab_size=raw.get_vocab_size(), max_position_embeddings=256, rope_theta=10000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos,
                         pad_token_id=eos, initializer_range=0.02, **ARCHS[name])
    torch.manual_seed(SEED)
    return LlamaForCausalLM(config)


# --- data --------------------------------------------------------------------------------------

def level_for(rng: random.Random, step: int) -> int:
    unlocked = min(5, 1 + int(5 * step / CURRICULUM))
    if unlocked < 5:
        return rng.randint(1, unlocked)
    return rng.choices(arithmetic.LEVELS, weights=LEVEL_WEIGHTS)[0]


def lm_batch(tok, step: int, batch: int, seed: int):
    """(ids, labels) for one step: fresh problems, random solution paths, loss on the solution only."""
    rng = random.Random(f"batch:{seed}:{step}")
    rows = []
    for _ in range(batch):
        prompt, completion = arithmetic.training_text(arithmetic.training_problem(rng, level_for(rng, step)), rng)
        p, c = tok.encode(prompt).ids, tok.encode(completion).ids + [tok.token_to_id("<|endoftext|>")]
        rows.append((p + c, [-100] * len(p) + c))
    return _pad(rows, tok.token_to_id("<|endoftext|>"))


def _pad(rows, pad_id):
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (i, l) in enumerate(rows):
        ids[r, : len(i)] = torch.tensor(i)
        labels[r, : len(l)] = torch.tensor(l)
    return ids, labels


# --- losses ------------------------------------------------------------------------------------

def lm_loss(model, ids, labels, exit_weight: float):
    """Next-token loss at the last layer plus LayerSkip-style losses at layers 1..L-1.

    Exit k's weight grows with depth (exit_weight * k / (L-1)): deep exits should agree closely,
    shallow ones only need to be a rough drafter.
    """
    import torch.nn.functional as F

    out = model(input_ids=ids, output_hidden_states=exit_weight > 0)
    target = labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), target)
    if exit_weight > 0:
        n = model.config.num_hidden_layers
        for k in range(1, n):
            logits = model.lm_head(model.model.norm(out.hidden_states[k]))
            exit_loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target)
            loss = loss + exit_weight * k / (n - 1) * exit_loss
    return loss


def verifier_loss(model, ids, labels, exit_weight: float = 0.0):
    """Cross-entropy of ` yes`/` no` at the last prompt position (labels hold the target id there)."""
    import torch.nn.functional as F

    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))


# --- the loop ----------------------------------------------------------------------------------

def train(name: str, work: Path, steps: int | None = None, save_every: int = 50, threads: int = 1) -> Path:
    import torch

    torch.set_num_threads(threads)
    recipe = dict(RECIPES[name], **({"steps": steps} if steps else {}))
    state_dir = work / name
    state_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = shared_tokenizer(work)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    model = initial_model(name, tokenizer_dir)
    batches = batch_source(name, tok, recipe, work)
    loss_fn = verifier_loss if name == "verifier" else lm_loss
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], betas=(0.9, 0.98), weight_decay=0.01)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start, seconds, log = _resume(state_dir, model, opt, ema)
    t0 = time.time() - seconds
    for step in range(start, recipe["steps"]):
        for group in opt.param_groups:
            group["lr"] = _lr(step, recipe)
        ids, labels = batches(step)
        loss = loss_fn(model, ids, labels, recipe["exit_weight"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        _update_ema(ema, model, step)
        log.append(round(loss.item(), 4))
        if (step + 1) % 25 == 0:
            print(f"{name} step {step + 1}/{recipe['steps']} loss {sum(log[-25:]) / 25:.4f} "
                  f"{time.time() - t0:.0f}s", flush=True)
        if (step + 1) % save_every == 0 or step + 1 == recipe["steps"]:
            _checkpoint(state_dir, model, opt, ema, step + 1, time.time() - t0, log)
    model.load_state_dict(ema)
    info = dict(recipe, name=name, seed=SEED, threads=threads, seconds=round(time.time() - t0),
                parameters=sum(p.numel() for p in model.parameters()), final_loss=sum(log[-50:]) / max(1, len(log[-50:])))
    return save(name, model, tokenizer_dir, info)


def initial_model(name: str, tokenizer_dir: Path):
    if name != "verifier":
        return build_model(name, tokenizer_dir)
    from transformers import LlamaForCausalLM

    generator = MODELS_DIR / "generator"
    if not (generator / "model.safetensors").is_file():
        raise SystemExit("train the generator first: python -m edgetts.embedded.train generator")
    return LlamaForCausalLM.from_pretrained(generator)


def batch_source(name: str, tok, recipe: dict, work: Path):
    if name != "verifier":
        return lambda step: lm_batch(tok, step, recipe["batch"], SEED)
    examples = verifier_examples(work, recipe)
    yes, no = (tok.encode(w).ids for w in VERIFIER_WORDS)
    assert len(yes) == len(no) == 1, "the verifier words must be single tokens"

    def batch(step: int):
        rng = random.Random(f"verifier:{SEED}:{step}")
        rows = []
        for text, label in rng.sample(examples, recipe["batch"]):
            ids = tok.encode(text + VERIFIER_SUFFIX).ids
            rows.append((ids + [(yes if label else no)[0]], [-100] * len(ids) + [(yes if label else no)[0]]))
        return _pad(rows, tok.token_to_id("<|endoftext|>"))

    return batch


def verifier_examples(work: Path, recipe: dict) -> list[tuple[str, bool]]:
    """The generator's samples on training problems, labelled by the checker (cached in work/)."""
    cache = work / "verifier-data.json"
    if cache.is_file():
        return [tuple(x) for x in json.loads(cache.read_text())]
    from edgetts.embedded.evaluate import load, sample

    model, tok = load("generator")
    rng = random.Random(f"verifier-data:{SEED}")
    problems = [arithmetic.training_problem(rng, rng.choices(arithmetic.LEVELS, weights=LEVEL_WEIGHTS)[0])
                for _ in range(recipe["problems"])]
    t0 = time.time()
    texts = sample(model, tok, [p.prompt for p in problems], n=recipe["samples"], temperature=0.8, seed=SEED)
    examples = [(p.prompt + t, arithmetic.check(t, p.answer)) for p, group in zip(problems, texts) for t in group]
    print(f"verifier data: {len(examples)} samples, {sum(l for _, l in examples) / len(examples):.1%} correct, "
          f"{time.time() - t0:.0f}s", flush=True)
    cache.write_text(json.dumps(examples))
    return examples


def _lr(step: int, recipe: dict) -> float:
    """Warm-up, constant, then a cosine cool-down over the last DECAY of the steps.

    Until the cool-down starts, the run does not depend on its total length, so a slow run can be
    resumed with a smaller --steps and still equal a fresh run of that length.
    """
    decay_start = int(recipe["steps"] * (1 - DECAY))
    if step < recipe["warmup"]:
        return recipe["lr"] * (step + 1) / recipe["warmup"]
    if step < decay_start:
        return recipe["lr"]
    progress = (step - decay_start) / max(1, recipe["steps"] - decay_start)
    return recipe["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _update_ema(ema: dict, model, step: int) -> None:
    import torch

    decay = min(0.99, (1 + step) / (10 + step))
    with torch.no_grad():
        for k, v in model.state_dict().items():
            ema[k].mul_(decay).add_(v, alpha=1 - decay)


def _checkpoint(state_dir: Path, model, opt, ema, step: int, seconds: float, log: list) -> None:
    import torch

    tmp = state_dir / "state.pt.tmp"
    torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), ema=ema, step=step, seconds=seconds, log=log), tmp)
    tmp.replace(state_dir / "state.pt")


def _resume(state_dir: Path, model, opt, ema):
    import torch

    path = state_dir / "state.pt"
    if not path.is_file():
        return 0, 0.0, []
    state = torch.load(path, weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    ema.update(state["ema"])
    print(f"resuming at step {state['step']}", flush=True)
    return state["step"], state["seconds"], state["log"]


def save(name: str, model, tokenizer_dir: Path, info: dict) -> Path:
    from transformers import GenerationConfig

    out = MODELS_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    eos = model.config.eos_token_id
    GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, do_sample=False,
                     max_new_tokens=160).save_pretrained(out)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / file, out / file)
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"saved {out} ({info['parameters'] / 1e6:.2f} M parameters, {info['seconds']}s)", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edgetts.embedded.train", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=["generator", "draft", "verifier"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgetts-train"), help="checkpoints and caches")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves the other cores free)")
    args = parser.parse_args(argv)
    train(args.name, args.work, steps=args.steps, threads=args.threads)


if __name__ == "__main__":
    main()
