"""The torchrun export test is off in a plain `pytest` (it starts processes) but CI runs it:
.ci/run runs `make test`, whose pytest marker expression must select the `distributed` tests."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from _pytest.mark.expression import Expression

from tests.recsys.export import test_candidates

REPO = Path(__file__).resolve().parents[3]


def _marker_expression(args: list[str], default: str | None = None) -> str | None:
    """The `-m` expression pytest applies: the last `-m` of the arguments, else `default`."""
    found = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "-m"]
    return found[-1] if found else default


def _selects(expression: str | None, marks: set[str]) -> bool:
    return expression is None or Expression.compile(expression).evaluate(lambda m: m in marks)


def _make_test_pytest_commands() -> list[list[str]]:
    """The pytest command lines of the Makefile's `test` recipe."""
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M)
    assert recipe, "Makefile has no test recipe"
    return [shlex.split(line) for line in recipe.group(1).splitlines() if "pytest" in line]


def test_make_test_runs_the_distributed_tests_a_plain_pytest_deselects():
    marks = {mark.name for mark in getattr(
        test_candidates.test_torchrun_with_two_processes_writes_the_single_process_export,
        "pytestmark", [])}
    assert "distributed" in marks
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")

    addopts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"]["addopts"]
    plain = _marker_expression(shlex.split(addopts))
    commands = _make_test_pytest_commands()
    assert commands, "make test runs no pytest"

    def make_runs(test_marks: set[str]) -> bool:
        return any(_selects(_marker_expression(cmd, plain), test_marks) for cmd in commands)

    assert not _selects(plain, {"distributed"}) and make_runs({"distributed"})
    for test_marks in (set(), {"slow"}, {"gpu"}):  # otherwise make test runs what pytest runs
        assert make_runs(test_marks) == _selects(plain, test_marks), test_marks

