"""The README's promise: CI runs exactly the README's test command."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = quickstart.split("```bash\n")[1:]
    return [block.split("\n```", 1)[0].strip() for block in blocks]


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_test_one():
    commands = quickstart_commands()
    assert len(commands) == 2
    main_job, test = commands
    assert "pip install" in main_job and "edgetts" in main_job.split("&&")[-1]
    assert test.endswith("pytest")
    assert test in (REPO / ".ci" / "run").read_text().splitlines()
