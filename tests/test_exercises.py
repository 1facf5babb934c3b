"""exercises/ is generated from solutions/: up to date, no solution leaks, stubs tagged for nbval."""

import re
from pathlib import Path

import nbformat
import pytest

from minibayeslora import exercises

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*_solutions.ipynb"))


def _solution_lines(nb) -> list[str]:
    lines, inside = [], False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            marker = line.strip()
            if marker in (exercises.BEGIN_SOLUTION, exercises.BEGIN_HIDDEN):
                inside = True
            elif marker in (exercises.END_SOLUTION, exercises.END_HIDDEN):
                inside = False
            elif inside and len(marker) >= 12 and not marker.startswith("#"):
                lines.append(marker)
    return lines


def test_exercises_are_up_to_date():
    assert SOLUTIONS, "no solution notebooks found"
    assert exercises.sync(ROOT, check=True) == []


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_no_solution_or_hidden_test_leaks(solution):
    sol = nbformat.read(solution, as_version=4)
    ex = nbformat.read(exercises.exercise_path(solution, ROOT / "exercises"), as_version=4)
    text = "\n".join(c.source for c in ex.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS", "solutions only", "contains the solutions"):
        assert marker not in text
    exercise_code = {line.strip() for c in ex.cells if c.cell_type == "code" for line in c.source.splitlines()}
    leaked = [line for line in _solution_lines(sol) if line in exercise_code]
    assert not leaked, f"solution lines leaked into the exercise: {leaked}"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_each_exercise_has_a_header_a_stub_and_a_check(solution):
    sol = nbformat.read(solution, as_version=4)
    headers = [c.source for c in sol.cells if c.cell_type == "markdown" and re.search(r"^## Exercise \d", c.source, re.M)]
    assert len(headers) >= 4 if solution.name.startswith("01_") else len(headers) >= 3
    for header in headers:
        assert re.search(r"Difficulty [★☆]{3} · about \d+ min", header), header
    ex = nbformat.read(exercises.exercise_path(solution, ROOT / "exercises"), as_version=4)
    stubs = [c for c in ex.cells if c.cell_type == "code" and exercises.STUB in c.source]
    checks = [c for c in ex.cells if c.cell_type == "code" and "checks.check_" in c.source]
    assert len(stubs) >= len(headers) and len(checks) >= len(headers)
    assert all(exercises.RAISES in c.metadata.get("tags", []) for c in stubs + checks), "stub and check cells must be tagged for nbval"
    setup = ex.cells[1]
    assert "google.colab" in setup.source and "tags" not in setup.metadata, "the setup cell must run for real"


def test_strip_code_replaces_blocks_at_their_indentation():
    source = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n"
    stripped, had = exercises.strip_code(source)
    assert had and stripped == "def f(x):\n    y = 1\n    raise NotImplementedError()\n"
    hidden = "check(f)\n### BEGIN HIDDEN TESTS\nassert f(1) == 2\n### END HIDDEN TESTS\n"
    assert exercises.strip_code(hidden) == ("check(f)\n", False)
    for broken in ("### BEGIN SOLUTION\nx = 1\n", "### END SOLUTION\n",
                   "### BEGIN SOLUTION\n### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS\n### END SOLUTION\n"):
        with pytest.raises(ValueError):
            exercises.strip_code(broken)


def test_tags_follow_the_stubbed_names_transitively():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import torch"),
        nbformat.v4.new_code_cell("def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION"),
        nbformat.v4.new_code_cell("y = f(1)"),
        nbformat.v4.new_code_cell("z = y + 1"),
        nbformat.v4.new_code_cell("w = torch.ones(2)"),
        nbformat.v4.new_code_cell("### BEGIN SOLUTION\nv = 3\n### END SOLUTION"),
        nbformat.v4.new_markdown_cell("Question?\n\n### BEGIN SOLUTION\nAnswer: 42.\n### END SOLUTION"),
    ])
    out = exercises.make_exercise(nb)
    tags = [exercises.RAISES in c.metadata.get("tags", []) for c in out.cells]
    assert tags == [False, True, True, True, False, True, False]
    assert out.cells[-1].source == "Question?\n\nYOUR ANSWER HERE"   # nbgrader's text stub
    first = nbformat.writes(out)
    assert nbformat.writes(exercises.make_exercise(nb)) == first, "generation must be deterministic"


def test_check_mode_reports_stale_and_orphan_files(tmp_path):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "exercises").mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")])
    nbformat.write(nb, tmp_path / "solutions" / "09_demo_solutions.ipynb")
    (tmp_path / "exercises" / "08_old_exercises.ipynb").write_text("{}")
    problems = exercises.sync(tmp_path, check=True)
    assert any("09_demo_exercises.ipynb is stale" in p for p in problems)
    assert any("08_old_exercises.ipynb has no notebook" in p for p in problems)
    assert exercises.main(["--root", str(tmp_path), "--check"]) == 1
    (tmp_path / "exercises" / "08_old_exercises.ipynb").unlink()
    assert exercises.main(["--root", str(tmp_path)]) == 0
    assert exercises.main(["--root", str(tmp_path), "--check"]) == 0
