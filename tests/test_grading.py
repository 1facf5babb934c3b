"""Grading with the real nbgrader: the release of every solutions notebook is our exercise notebook, and
autograde gives the solutions full marks and the untouched exercises none."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from minibayeslora.exercises import nbgrader_course

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*_solutions.ipynb"))


def _nbgrader(course: Path, *args: str) -> None:
    """Run nbgrader in ``course`` (assignment commands get --force: a rerun overwrites)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # alembic, jupyter
           "MINIBAYESLORA_SMOKE": "1"}
    force = ["--force"] if args[0] in ("generate_assignment", "autograde") else []
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args, *force], cwd=course, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    names = nbgrader_course(ROOT, course)
    for name in names:
        _nbgrader(course, "generate_assignment", name)
    return course, names


def test_solutions_carry_nbgrader_metadata_that_matches_their_markers():
    for path in SOLUTIONS:
        ids = []
        for cell in nbformat.read(path, as_version=4).cells:
            meta = cell.metadata.get("nbgrader")
            has_solution = "### BEGIN SOLUTION" in cell.source
            is_test = cell.cell_type == "code" and "checks.check_" in cell.source
            where = (path.name, cell.source[:80])
            assert bool(meta and meta["solution"]) == has_solution, where
            if is_test:   # autograded: read-only, worth points
                assert meta["grade"] and meta["locked"] and meta["points"] > 0, where
            elif has_solution and cell.cell_type == "markdown":   # a written answer, graded by hand (Going further: 0)
                optional = meta["grade_id"].startswith("further")
                assert meta["grade"] and (meta["points"] == 0 if optional else meta["points"] > 0), where
                assert optional or "**Rubric" in cell.source, (*where, "a graded answer states its rubric")
            else:
                assert not (meta and meta["grade"]), where
            if meta:
                ids.append(meta["grade_id"])
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate grade ids"


def test_nbgrader_release_is_our_exercise_notebook(course):
    course, names = course
    for name in names:
        released = nbformat.read(course / "release" / name / f"{name}_exercises.ipynb", as_version=4)
        ours = nbformat.read(ROOT / "exercises" / f"{name}_exercises.ipynb", as_version=4)
        assert [(c.cell_type, c.source.rstrip()) for c in released.cells] == [(c.cell_type, c.source.rstrip()) for c in ours.cells], name


def _scores(course: Path, name: str, student: str) -> tuple[float, float]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        notebook = gradebook.find_submission(name, student).notebooks[0]
        auto = [g for g in notebook.grades if g.cell_type == "code"]
        return sum(g.score for g in auto), sum(g.max_score for g in auto)


def test_autograde_gives_the_solutions_full_marks_and_the_exercises_none(course):
    course, names = course
    for student, folder in [("solutions", ROOT / "solutions"), ("exercises", ROOT / "exercises")]:
        _nbgrader(course, "db", "student", "add", student)
        for name in names:
            target = course / "submitted" / student / name
            target.mkdir(parents=True, exist_ok=True)
            source = folder / f"{name}_{student}.ipynb"
            shutil.copy(source, target / f"{name}_exercises.ipynb")
    for name in names:
        _nbgrader(course, "autograde", name)
    report = {}
    for name in names:
        solved, total = _scores(course, name, "solutions")
        untouched, _ = _scores(course, name, "exercises")
        report[name] = (solved, untouched, total)
    print(report)
    assert all(total > 0 and solved == total and untouched == 0 for solved, untouched, total in report.values()), report


def test_the_instructors_points_table_matches_the_notebooks():
    import re

    table = {}
    for line in (ROOT / "INSTRUCTORS.md").read_text().splitlines():
        match = re.match(r"\| (\d\d) .*\| (\d+) \|$", line)
        if match:
            table[match.group(1)] = int(match.group(2))
    points = {}
    for path in SOLUTIONS:
        cells = nbformat.read(path, as_version=4).cells
        points[path.name[:2]] = sum(c.metadata["nbgrader"]["points"] for c in cells
                                    if c.metadata.get("nbgrader", {}).get("grade"))
    assert table == points
