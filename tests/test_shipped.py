"""Shipped checkpoints: read before training, skipped on request, recorded and collected from real runs, and
checked against the code that would make them."""

import json

import pytest
import torch

from minibayeslora import shipped
from minibayeslora.backbones import lora_classifier
from minibayeslora.lora import adapter_state
from minibayeslora.train import TrainConfig, fit, make_data


@pytest.fixture(scope="module")
def small(task):
    return task.train.subset(64, seed=0), task.val.subset(32, seed=0)


CFG = TrainConfig(steps=4, batch_size=16, eval_every=2)


def _run(small, cfg=CFG, key=None):
    model = lora_classifier(0, r=4, top=1)   # seeded: every call builds the same starting point
    history = fit(model, make_data(model, small[0]), make_data(model, small[1]), cfg,
                  cache_key=key or {"test": "shipped"}, progress=False)
    return history, adapter_state(model)


@pytest.fixture
def shipped_folder(small, isolated_cache, tmp_path, monkeypatch):
    """One run recorded and collected into a shipped folder; the reader's cache emptied afterwards."""
    recorded, folder = tmp_path / "recorded", tmp_path / "shipped"
    monkeypatch.setenv("MINIBAYESLORA_RECORD_CHECKPOINTS", str(recorded))
    monkeypatch.setenv("MINIBAYESLORA_NOTEBOOK", "99_test")
    history, state = _run(small)
    monkeypatch.delenv("MINIBAYESLORA_RECORD_CHECKPOINTS")
    notebook = tmp_path / "99_test.ipynb"
    notebook.write_text(json.dumps({"cells": [{"cell_type": "code", "source": ["fit(model)"]}]}))
    manifest = shipped.collect(recorded, [notebook], folder)
    monkeypatch.setenv("MINIBAYESLORA_CHECKPOINTS", str(folder))
    monkeypatch.setenv("MINIBAYESLORA_CACHE", str(tmp_path / "empty-cache"))
    return folder, manifest, history, state, notebook


def test_a_shipped_checkpoint_is_read_before_training_and_retrain_skips_it(small, shipped_folder, monkeypatch):
    folder, manifest, history, state, _ = shipped_folder
    (digest, item), = manifest["checkpoints"].items()   # the kept state only: the keep-best run's final state was not used
    assert item["notebooks"] == ["99_test"] and item["key"]["key"] == {"test": "shipped"}
    assert sorted(p.name for p in (folder / "adapters").iterdir()) == [f"{digest}.json", f"{digest}.safetensors"]

    loaded, loaded_state = _run(small)
    assert loaded.from_cache and loaded.eval == history.eval
    assert all(torch.equal(loaded_state[k], v) for k, v in state.items())

    monkeypatch.setenv("MINIBAYESLORA_CACHE", str(folder.parent / "another-empty-cache"))
    monkeypatch.setenv("MINIBAYESLORA_RETRAIN", "1")
    retrained, retrained_state = _run(small)
    assert not retrained.from_cache, "MINIBAYESLORA_RETRAIN=1 must train, not read the shipped folder"
    assert all(torch.allclose(retrained_state[k], v, atol=1e-6) for k, v in state.items()), "training is seeded"


def test_require_mode_refuses_a_run_without_a_shipped_checkpoint(small, shipped_folder, monkeypatch):
    monkeypatch.setenv("MINIBAYESLORA_REQUIRE_CHECKPOINTS", "1")
    assert _run(small)[0].from_cache
    with pytest.raises(shipped.MissingCheckpoint, match="recipe changed"):
        _run(small, TrainConfig(steps=5, batch_size=16, eval_every=2))   # a changed recipe: another digest


def test_collect_refuses_a_recording_whose_key_does_not_match_its_digest(small, shipped_folder, tmp_path):
    folder, manifest, *_ = shipped_folder
    recorded = tmp_path / "tampered"
    (recorded / "adapters").mkdir(parents=True)
    (digest, item), = manifest["checkpoints"].items()
    key = dict(item["key"], config={**item["key"]["config"], "lr": 1.0})   # an edited key under the old name
    (recorded / "keys.jsonl").write_text(json.dumps({"digest": digest, "notebook": "x", "key": key}) + "\n")
    notebook = tmp_path / "x.ipynb"
    notebook.write_text(json.dumps({"cells": []}))
    with pytest.raises(ValueError, match="does not match its own key"):
        shipped.collect(recorded, [notebook], tmp_path / "out")


def test_collecting_one_notebook_keeps_the_others(small, shipped_folder, tmp_path, monkeypatch):
    folder, manifest, _, _, notebook = shipped_folder
    (first, _), = manifest["checkpoints"].items()
    other = tmp_path / "98_other.ipynb"
    other.write_text(json.dumps({"cells": [{"cell_type": "code", "source": ["fit(other)"]}]}))
    monkeypatch.setenv("MINIBAYESLORA_RECORD_CHECKPOINTS", str(tmp_path / "recorded-other"))
    monkeypatch.setenv("MINIBAYESLORA_NOTEBOOK", "98_other")
    _run(small, TrainConfig(steps=3, batch_size=16, eval_every=3), key={"test": "other"})
    merged = shipped.collect(tmp_path / "recorded-other", [other], folder)
    assert set(merged["notebooks"]) == {"98_other", "99_test"}
    (second, _), = [(d, i) for d, i in merged["checkpoints"].items() if d != first]
    assert merged["checkpoints"][first]["notebooks"] == ["99_test"] and merged["checkpoints"][second]["notebooks"] == ["98_other"]
    # 99_test run again with a changed recipe: its old checkpoint goes, 98_other's stays
    monkeypatch.setenv("MINIBAYESLORA_RECORD_CHECKPOINTS", str(tmp_path / "recorded-again"))
    monkeypatch.setenv("MINIBAYESLORA_NOTEBOOK", "99_test")
    _run(small, TrainConfig(steps=5, batch_size=16, eval_every=5))
    again = shipped.collect(tmp_path / "recorded-again", [notebook], folder)
    assert first not in again["checkpoints"] and second in again["checkpoints"] and len(again["checkpoints"]) == 2
    assert sorted(p.stem for p in (folder / "adapters").glob("*.safetensors")) == sorted(again["checkpoints"])
    assert shipped.problems([notebook, other], folder) == []


def test_the_code_hash_sees_code_cells_only(tmp_path):
    def notebook(code, markdown):
        path = tmp_path / "nb.ipynb"
        path.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": [markdown]},
                                              {"cell_type": "code", "source": [code], "outputs": [{"text": markdown}]}]}))
        return shipped.code_digest(path)

    assert notebook("fit(m, cfg)", "a") == notebook("fit(m, cfg)", "b")
    assert notebook("fit(m, cfg)", "a") != notebook("fit(m, cfg2)", "a")


def test_problems_name_a_changed_notebook_until_it_is_verified(shipped_folder):
    folder, manifest, _, _, notebook = shipped_folder
    assert shipped.problems([notebook], folder) == []
    notebook.write_text(json.dumps({"cells": [{"cell_type": "code", "source": ["fit(model, other_cfg)"]}]}))
    assert [p.split(":")[0] for p in shipped.problems([notebook], folder)] == ["99_test"]
    shipped.mark_verified(notebook, folder)
    assert shipped.problems([notebook], folder) == []
    (digest, _), = manifest["checkpoints"].items()
    (folder / "adapters" / f"{digest}.json").unlink()
    assert shipped.problems([notebook], folder) == [f"{digest}: files missing"]


# ---- the repository's own checkpoints ------------------------------------------------------------------

ROOT = shipped.Path(__file__).resolve().parent.parent
LECTURES = sorted((ROOT / "notebooks").glob("*.ipynb"))


#: Lecture notebooks whose checkpoints are not shipped yet (their runs train on first use). A notebook leaves this
#: set when `make checkpoints NOTEBOOKS=...` has recorded it; the test below fails if the set is out of date.
NOT_SHIPPED_YET: set[str] = set()


def test_the_shipped_checkpoints_are_current():
    """Every lecture notebook's code is the code its checkpoints were made (or verified) with, and every
    checkpoint is whole, named by its key's digest and made by this package version."""
    assert (ROOT / "checkpoints" / "manifest.json").exists(), "no checkpoints/: run `make checkpoints`"
    shipped_notebooks = [nb for nb in LECTURES if nb.stem not in NOT_SHIPPED_YET]
    assert shipped.problems(shipped_notebooks, ROOT / "checkpoints") == []
    manifest = shipped.read_manifest(ROOT / "checkpoints")
    used_by = {nb for item in manifest["checkpoints"].values() for nb in item["notebooks"]}
    trains = {nb.stem for nb in LECTURES if "cache_key=" in nb.read_text()}
    assert trains - NOT_SHIPPED_YET <= used_by, f"notebooks that train but ship nothing: {sorted(trains - NOT_SHIPPED_YET - used_by)}"
    assert not NOT_SHIPPED_YET & set(manifest["notebooks"]), "shipped now: take them out of NOT_SHIPPED_YET"


def test_a_shipped_checkpoint_is_what_training_gives(task, isolated_cache, monkeypatch):
    """Notebook 07's first run (LoRA on RT-500, seed 0), rebuilt here as the notebook builds it: its key must name a
    shipped checkpoint (else the notebook or this copy of its recipe changed), and retraining it gives the shipped
    weights to 1e-4 (float sums differ in the last bits with the thread count; a wrong recipe differs by ~1e-2)."""
    from safetensors.torch import load_file

    from minibayeslora import data
    from minibayeslora.train import _cache_path, _recipe, cross_entropy

    rt = data.load_task("rotten_tomatoes")
    train_split, val_split = rt.train.subset(500, seed=0), rt.val.subset(200, seed=0)
    model = lora_classifier(0)
    model.max_length = 64
    cfg = TrainConfig.for_data(500, epochs=5, batch_size=16, lr=1e-3, schedule="cosine", seed=0)
    key = {"notebook": "07", "task": "RT-500", "method": "LoRA", "max_length": 64}
    train_data, val_data = make_data(model, train_split), make_data(model, val_split)
    digest = _cache_path(_recipe(model, cross_entropy), train_data, val_data, cfg, key)[0].name
    manifest = shipped.read_manifest(ROOT / "checkpoints")
    assert digest in manifest["checkpoints"], "notebook 07's LoRA run has no shipped checkpoint under this recipe"

    monkeypatch.setenv("MINIBAYESLORA_CHECKPOINTS", str(ROOT / "checkpoints"))
    monkeypatch.setenv("MINIBAYESLORA_RETRAIN", "1")
    history = fit(model, train_data, val_data, cfg, cache_key=key, progress=False)
    assert not history.from_cache
    shipped_state = load_file(str(ROOT / "checkpoints" / "adapters" / f"{digest}.safetensors"))
    shipped_history = json.loads((ROOT / "checkpoints" / "adapters" / f"{digest}.json").read_text())["history"]
    assert history.best_step == shipped_history["best_step"]
    for name, value in adapter_state(model).items():
        assert torch.allclose(value, shipped_state[name], atol=1e-4, rtol=0), (name, (value - shipped_state[name]).abs().max())


def test_a_shipped_laplace_fit_is_what_fitting_gives(task, isolated_cache, monkeypatch):
    """Notebook 07's Laplace fit on RT-500, seed 0, rebuilt as the notebook builds it (its LoRA loaded from the shipped
    checkpoints): its key must name a shipped fit, and fitting again gives the shipped curvature and prior precision
    (to float-sum precision; another model or data set gives other numbers altogether)."""
    from safetensors.torch import load_file

    from minibayeslora import data
    from minibayeslora.laplace_lora import LaplaceConfig, _cache_path, fit_laplace

    monkeypatch.setenv("MINIBAYESLORA_CHECKPOINTS", str(ROOT / "checkpoints"))
    rt = data.load_task("rotten_tomatoes")
    train_split, val_split = rt.train.subset(500, seed=0), rt.val.subset(200, seed=0)
    model = lora_classifier(0)
    model.max_length = 64
    cfg = TrainConfig.for_data(500, epochs=5, batch_size=16, lr=1e-3, schedule="cosine", seed=0)
    train_data = make_data(model, train_split)
    history = fit(model, train_data, make_data(model, val_split), cfg, progress=False,
                  cache_key={"notebook": "07", "task": "RT-500", "method": "LoRA", "max_length": 64})
    assert history.from_cache, "notebook 07's LoRA run has no shipped checkpoint under this recipe"
    key = {"notebook": "07", "task": "RT-500", "seed": 0}
    digest = _cache_path(model, train_data, None, LaplaceConfig(), key)[0].name
    assert digest in shipped.read_manifest(ROOT / "checkpoints")["checkpoints"], "no shipped Laplace fit under this key"

    refit = fit_laplace(model, train_data, LaplaceConfig(), seed=0)
    assert not refit.from_cache
    stored = load_file(str(ROOT / "checkpoints" / "adapters" / f"{digest}.safetensors"))
    torch.testing.assert_close(refit.posterior.H, stored["H"], rtol=1e-4, atol=1e-6)
    assert refit.prior_precision == pytest.approx(stored["prior_precision"].item(), rel=1e-3)
