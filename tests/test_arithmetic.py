"""The arithmetic task: problems, worked solutions, checkers and held-out splits."""

from __future__ import annotations

import random
import re

import pytest

from edgetts import arithmetic as A


def test_same_seed_same_problem_and_levels_validated():
    assert A.generate(3, 42) == A.generate(3, 42)
    assert A.generate(3, 42) != A.generate(3, 43)
    assert A.problems(5, 2, 0) == A.problems(5, 2, 0)
    with pytest.raises(ValueError, match="level must be one of"):
        A.generate(6, 0)


@pytest.mark.parametrize("level", A.LEVELS)
def test_problems_match_their_level_and_python(level):
    spec = A.LEVEL_SPECS[level]
    for p in A.problems(50, level, seed=1):
        operands = re.findall(r"\d+", p.expression)
        assert spec.operands[0] <= len(operands) <= spec.operands[1]
        assert all(spec.digits[0] <= len(o) <= spec.digits[1] for o in operands)
        assert p.answer == eval(p.expression) == A.evaluate(p.expression)
        assert p.prompt == f"What is {p.expression}?"
        assert spec.parentheses or "(" not in p.expression


@pytest.mark.parametrize("level", A.LEVELS)
def test_every_solution_path_is_correct_one_operation_per_step(level):
    rng = random.Random(level)
    for p in A.problems(60, level, seed=2):
        for solution in (A.solve(p.expression), A.solve(p.expression, rng)):
            assert solution.startswith("\n") and solution.endswith(f"\nAnswer: {p.answer}")
            steps = solution.strip().split("\n")[0].split(", ")
            assert all(re.fullmatch(r"\d+[-+*]\d+=\d+", s) for s in steps), solution
            assert all(0 <= int(s.split("=")[1]) <= A.MAX_VALUE for s in steps)
            check = A.check_steps(p.prompt + solution)
            assert check.ok and check.steps == len(steps)
            assert A.check(solution, p.answer)


def test_random_paths_are_diverse():
    p = A.Problem("405-7+57*2+6", 518, 5)
    paths = {A.solve(p.expression, random.Random(i)) for i in range(100)}
    assert len(paths) > 30
    assert any("*50=" in s or "50*" in s for s in paths), "multi-digit products are sometimes split"
    assert A.solve(p.expression) == "\n57*2=114, 405-7=398, 398+114=512, 512+6=518\nAnswer: 518"


@pytest.mark.parametrize("text, expected", [
    ("\n2+3=5\nAnswer: 5", 5),
    ("Answer: 42 and then some noise Answer: 7", 42),
    ("Answer:-3\n", -3),
    ("Answer:   1791\nWhat is 1+1?", 1791),
    ("no answer here", None),
    ("Answer: twelve", None),
])
def test_parse_answer_takes_the_first_answer_line(text, expected):
    assert A.parse_answer(text) == expected


def test_check_compares_exactly():
    assert A.check("Answer: 18", 18)
    assert not A.check("Answer: 180", 18)
    assert not A.check("18", 18)


def test_step_checker_finds_wrong_steps_and_answer_mismatch():
    good = A.check_steps("What is 37*48+15?\n37*48=1776, 1776+15=1791\nAnswer: 1791")
    assert good.ok and good.steps == 2 and good.answer == 1791
    wrong_step = A.check_steps("What is 37*48+15?\n37*48=1766, 1766+15=1781\nAnswer: 1781")
    assert not wrong_step.ok and wrong_step.wrong == ["37*48=1766"]
    mismatch = A.check_steps("What is 37*48+15?\n37*48=1776, 1776+15=1791\nAnswer: 1790")
    assert not mismatch.ok and not mismatch.wrong and not mismatch.answer_matches_last
    assert not A.check_steps("What is 2+2?\nAnswer: 4").ok, "an answer without steps is not verified"


def test_every_path_solve_writes_follows_its_prompt():
    rng = random.Random(5)
    for _ in range(300):
        problem = A.training_problem(rng, rng.choice(A.LEVELS))
        assert A.follows_prompt(problem.expression, A.solve(problem.expression, rng)), problem.expression


@pytest.mark.parametrize("solution, follows", [
    ("37*48=1776, 1776+15=1791\nAnswer: 1791", True),
    ("37*40=1480, 8*37=296, 296+1480=1776, 15+1776=1791\nAnswer: 1791", True),  # split product
    ("37*48=1766, 1766+15=1781\nAnswer: 1781", True),  # wrong arithmetic, right reading
    ("37*48=1776, 1776+17=1793\nAnswer: 1793", False),  # misread 15 as 17
    ("37*48=1776\nAnswer: 1776", False),  # dropped a term
    ("48+15=63, 37*63=2331\nAnswer: 2331", False),  # added before multiplying
    ("37*48=1776, 1776+15=1791\nAnswer: 1790", False),  # answer is not the last result
])
def test_follows_prompt_sees_misreads_and_dropped_terms(solution, follows):
    assert A.follows_prompt("37*48+15", "What is 37*48+15?\n" + solution) is follows


def test_follows_prompt_reads_split_sums_and_differences():
    assert A.follows_prompt("70-5-28", "\n70-20=50, 50-8=42, 42-5=37\nAnswer: 37")
    assert A.follows_prompt("(12+47)*2", "\n12+40=52, 52+7=59, 59*2=118\nAnswer: 118")
    assert not A.follows_prompt("70-5-28", "\n70-20=50, 50-5=45, 45-8=37\nAnswer: 37")


def test_follows_prompt_gives_up_on_huge_searches_instead_of_hanging():
    expression = "+".join(["1"] * 40)
    wrong = "\n" + ", ".join(["1+1=2"] * 20) + "\nAnswer: 40"  # leaves twenty 2s unsummed
    assert A.follows_prompt(expression, wrong, max_states=200), "past the limit it cannot tell, so it passes"
    assert not A.follows_prompt("1+1+1+1", "\n1+1=2, 1+1=2\nAnswer: 2")


def test_check_work_needs_true_steps_and_a_right_reading():
    prompt = "What is 37*48+15?"
    assert A.check_work(prompt, "\n37*48=1776, 1776+15=1791\nAnswer: 1791")
    assert not A.check_work(prompt, "\n37*48=1776, 1776+17=1793\nAnswer: 1793"), "misread: true arithmetic"
    assert not A.check_work(prompt, "\n37*48=1766, 1766+15=1781\nAnswer: 1781"), "right reading, false step"
    assert A.check_work("Compute 37*48+15", "\n37*48=1776, 1776+17=1793\nAnswer: 1793"), \
        "a prompt outside the task's format is judged on its arithmetic only"


def test_splits_are_fixed_unique_disjoint_and_never_trained_on():
    dev, test = A.split("dev"), A.split("test")
    assert len(dev) == len(test) == 5 * A.SPLIT_PER_LEVEL
    assert len({p.expression for p in test}) == len(test)
    assert not {p.expression for p in dev} & {p.expression for p in test}
    assert [p.level for p in test[:: A.SPLIT_PER_LEVEL]] == list(A.LEVELS)
    rng = random.Random(0)
    level1 = {p.expression for p in test if p.level == 1}
    drawn = [A.training_problem(rng, 1).expression for _ in range(3000)]
    assert not set(drawn) & level1 and all(not A.is_held_out(e) for e in drawn)
    with pytest.raises(ValueError, match="split must be one of"):
        A.split("train")


def test_the_calibration_split_is_dev_and_more_per_level_and_never_test():
    calibration, dev = A.split("calibration"), A.split("dev")
    per_level = A.SPLIT_PER_LEVEL + A.CALIBRATION_EXTRA_PER_LEVEL
    assert [p.level for p in calibration] == [level for level in A.LEVELS for _ in range(per_level)]
    assert set(dev) <= set(calibration) and len({p.expression for p in calibration}) == len(calibration)
    assert not {p.expression for p in calibration} & {p.expression for p in A.split("test")}
    A.split.cache_clear()
    assert A.split("calibration") == calibration, "fixed: the same problems every time"


def test_parse_rejects_garbage():
    with pytest.raises(ValueError, match="cannot parse"):
        A.parse("2+x")
    with pytest.raises(ValueError):
        A.parse("(2+3")


def test_sums_and_differences_may_add_tens_then_units():
    seen = {A.solve(expression, random.Random(seed)).split("\n")[1]
            for expression in ("47+38", "95-38") for seed in range(40)}
    assert {"47+38=85", "38+47=85", "47+30=77, 77+8=85", "38+40=78, 78+7=85"} <= seen
    assert {"95-38=57", "95-30=65, 65-8=57"} <= seen, "a difference borrows in neither step"
    assert A.solve("47+38") == "\n47+38=85\nAnswer: 85", "the canonical path never splits"


def test_first_wrong_step_judges_only_finished_steps():
    assert A.first_wrong_step("\n47+30=77, 77+8=86") is None  # the last number may still grow
    assert A.first_wrong_step("\n47+30=77, 77+8=86\n") == 11
    assert A.first_wrong_step("\n850*4=3300, 3*4=12") == 1
    assert A.first_wrong_step("\n40*6=240, 7*6=42, 240+42=282\nAnswer: 282") is None


def test_worked_length_sees_that_two_digit_products_are_split():
    # same operators, same digits: 37*48 may be split into 30*48 and 7*48, 37*4 stays one step
    assert A.worked_length("37*48+15") > 1.1 * A.worked_length("37*4+815")
    paths = [len(A.solve("37*48+15", random.Random(seed))) for seed in range(8)]
    assert A.worked_length("37*48+15") == sum(paths) / 8 and len(set(paths)) > 1  # fixed, distinct paths
    with pytest.raises(ValueError):
        A.worked_length("9+")


def test_embedded_difficulty_reads_the_question_and_falls_back_for_other_text():
    from edgetts.session import arithmetic_difficulty

    assert arithmetic_difficulty("What is 37*48+15?") == A.worked_length("37*48+15")
    assert arithmetic_difficulty("What is 9+5?") < arithmetic_difficulty("What is (120-7)*3-45?")
    assert arithmetic_difficulty("add 9 and 5") == pytest.approx(10.5 * 2 / 4)  # two digits, no operator
    assert arithmetic_difficulty("What is 9+?") == pytest.approx(10.5 * (1 + 1 / 4))
