"""Generate ``exercises/`` from ``solutions/``. Never edit ``exercises/`` by hand.

    python -m minibayeslora.exercises            # regenerate every exercise notebook
    python -m minibayeslora.exercises --check    # exit 1 if exercises/ is stale (used by the tests)
    python -m minibayeslora.exercises --nbgrader-course build/course   # an nbgrader course (make grading)

Rules, for ``solutions/NN_name_solutions.ipynb`` -> ``exercises/NN_name_exercises.ipynb``:

- in code cells, the lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` become
  ``raise NotImplementedError()`` at the marker's indentation;
- the lines from ``### BEGIN HIDDEN TESTS`` to ``### END HIDDEN TESTS`` are removed;
- in markdown cells (written answers), the lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION``
  become ``YOUR ANSWER HERE``;
- outputs, execution counts and nbgrader's cell metadata are cleared, the kernelspec is normalised;
- every stub cell, and every cell that uses a name defined by a stub cell or by an already
  tagged cell (found with ``ast``, transitively), is tagged ``raises-exception``, so nbval
  accepts the ``NotImplementedError`` it raises (a tagged cell that runs cleanly passes too).

The output is deterministic: the same solutions give byte-identical exercises. These are the rules of
nbgrader's ``generate_assignment`` (with ``raise NotImplementedError()`` as the code stub), so an
instructor's nbgrader release of a solutions notebook has the same cells as our exercise notebook
(tested with nbgrader itself); the solutions notebooks carry nbgrader's cell metadata (solution cells,
graded test cells with points, graded written answers) for that purpose.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import nbformat

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
STUB = "raise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"
RAISES = "raises-exception"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def strip_code(source: str, stub: str = STUB) -> tuple[str, bool]:
    """Replace solution blocks by ``stub`` and drop hidden tests; return (new source, had a solution)."""
    out, mode, had_solution = [], None, False
    for line in source.splitlines():
        marker = line.strip()
        if marker == BEGIN_SOLUTION:
            if mode:
                raise ValueError(f"nested marker {marker!r} in:\n{source}")
            out.append(line[: len(line) - len(line.lstrip())] + stub)
            mode, had_solution = "solution", True
        elif marker == BEGIN_HIDDEN:
            if mode:
                raise ValueError(f"nested marker {marker!r} in:\n{source}")
            mode = "hidden"
        elif marker in (END_SOLUTION, END_HIDDEN):
            if mode != ("solution" if marker == END_SOLUTION else "hidden"):
                raise ValueError(f"unmatched {marker!r} in:\n{source}")
            mode = None
        elif mode is None:
            out.append(line)
    if mode:
        raise ValueError(f"unclosed {mode} block in:\n{source}")
    return "\n".join(out).rstrip() + ("\n" if source.endswith("\n") else ""), had_solution


def _ipython_free(source: str) -> str:
    """Source with IPython magics/shell lines blanked, so ``ast`` can parse it."""
    return "\n".join(re.sub(r"^(\s*)[!%].*$", r"\1pass", line) for line in source.splitlines())


def _names(source: str) -> tuple[set[str], set[str]]:
    """(names the cell defines at top level, names it reads)."""
    tree = ast.parse(_ipython_free(source))
    defined, used = set(), set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (defined if isinstance(node.ctx, ast.Store) else used).add(node.id)
    return defined, used


def make_exercise(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = nbformat.from_dict(solution)
    tainted: set[str] = set()
    for cell in nb.cells:
        tags = [t for t in cell.metadata.get("tags", []) if t != RAISES]
        cell.metadata.pop("nbgrader", None)
        if cell.cell_type == "markdown":
            cell.source = strip_code(cell.source, TEXT_STUB)[0]
        elif cell.cell_type == "code":
            cell.source, had_solution = strip_code(cell.source)
            cell.outputs, cell.execution_count = [], None
            defined, used = _names(cell.source)
            raises = had_solution or bool(used & tainted)
            if raises:
                tainted |= defined
            if raises:
                tags.append(RAISES)
        if tags:
            cell.metadata["tags"] = tags
        else:
            cell.metadata.pop("tags", None)
        cell.metadata.pop("execution", None)
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    return nb


def exercise_path(solution_path: Path, exercises_dir: Path) -> Path:
    name = solution_path.name
    if not name.endswith("_solutions.ipynb"):
        raise ValueError(f"{name}: solution notebooks are named NN_topic_solutions.ipynb.")
    return exercises_dir / name.replace("_solutions.ipynb", "_exercises.ipynb")


def render(solution_path: Path) -> str:
    return nbformat.writes(make_exercise(nbformat.read(solution_path, as_version=4))) + "\n"


def sync(root: Path, check: bool = False) -> list[str]:
    """Regenerate (or, with ``check``, compare) every exercise; return the problems found."""
    solutions, exercises = root / "solutions", root / "exercises"
    problems, expected = [], set()
    for sol in sorted(solutions.glob("*_solutions.ipynb")):
        target = exercise_path(sol, exercises)
        expected.add(target.name)
        text = render(sol)
        if check:
            if not target.exists() or target.read_text() != text:
                problems.append(f"{target.relative_to(root)} is stale: run `python -m minibayeslora.exercises`")
        else:
            target.parent.mkdir(exist_ok=True)
            target.write_text(text)
    for orphan in sorted(exercises.glob("*.ipynb")):
        if orphan.name not in expected:
            problems.append(f"{orphan.relative_to(root)} has no notebook in solutions/")
    return problems


def nbgrader_course(root: Path, target: Path) -> list[str]:
    """An nbgrader course directory at ``target``: ``nbgrader_config.py`` from ``grading/`` and one assignment
    per solutions notebook, ``source/NN_topic/NN_topic_exercises.ipynb`` (the solutions, under the name the
    students' copy will have). Returns the assignment names."""
    import shutil

    (target / "source").mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "grading" / "nbgrader_config.py", target / "nbgrader_config.py")
    names = []
    for sol in sorted((root / "solutions").glob("*_solutions.ipynb")):
        name = sol.name.removesuffix("_solutions.ipynb")
        folder = target / "source" / name
        folder.mkdir(exist_ok=True)
        shutil.copy(sol, folder / exercise_path(sol, folder).name)
        names.append(name)
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Generate exercises/ from solutions/.")
    parser.add_argument("--check", action="store_true", help="only report stale or orphan exercises")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root (default: .)")
    parser.add_argument("--nbgrader-course", type=Path, metavar="DIR",
                        help="instead, build an nbgrader course directory (source/ from solutions/) in DIR")
    args = parser.parse_args(argv)
    if args.nbgrader_course:
        names = nbgrader_course(args.root, args.nbgrader_course)
        print(f"nbgrader course in {args.nbgrader_course}: assignments {', '.join(names)}")
        return 0
    problems = sync(args.root, check=args.check)
    for p in problems:
        print(p, file=sys.stderr)
    if not args.check and not problems:
        print(f"exercises/ regenerated from {args.root / 'solutions'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
