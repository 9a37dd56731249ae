"""Train the built-in models: `python -m edgetts.embedded.train generator|draft|verifier`.

Deterministic (seeded; every batch is drawn from a generator seeded by its step), resumable (state is
checkpointed every `--save-every` steps under `--work`; rerunning the same command continues), and
sized to finish within an hour each on 2 CPU cores (`--threads 2`; the model card has the times).
Weights land in `edgetts/embedded/<name>/` as float16.

- generator: a Llama trained on fresh problems every batch (loss on the solution only), with a
  LayerSkip-style auxiliary loss at every intermediate layer (final norm + tied head on that layer's
  output), so its first K layers are a usable self-speculative drafter.
- draft: a smaller Llama on the same data, for speculative decoding.
- verifier: starts from the generator's weights and learns to answer ` yes`/` no` after
  `<prompt><solution>\\nCorrect?`, on the generator's own samples labelled by the checker (only
  problems with both right and wrong samples: see `contrastive`).

Speed (measured on the 2-core VM, the generator's step): eager attention with an additive block
mask 0.62 s against SDPA's 0.86 s, and `torch.compile` over fixed-shape batches 0.41 s (after a
one-time compile of ~70 s), so the hour buys 2.4x the problems it bought before (402k against 166k).
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
from edgetts.calibration import MIN_P, TEMPERATURE
from edgetts.embedded import MODELS_DIR, VERIFIER_SUFFIX, VERIFIER_WORDS

# Architecture per model: a table, not branches. The verifier copies the generator's shape.
ARCHS = {
    "generator": dict(hidden_size=256, intermediate_size=832, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2),
    "draft": dict(hidden_size=160, intermediate_size=480, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2),
}
# Training recipe per model (lr: AdamW peak; steps of `batch` sequences).
RECIPES = {
    "generator": dict(steps=6400, rows=20, lr=2e-3, warmup=100, exit_weight=0.15),
    "draft": dict(steps=1000, rows=20, lr=3e-3, warmup=100, exit_weight=0.0),
    "verifier": dict(steps=300, batch=64, lr=5e-4, warmup=50, exit_weight=0.0,
                     problems=2000, samples=8),
}
LEVEL_WEIGHTS = [0.25, 0.25, 0.2, 0.15, 0.15]  # easy problems are short and teach the basics fastest
PACK_WIDTH = 160  # tokens per packed training row (the longest training solution is ~130)
VERIFIER_WIDTH = 256  # the models' context: a sampled solution may run to the 160-token limit
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


def lm_batch(tok, step: int, rows: int, seed: int) -> dict:
    """One step's inputs: `rows` packed rows filled with fresh problems (random solution paths, loss on
    the solution only). A fixed shape every step lets `torch.compile` build the step once."""
    rng = random.Random(f"batch:{seed}:{step}")
    eos = tok.token_to_id("<|endoftext|>")

    def examples():
        while True:
            prompt, completion = arithmetic.training_text(arithmetic.training_problem(rng, level_for(rng, step)), rng)
            p, c = tok.encode(prompt).ids, tok.encode(completion).ids + [eos]
            yield p + c, [-100] * len(p) + c

    return pack(examples(), eos, rows=rows)


def pack(examples, pad_id: int, width: int = PACK_WIDTH, rows: int | None = None) -> dict:
    """Examples laid end to end in rows of `width` tokens, each attending only to itself.

    Half of a padded batch of these short, uneven problems would be padding; packing makes every
    position count. Each example keeps its own positions (0, 1, ...) and a block-diagonal causal mask,
    so the model computes exactly what it would for the example alone. With `rows`, exactly that many
    rows are filled first-fit from the (endless) `examples` until MISSES in a row find no room;
    without it, a list is packed first-fit decreasing into as many rows as it needs.
    """
    laid = _fill(examples, width, rows) if rows else _first_fit_decreasing(examples, width)
    return _tensors(laid, pad_id, width)


MISSES = 4  # examples that find no room before a fixed-size batch counts as full (they are dropped)


def _room(rows: list[list], ids: list[int], width: int) -> list | None:
    """The first row with room for `ids`, or None; an example wider than a row is an error."""
    if len(ids) > width:
        raise ValueError(f"an example of {len(ids)} tokens does not fit a packed row of {width}")
    return next((r for r in rows if sum(len(i) for i, _ in r) + len(ids) <= width), None)


def _first_fit_decreasing(examples, width: int) -> list[list]:
    rows: list[list] = []
    for ids, labels in sorted(examples, key=lambda e: -len(e[0])):
        row = _room(rows, ids, width)
        if row is None:
            rows.append(row := [])
        row.append((ids, labels))
    return rows


def _fill(examples, width: int, n_rows: int) -> list[list]:
    rows: list[list] = [[] for _ in range(n_rows)]
    misses = 0
    for ids, labels in examples:
        row = _room(rows, ids, width)
        if row is None:
            misses += 1
            if misses == MISSES:
                return rows
            continue
        misses = 0
        row.append((ids, labels))
    return rows


def _tensors(rows: list[list], pad_id: int, width: int) -> dict:
    import torch

    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding, attends only to padding
    for r, row in enumerate(rows):
        start = 0
        for n, (i, l) in enumerate(row):
            end = start + len(i)
            ids[r, start:end], labels[r, start:end] = torch.tensor(i), torch.tensor(l)
            positions[r, start:end], segment[r, start:end] = torch.arange(len(i)), n
            start = end
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal
    # Additive (0 / -inf), not boolean: transformers' eager attention adds the mask to the scores, so a
    # boolean one would add 0/1 and leak across examples; eager is what training uses (see `train`).
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    return dict(input_ids=ids, labels=labels, position_ids=positions, attention_mask=mask[:, None])


# --- losses ------------------------------------------------------------------------------------

def _forward(model, batch: dict, hidden_states: bool = False):
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                 attention_mask=batch["attention_mask"], output_hidden_states=hidden_states)


def lm_loss(model, batch: dict, exit_weight: float):
    """Next-token loss at the last layer plus LayerSkip-style losses at layers 1..L-1.

    Exit k's weight grows with depth (exit_weight * k / (L-1)): deep exits should agree closely,
    shallow ones only need to be a rough drafter.
    """
    import torch.nn.functional as F

    out = _forward(model, batch, hidden_states=exit_weight > 0)
    target = batch["labels"][:, 1:].reshape(-1)
    loss = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), target)
    if exit_weight > 0:
        n = model.config.num_hidden_layers
        for k in range(1, n):
            logits = model.lm_head(model.model.norm(out.hidden_states[k]))
            exit_loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target)
            loss = loss + exit_weight * k / (n - 1) * exit_loss
    return loss


def verifier_loss(model, batch: dict, exit_weight: float = 0.0):
    """Cross-entropy of ` yes`/` no` at the last prompt position (labels hold the target id there)."""
    import torch.nn.functional as F

    logits = _forward(model, batch).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1))


# --- the loop ----------------------------------------------------------------------------------

def train(name: str, work: Path, steps: int | None = None, save_every: int = 50, threads: int = 1,
          compile: bool = True) -> Path:
    import torch

    torch.set_num_threads(threads)
    recipe = dict(RECIPES[name], **({"steps": steps} if steps else {}))
    state_dir = work / name
    state_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = shared_tokenizer(work)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    model = initial_model(name, tokenizer_dir)
    # Eager attention and the compiled step: the timings are in the module docstring. The saved
    # config goes back to the default attention.
    model.config._attn_implementation = "eager"
    batches = batch_source(name, tok, recipe, work)
    loss_fn = verifier_loss if name == "verifier" else lm_loss
    if compile and name != "verifier":  # only the LM batches have a fixed shape
        loss_fn = torch.compile(loss_fn)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], betas=(0.9, 0.98), weight_decay=0.01)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start, seconds, log = _resume(state_dir, model, opt, ema)
    t0 = time.time() - seconds
    for step in range(start, recipe["steps"]):
        for group in opt.param_groups:
            group["lr"] = _lr(step, recipe)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # AMX/AVX-512 bf16 matmuls; weights stay fp32
            loss = loss_fn(model, batches(step), recipe["exit_weight"])
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
    model.config._attn_implementation = "sdpa"
    info = dict(recipe, name=name, seed=SEED, threads=threads, seconds=round(time.time() - t0),
                parameters=sum(p.numel() for p in model.parameters()), final_loss=sum(log[-50:]) / max(1, len(log[-50:])))
    return save(name, model, tokenizer_dir, info)


def initial_model(name: str, tokenizer_dir: Path):
    if name != "verifier":
        return build_model(name, tokenizer_dir)
    import torch
    from transformers import LlamaForCausalLM

    generator = MODELS_DIR / "generator"
    if not (generator / "model.safetensors").is_file():
        raise SystemExit("train the generator first: python -m edgetts.embedded.train generator")
    return LlamaForCausalLM.from_pretrained(generator, dtype=torch.float32)


def batch_source(name: str, tok, recipe: dict, work: Path):
    if name != "verifier":
        return lambda step: lm_batch(tok, step, recipe["rows"], SEED)
    examples = contrastive(verifier_examples(work, recipe))
    print(f"verifier training on {len(examples)} samples of problems with both right and wrong samples", flush=True)
    yes, no = (tok.encode(w).ids for w in VERIFIER_WORDS)
    assert len(yes) == len(no) == 1, "the verifier words must be single tokens"

    def batch(step: int):
        rng = random.Random(f"verifier:{SEED}:{step}")
        rows = []
        for text, label in rng.sample(examples, recipe["batch"]):
            ids = tok.encode(text + VERIFIER_SUFFIX).ids
            rows.append((ids + [(yes if label else no)[0]], [-100] * len(ids) + [(yes if label else no)[0]]))
        return pack(rows, tok.token_to_id("<|endoftext|>"), width=VERIFIER_WIDTH)

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
    # Drawn the way the controller's plans draw, so the verifier learns the mistakes it will judge.
    texts = sample(model, tok, [p.prompt for p in problems], n=recipe["samples"], temperature=TEMPERATURE,
                   min_p=MIN_P, seed=SEED, batch=256)
    examples = [(p.prompt + t, arithmetic.check(t, p.answer)) for p, group in zip(problems, texts) for t in group]
    print(f"verifier data: {len(examples)} samples, {sum(l for _, l in examples) / len(examples):.1%} correct, "
          f"{time.time() - t0:.0f}s", flush=True)
    cache.write_text(json.dumps(examples))
    return examples


def contrastive(examples: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Only the problems whose samples are both right and wrong.

    Where every sample is right (easy) or every one wrong (hard), the label says how hard the problem
    is, and a verifier trained on those learns difficulty: it separates problems, not the samples of
    one problem, and best-of-N needs the latter.
    """
    labels: dict[str, set] = {}
    for text, label in examples:
        labels.setdefault(text.split("?")[0], set()).add(label)
    return [(text, label) for text, label in examples if len(labels[text.split("?")[0]]) == 2]


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
    import torch
    from transformers import GenerationConfig

    out = MODELS_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    # float16 halves what ships (the three fit in 30 MB); every loader reads them back as float32.
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
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
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="run the step uncompiled (slower; for a machine without a C++ compiler)")
    args = parser.parse_args(argv)
    train(args.name, args.work, steps=args.steps, threads=args.threads, compile=args.compile)


if __name__ == "__main__":
    main()
