"""The arithmetic task that edgetts' built-in models solve: problems, worked solutions, checkers, splits.

A problem is asked the way a person would, and the model answers with one operation per step:

    What is 37*48+15?
    37*40=1480, 37*8=296, 1480+296=1776, 15+1776=1791
    Answer: 1791

Stable names (the controller and the embedded models build on them):

- `LEVELS` (1..5) and `LEVEL_SPECS`: operands, digits, parentheses and value caps per level.
- `Problem(expression, answer, level)`: `.prompt` is `What is <expression>?`.
- `generate(level, seed) -> Problem`, `problems(n, level, seed) -> list[Problem]`.
- `evaluate(expression) -> int`, `prompt(expression) -> str`.
- `solve(expression, rng=None) -> str`: a worked solution (the completion after the prompt). With an
  `rng`, the path is drawn at random among valid ones: which ready operation goes first, operand
  order, whether a multi-digit product is split into partial products, and whether a sum or
  difference adds the tens and the units of its second number in two steps. Different paths
  decorrelate the errors of samples, which is what lets voting help.
- `parse_answer(text) -> int | None`: the first `Answer: <integer>` (extra text after it is ignored).
- `check(text, answer) -> bool`: the parsed answer equals `answer` exactly.
- `check_steps(text) -> StepCheck`: re-verifies every written `a op b = v` step, and that the answer
  equals the last step, without knowing the true answer.
- `follows_prompt(expression, text) -> bool`: every step is an operation the prompt allows at that
  point, its operands read right, whatever its arithmetic (catches misreads and dropped terms).
- `check_work(prompt, text) -> bool`: both checks at once, without the true answer; the built-in
  family's `steps` verifier.
- `split("dev" | "test") -> list[Problem]`: fixed held-out sets; `is_held_out(expression)`;
  `training_problem(rng, level)` never returns a held-out expression.
"""

from __future__ import annotations

import copy
import random
import re
import statistics
from dataclasses import dataclass, field
from functools import lru_cache

LEVELS = (1, 2, 3, 4, 5)
MAX_VALUE = 9999  # every intermediate value stays in [0, MAX_VALUE]


@dataclass(frozen=True)
class LevelSpec:
    operands: tuple[int, int]  # inclusive range of operand count
    digits: tuple[int, int]  # inclusive range of digits per operand
    max_product: int  # cap on every product, so multiplications stay learnable
    parentheses: bool  # whether a +/- group may sit under * or after -


LEVEL_SPECS = {
    1: LevelSpec((2, 2), (1, 2), 100, False),
    2: LevelSpec((3, 3), (1, 2), 500, False),
    3: LevelSpec((3, 4), (1, 2), 2000, True),
    4: LevelSpec((4, 4), (1, 3), 5000, True),
    5: LevelSpec((5, 5), (1, 3), 9999, True),
}
SPLIT_SEEDS = {"dev": 1_000_003, "test": 2_000_003}
SPLIT_PER_LEVEL = 40
# The calibration set: dev plus this many more per level. Fitting plans per difficulty bin on dev's
# 200 problems left about 65 in the hard bin, where two plans 0.1 point apart on dev (plain
# best-of-8 by the step checker, repaired majority@3) are 6 points apart in standard error.
CALIBRATION_EXTRA_PER_LEVEL = 160


@dataclass(frozen=True)
class Problem:
    expression: str
    answer: int
    level: int

    @property
    def prompt(self) -> str:
        return prompt(self.expression)


def prompt(expression: str) -> str:
    return f"What is {expression}?"


def expression_of(text: str) -> str | None:
    """The expression of a prompt in the task's format (`What is <expression>?`), else None."""
    question = re.fullmatch(r"\s*What is (.+)\?\s*", text)
    return question.group(1) if question else None


# --- expressions: parse into sums of signed terms and products of factors -----------------------

@dataclass
class Sum:
    terms: list  # [(sign, node)] with sign +1/-1; node is int, Sum or Prod


@dataclass
class Prod:
    factors: list  # [node]


TOKEN = re.compile(r"\s*(\d+|[-+*()])")


def parse(expression: str) -> Sum:
    """Parse `expression` (digits, + - *, parentheses) into a flat Sum/Prod tree."""
    tokens = TOKEN.findall(expression)
    if "".join(tokens) != re.sub(r"\s+", "", expression):
        raise ValueError(f"cannot parse {expression!r}: use digits, + - * and parentheses")
    node, rest = _sum(tokens)
    if rest:
        raise ValueError(f"cannot parse {expression!r}: unexpected {rest[0]!r}")
    return node


def _sum(tokens):
    node, tokens = _prod(tokens)
    terms = [(1, node)]
    while tokens and tokens[0] in "+-":
        sign = 1 if tokens[0] == "+" else -1
        node, tokens = _prod(tokens[1:])
        terms.append((sign, node))
    return Sum(terms), tokens


def _prod(tokens):
    node, tokens = _atom(tokens)
    factors = [node]
    while tokens and tokens[0] == "*":
        node, tokens = _atom(tokens[1:])
        factors.append(node)
    return (factors[0] if len(factors) == 1 else Prod(factors)), tokens


def _atom(tokens):
    if not tokens:
        raise ValueError("expression ends too early")
    if tokens[0] == "(":
        node, tokens = _sum(tokens[1:])
        if not tokens or tokens[0] != ")":
            raise ValueError("missing ')'")
        return _simplify(node), tokens[1:]
    if not tokens[0].isdigit():
        raise ValueError(f"expected a number, got {tokens[0]!r}")
    return int(tokens[0]), tokens[1:]


def _simplify(node):
    return node.terms[0][1] if isinstance(node, Sum) and len(node.terms) == 1 and node.terms[0][0] == 1 else node


def value(node) -> int:
    if isinstance(node, int):
        return node
    if isinstance(node, Prod):
        out = 1
        for f in node.factors:
            out *= value(f)
        return out
    return sum(sign * value(n) for sign, n in node.terms)


def evaluate(expression: str) -> int:
    return value(parse(expression))


def _in_range(node, spec: LevelSpec) -> bool:
    """All partial results of any solution path stay in [0, MAX_VALUE] and products under the cap."""
    if isinstance(node, int):
        return True
    if isinstance(node, Prod):
        total = value(node)
        return all(_in_range(f, spec) for f in node.factors) and total <= min(spec.max_product, MAX_VALUE)
    parts = [(s, value(n)) for s, n in node.terms]
    plus = sum(v for s, v in parts if s > 0)
    minus = sum(v for s, v in parts if s < 0)
    return (all(_in_range(n, spec) for _, n in node.terms) and plus - minus >= 0
            and plus <= MAX_VALUE and minus <= MAX_VALUE)


# --- problem generation ------------------------------------------------------------------------

def _random_tree(rng: random.Random, n: int, spec: LevelSpec) -> str:
    """A random binary expression over n operands, rendered with the parentheses it needs."""
    if n == 1:
        digits = rng.randint(*spec.digits)
        return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1)), "atom"
    k = rng.randint(1, n - 1)
    (left, lkind), (right, rkind) = _random_tree(rng, k, spec), _random_tree(rng, n - k, spec)
    op = rng.choice("+-*")
    if op == "*":
        left = f"({left})" if lkind == "sum" else left
        right = f"({right})" if rkind == "sum" else right
        return f"{left}*{right}", "prod"
    if op == "-" and rkind == "sum":
        right = f"({right})"
    return f"{left}{op}{right}", "sum"


def generate(level: int, seed: int | random.Random) -> Problem:
    """A random problem of `level` (1-5); the same seed always gives the same problem."""
    if level not in LEVEL_SPECS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    rng = seed if isinstance(seed, random.Random) else random.Random(f"{level}:{seed}")
    spec = LEVEL_SPECS[level]
    while True:
        expression, _ = _random_tree(rng, rng.randint(*spec.operands), spec)
        if "(" in expression and not spec.parentheses:
            continue
        tree = parse(expression)
        if _in_range(tree, spec):
            return Problem(expression, value(tree), level)


def problems(n: int, level: int, seed: int) -> list[Problem]:
    rng = random.Random(f"problems:{level}:{seed}")
    return [generate(level, rng) for _ in range(n)]


@lru_cache(maxsize=None)
def split(name: str) -> tuple[Problem, ...]:
    """The fixed sets: `dev` and `test` (held out, never trained on), 40 per level, and `calibration`.

    Unique within themselves, and test shares no expression with dev. `calibration` is dev plus
    CALIBRATION_EXTRA_PER_LEVEL more problems per level, ordered by level, never a test expression.
    Its extras are not held out of training: at levels 1-2, where there are few distinct problems,
    some were surely trained on, which matters little where the model solves nearly all of them.
    """
    if name == "calibration":
        return _calibration_split()
    if name not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted([*SPLIT_SEEDS, 'calibration'])}, got {name!r}")
    taken = {p.expression for p in split("dev")} if name == "test" else set()
    out = []
    for level in LEVELS:
        rng = random.Random(f"{name}:{level}:{SPLIT_SEEDS[name]}")
        chosen: list[Problem] = []
        while len(chosen) < SPLIT_PER_LEVEL:
            p = generate(level, rng)
            if p.expression not in taken:
                taken.add(p.expression)
                chosen.append(p)
        out += chosen
    return tuple(out)


def _calibration_split() -> tuple[Problem, ...]:
    taken = set(_held_out())
    out = []
    for level in LEVELS:
        out += [p for p in split("dev") if p.level == level]
        rng = random.Random(f"calibration:{level}")
        extra = 0
        while extra < CALIBRATION_EXTRA_PER_LEVEL:
            p = generate(level, rng)
            if p.expression not in taken:
                taken.add(p.expression)
                out.append(p)
                extra += 1
    return tuple(out)


@lru_cache(maxsize=1)
def _held_out() -> frozenset[str]:
    return frozenset(p.expression for name in SPLIT_SEEDS for p in split(name))


def is_held_out(expression: str) -> bool:
    return expression in _held_out()


def training_problem(rng: random.Random, level: int) -> Problem:
    """A fresh problem for training: never one of the dev or test expressions."""
    while True:
        p = generate(level, rng)
        if not is_held_out(p.expression):
            return p


# --- worked solutions --------------------------------------------------------------------------

def solve(expression: str, rng: random.Random | None = None) -> str:
    """The completion after the prompt: `\\n` steps joined by `, `, then `\\nAnswer: N`.

    Without `rng`, the canonical path (left to right, no splitting); with it, a random valid path.
    """
    tree = parse(expression)
    steps: list[str] = []
    while not isinstance(tree, int):
        tree = _reduce(tree, rng, steps)
    if not steps:
        steps.append(f"{tree}+0={tree}")
    return "\n" + ", ".join(steps) + f"\nAnswer: {tree}"


def worked_length(expression: str, paths: int = 8) -> float:
    """Mean length (characters) of `expression`'s worked solutions over `paths` fixed random paths.

    The generator learned to write these, so they say how long its answer runs: a two-digit
    product is split into two products and a sum, which no count of operators and digits sees. On
    the dev split it predicts the mean length of the generator's repaired samples within 7.8 %
    (median over problems; 10.6 % mean, 41 % worst) where that count gave 13.1 % (19.7 %, 167 %).
    """
    return statistics.fmean(len(solve(expression, random.Random(seed))) for seed in range(paths))


def _ready(node) -> list:
    """Sub-nodes where an operation can happen now: two plain numbers that may be combined."""
    if isinstance(node, int):
        return []
    if isinstance(node, Prod):
        children, ready = node.factors, sum(isinstance(c, int) for c in node.factors) >= 2
    else:
        children, ready = [n for _, n in node.terms], bool(_sum_pairs(node))
    return ([node] if ready else []) + [r for c in children for r in _ready(c)]


def _reduce(tree, rng, steps):
    ready = _ready(tree)
    node = rng.choice(ready) if rng else ready[-1]  # canonical: innermost group first
    if isinstance(node, Prod):
        _reduce_prod(node, rng, steps)
    else:
        _reduce_sum(node, rng, steps)
    return _collapse(tree)


def _pick_pair(items: list[int], rng) -> tuple[int, int]:
    if not rng:
        return items[0], items[1]
    i, j = rng.sample(items, 2)
    return i, j


def _reduce_prod(node: Prod, rng, steps):
    nums = [i for i, f in enumerate(node.factors) if isinstance(f, int)]
    i, j = _pick_pair(nums, rng)
    a, b = node.factors[i], node.factors[j]
    steps += _multiply(a, b, rng)
    node.factors[i] = a * b
    del node.factors[j]


def _multiply(a: int, b: int, rng) -> list[str]:
    """One product, written directly or (at random) split into tens and units of one operand."""
    if rng and rng.random() < 0.5:
        a, b = b, a
    splittable = [k for k, x in enumerate((a, b)) if x >= 10 and x % 10]
    if not rng or not splittable or rng.random() < 0.5:
        return [f"{a}*{b}={a * b}"]
    k = rng.choice(splittable)
    x, y = (a, b) if k == 0 else (b, a)
    high, low = x - x % 10, x % 10
    first, second = (f"{y}*{high}={y * high}", f"{y}*{low}={y * low}")
    if rng.random() < 0.5:
        first, second = (f"{high}*{y}={y * high}", f"{low}*{y}={y * low}")
    total = f"{y * high}+{y * low}={a * b}" if rng.random() < 0.5 else f"{y * low}+{y * high}={a * b}"
    return [first, second, total]


def _reduce_sum(node: Sum, rng, steps):
    """Combine two numeric terms; signs decide whether it is a+b, a-b, or (for two minus terms) b+c."""
    pairs = _sum_pairs(node)
    i, j = rng.choice(pairs) if rng else pairs[0]
    (si, a), (sj, b) = node.terms[i], node.terms[j]
    if si == sj:  # a+b, or -a-b = -(a+b)
        x, y = (b, a) if rng and rng.random() < 0.5 else (a, b)
        steps += _add(x, "+", y, rng)
        result = (si, a + b)
    else:
        big, small = (a, b) if si > 0 else (b, a)
        steps += _add(big, "-", small, rng)
        result = (1, big - small)
    node.terms[i] = result
    del node.terms[j]


def _add(x: int, op: str, y: int, rng) -> list[str]:
    """x+y or x-y, written directly or (at random) in two steps: the tens-and-above of y, then its units.

    Each of the two steps has no carry or borrow past the units, which a small model gets right far
    more often than a carrying sum (a 1 M model: 40 % greedy against 24.5 % with the same training);
    and like split products, it gives samples another way to differ.
    """
    total = x + y if op == "+" else x - y
    if not rng or y < 10 or not y % 10 or rng.random() < 0.5:
        return [f"{x}{op}{y}={total}"]
    high, low = y - y % 10, y % 10
    middle = x + high if op == "+" else x - high
    return [f"{x}{op}{high}={middle}", f"{middle}{op}{low}={total}"]


def _sum_pairs(node: Sum) -> list[tuple[int, int]]:
    nums = [i for i, (_, n) in enumerate(node.terms) if isinstance(n, int)]
    return [(i, j) for i in nums for j in nums if i < j and _combinable(node.terms[i], node.terms[j])]


def _combinable(t1, t2) -> bool:
    (s1, a), (s2, b) = t1, t2
    return s1 == s2 or (a >= b if s1 > 0 else b >= a)


def _collapse(node):
    """Replace finished groups (one positive term, or one factor) by their contents."""
    if isinstance(node, int):
        return node
    if isinstance(node, Prod):
        node.factors = [_collapse(f) for f in node.factors]
        return node.factors[0] if len(node.factors) == 1 else node
    node.terms = [(s, _collapse(n)) for s, n in node.terms]
    if len(node.terms) == 1 and node.terms[0][0] == 1:
        return node.terms[0][1]
    return node


# --- checking ----------------------------------------------------------------------------------

ANSWER = re.compile(r"Answer:\s*(-?\d+)")
STEP = re.compile(r"(-?\d+)\s*([-+*×x])\s*(-?\d+)\s*=\s*(-?\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
       "×": lambda a, b: a * b, "x": lambda a, b: a * b}


def parse_answer(text: str) -> int | None:
    """The integer on the first `Answer:` line; anything after it is ignored."""
    match = ANSWER.search(text)
    return int(match.group(1)) if match else None


def check(text: str, answer: int) -> bool:
    return parse_answer(text) == answer


@dataclass
class StepCheck:
    steps: int
    wrong: list[str] = field(default_factory=list)  # steps whose arithmetic is false
    answer: int | None = None
    answer_matches_last: bool = False

    @property
    def ok(self) -> bool:
        """Every step is true and the answer is the last step's result."""
        return self.steps > 0 and not self.wrong and self.answer_matches_last


FINISHED_STEP = re.compile(STEP.pattern + r"(?=[,\n])")  # a step the model has moved on from


def first_wrong_step(text: str) -> int | None:
    """Where the first finished step with false arithmetic starts in a partial solution, or None.

    The step checker during generation (`sample_n(repair=...)`): a step counts once the model has
    written what follows it, so a number still being written is never judged.
    """
    for match in FINISHED_STEP.finditer(text):
        a, op, b, value = match.groups()
        if OPS[op](int(a), int(b)) != int(value):
            return match.start()
    return None


def _written_steps(text: str) -> list[tuple[str, str, str, str]]:
    """Every `a op b = v` written before the answer line, as strings."""
    return STEP.findall(text.split("Answer:")[0])


def check_steps(text: str) -> StepCheck:
    """Re-verify each written `a op b = v` before the answer, without knowing the true answer."""
    answer = parse_answer(text)
    found = _written_steps(text)
    wrong = [f"{a}{op}{b}={v}" for a, op, b, v in found if OPS[op](int(a), int(b)) != int(v)]
    last = int(found[-1][3]) if found else None
    return StepCheck(len(found), wrong, answer, answer is not None and answer == last)


def follows_prompt(expression: str, text: str, max_states: int = 1_000) -> bool:
    """Whether each written step is an operation `expression` allows at that point, taking each
    written result as given, and the answer is what those steps leave.

    An operand must be a number the prompt or an earlier step left ready to combine, and steps may
    be written any of the ways `solve` writes them (either operand order, split products and sums).
    This sees what `check_steps` cannot: a misread operand or a dropped term. Most of the
    generator's wrong samples that are sure of their arithmetic fail here (the model card). The
    search gives up and passes the text after `max_states` states or past Python's recursion limit
    (expressions far beyond the task's five operands): it cannot tell, so it does not reject.
    """
    steps = [(int(a), "*" if op in "×x" else op, int(b), int(v)) for a, op, b, v in _written_steps(text)]
    answer, seen = parse_answer(text), set()

    def follows(tree, k: int) -> bool:
        if isinstance(tree, int):
            return k == len(steps) and tree == answer
        state = (repr(tree), k)
        if state in seen:  # reached before by another order of the same operations
            return False
        seen.add(state)
        if len(seen) > max_states:
            raise _SearchTooLarge
        return any(follows(after, k + used) for used, after in _written_moves(tree, steps[k:]))

    try:
        return bool(steps) and follows(parse(expression), 0)
    except (_SearchTooLarge, RecursionError):
        return True


class _SearchTooLarge(Exception):
    pass


def check_work(prompt_text: str, text: str) -> bool:
    """Every step true and the answer its last result (`check_steps`) and, when the prompt is in
    the task's format, every step reads the prompt right (`follows_prompt`).

    The built-in family's `steps` verifier. Reading the prompt is what the arithmetic check alone
    misses: on the test split's samples a vote among those passing both is right 87.2 % at 16
    samples, against 82.2 % for the arithmetic check alone.
    """
    if not check_steps(text).ok:
        return False
    expression = expression_of(prompt_text)
    try:
        return expression is None or follows_prompt(expression, text)
    except ValueError:  # not an expression of this task: judge the arithmetic only
        return True


def _written_moves(tree, steps: list[tuple]):
    """(steps used, tree after) for each operation allowed now that `steps` begins with."""
    for k, node in enumerate(_ready(tree)):
        if isinstance(node, Prod):
            nums = [i for i, f in enumerate(node.factors) if isinstance(f, int)]
            pairs = [(i, j) for i in nums for j in nums if i < j]
            written = [(i, j, used, value) for i, j in pairs
                       for used, value in _written_products(node.factors[i], node.factors[j], steps)]
        else:
            written = [(i, j, used, value) for i, j in _sum_pairs(node)
                       for used, value in _written_sums(node.terms[i], node.terms[j], steps)]
        for i, j, used, value in written:
            after = copy.deepcopy(tree)
            target = _ready(after)[k]  # the same node in the copy: _ready walks both alike
            if isinstance(target, Prod):
                target.factors[i] = value
                del target.factors[j]
            else:
                target.terms[i] = value
                del target.terms[j]
            yield used, _collapse(after)


def _written_products(a: int, b: int, steps: list[tuple]):
    """(steps used, written result) for each way `steps` begins with a*b, as `_multiply` writes it."""
    if steps and steps[0][1] == "*" and sorted((steps[0][0], steps[0][2])) == sorted((a, b)):
        yield 1, steps[0][3]
    for x, y in ((a, b), (b, a)):
        if x >= 10 and x % 10 and len(steps) >= 3:
            (p, po, q, high), (r, ro, s, low), (t, to, u, total) = steps[:3]
            if (po == ro == "*" and to == "+" and sorted((p, q)) == sorted((y, x - x % 10))
                    and sorted((r, s)) == sorted((y, x % 10)) and sorted((t, u)) == sorted((high, low))):
                yield 3, total


def _written_sums(first: tuple, second: tuple, steps: list[tuple]):
    """(steps used, written signed term) for each way `steps` begins with combining two terms."""
    (s1, a), (s2, b) = first, second
    if s1 == s2:
        ways, sign = [(a, "+", b), (b, "+", a)], s1
    else:
        ways, sign = [(a, "-", b) if s1 > 0 else (b, "-", a)], 1
    for x, op, y in ways:
        if steps and steps[0][:3] == (x, op, y):
            yield 1, (sign, steps[0][3])
        if y >= 10 and y % 10 and len(steps) >= 2 and steps[0][:3] == (x, op, y - y % 10) \
                and steps[1][:3] == (steps[0][3], op, y % 10):
            yield 2, (sign, steps[1][3])


def training_text(problem: Problem, rng: random.Random | None = None) -> tuple[str, str]:
    """(prompt, completion) for training: the model learns the completion only."""
    return problem.prompt, solve(problem.expression, rng)
