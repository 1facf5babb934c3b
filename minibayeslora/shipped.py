"""Shipped checkpoints: the notebooks' trained adapters come with the course, so a notebook opens in minutes.

(A Laplace fit, ``laplace_lora.fit_laplace(..., cache_key=...)``, is cached, looked up, recorded and shipped the same
way, under ``adapters/`` beside the adapter it was fitted on.)

``train.fit(..., cache_key=...)`` looks for its result, by the digest of its full key (config, recipe,
data, package version; see ``train``), in three places:

1. the reader's own cache, ``cache_dir()/adapters/<digest>``;
2. the shipped folder ``checkpoints/adapters/<digest>`` at the repository's root (``$MINIBAYESLORA_CHECKPOINTS``
   moves it); ``MINIBAYESLORA_RETRAIN=1`` skips it, so every run without a result of its own trains;
3. otherwise it trains, and writes the result to the cache.

A checkpoint is found only under the digest of the run that made it, so a changed recipe never loads an old
checkpoint: it misses and trains. What can go stale is the *set* of checkpoints. ``checkpoints/manifest.json``
records each checkpoint's key and, per notebook, a sha256 of its code cells at the time its checkpoints were
made or last verified; the test suite fails when a notebook's code no longer matches. Two commands keep them
current, both run in the cpu profile (the profile a laptop reader gets):

- ``make checkpoints``: run every lecture notebook (or ``NOTEBOOKS=...``) from an empty cache with
  ``MINIBAYESLORA_RETRAIN=1``, recording every ``fit`` it makes (``MINIBAYESLORA_RECORD_CHECKPOINTS``), then
  replace those notebooks' checkpoints with exactly the recorded results (``python -m minibayeslora.shipped
  collect``). Nothing in it is made by hand.
- ``make checkpoints-verify NOTEBOOK=...``: run one notebook with ``MINIBAYESLORA_REQUIRE_CHECKPOINTS=1``, where
  a ``fit`` with no shipped checkpoint raises instead of training; if the run passes, every fit of the notebook's
  current code has its checkpoint, and its code hash is updated (``python -m minibayeslora.shipped verified``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from . import __version__, config

SUFFIXES = (".safetensors", ".json")


def shipped_dir() -> Path:
    """``$MINIBAYESLORA_CHECKPOINTS``, default ``checkpoints/`` beside the package (the repository's root)."""
    return Path(os.environ.get("MINIBAYESLORA_CHECKPOINTS") or Path(__file__).resolve().parent.parent / "checkpoints")


def _flag(name: str) -> bool:
    return config._truthy(os.environ.get(name))


def lookup(digest: str) -> Path | None:
    """The shipped checkpoint's path (without suffix) for a run's digest, or None (absent, or RETRAIN is on)."""
    if _flag("MINIBAYESLORA_RETRAIN"):
        return None
    path = shipped_dir() / "adapters" / digest
    return path if all(path.with_suffix(s).exists() for s in SUFFIXES) else None


class MissingCheckpoint(RuntimeError):
    """Raised by ``fit`` under ``MINIBAYESLORA_REQUIRE_CHECKPOINTS=1`` when a run has no shipped checkpoint."""


def cache_path(key: dict) -> tuple[Path, dict]:
    """A run's path in the reader's cache (``cache_dir("adapters")/<digest>``, without suffix) and its key as stored
    (through JSON, so that the digest can be checked against it later)."""
    key = json.loads(json.dumps(key, sort_keys=True, default=str))
    return config.cache_dir("adapters") / key_digest(key), key


def load_cached(path: Path, key: dict, load):
    """A run's result from the reader's cache, else from the shipped folder, recorded (``record``); None when neither
    has it and the run must be made. ``load(path) -> result | None`` reads one candidate (None: absent or unreadable).
    Under ``MINIBAYESLORA_REQUIRE_CHECKPOINTS=1`` a run with no shipped result raises (``require``)."""
    require(path.name, key)
    for candidate in (path, lookup(path.name)):
        result = load(candidate) if candidate is not None else None
        if result is not None:
            record(candidate, key)
            return result
    return None


def require(digest: str, key: dict) -> None:
    """Under ``MINIBAYESLORA_REQUIRE_CHECKPOINTS=1``, refuse to train a run that has no shipped checkpoint."""
    if _flag("MINIBAYESLORA_REQUIRE_CHECKPOINTS") and lookup(digest) is None:
        raise MissingCheckpoint(f"no shipped checkpoint for the run {key['key']} (digest {digest}): the notebook's "
                                f"recipe changed since `make checkpoints`; run it to ship the new results.")


def record(path: Path, key: dict) -> None:
    """Under ``MINIBAYESLORA_RECORD_CHECKPOINTS=<dir>``, copy a run's result there and log its key and notebook."""
    target = os.environ.get("MINIBAYESLORA_RECORD_CHECKPOINTS")
    if not target:
        return
    out = Path(target)
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    for suffix in SUFFIXES:
        shutil.copyfile(path.with_suffix(suffix), out / "adapters" / (path.name + suffix))
    entry = {"digest": path.name, "notebook": os.environ.get("MINIBAYESLORA_NOTEBOOK", ""), "key": key}
    with open(out / "keys.jsonl", "a") as log:
        log.write(json.dumps(entry, sort_keys=True, default=str) + "\n")


def key_digest(key: dict) -> str:
    """The digest a run's key is stored under (20 hex digits of the sha256 of its sorted JSON)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def code_digest(notebook: Path) -> str:
    """sha256 of a notebook's code cells, in order (markdown and outputs do not count)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    h = hashlib.sha256()
    for cell in cells:
        if cell["cell_type"] == "code":
            h.update("".join(cell["source"]).encode() + b"\0")
    return h.hexdigest()[:24]


def read_manifest(folder: Path | None = None) -> dict:
    path = (folder or shipped_dir()) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"notebooks": {}, "checkpoints": {}}


def _write_manifest(folder: Path, manifest: dict) -> None:
    config.write_atomically(folder / "manifest.json",
                            lambda tmp: tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n"))


def collect(recorded: Path, notebooks: list[Path], folder: Path | None = None) -> dict:
    """Replace the shipped checkpoints of ``notebooks`` with the runs they recorded in ``recorded``; returns the manifest.

    Other notebooks' checkpoints stay, so one notebook can be regenerated alone; with every lecture notebook (as
    ``make checkpoints`` runs them) the folder holds exactly the recorded runs. Each notebook run gets its code
    hash, also one that made no ``fit``. The new folder is built beside the old one and then swapped in.
    """
    folder = folder or shipped_dir()
    names = {Path(nb).stem for nb in notebooks}
    old = read_manifest(folder)
    manifest = {"notebooks": {**old["notebooks"], **{Path(nb).stem: code_digest(nb) for nb in notebooks}},
                "checkpoints": {}}
    for digest, item in old["checkpoints"].items():
        kept = [nb for nb in item["notebooks"] if nb not in names]
        if kept:
            manifest["checkpoints"][digest] = {**item, "notebooks": kept}
    staging = folder.with_name(folder.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "adapters").mkdir(parents=True)
    sources = {digest: folder / "adapters" for digest in manifest["checkpoints"]}
    log = Path(recorded) / "keys.jsonl"
    for line in (log.read_text().splitlines() if log.exists() else []):
        entry = json.loads(line)
        digest = entry["digest"]
        if entry["notebook"] not in names:
            continue
        if key_digest(entry["key"]) != digest:
            raise ValueError(f"recorded run {digest} does not match its own key: the recording is corrupt.")
        item = manifest["checkpoints"].setdefault(digest, {"notebooks": [], "key": entry["key"]})
        if entry["notebook"] not in item["notebooks"]:
            item["notebooks"] = sorted(item["notebooks"] + [entry["notebook"]])
        sources[digest] = Path(recorded) / "adapters"
    for digest, source in sources.items():
        for suffix in SUFFIXES:
            shutil.copyfile(source / (digest + suffix), staging / "adapters" / (digest + suffix))
    _write_manifest(staging, manifest)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return manifest


def mark_verified(notebook: Path, folder: Path | None = None) -> None:
    """Record a notebook's current code hash after a ``MINIBAYESLORA_REQUIRE_CHECKPOINTS=1`` run of it passed."""
    folder = folder or shipped_dir()
    manifest = read_manifest(folder)
    manifest["notebooks"][Path(notebook).stem] = code_digest(notebook)
    _write_manifest(folder, manifest)


def problems(notebooks: list[Path], folder: Path | None = None) -> list[str]:
    """What is wrong with the shipped folder for these notebooks' current code (empty when it is current):
    a notebook whose code changed since its checkpoints were made or verified, a checkpoint whose files are
    missing or whose key does not hash to its name, or one made by another package version."""
    folder = folder or shipped_dir()
    manifest, found = read_manifest(folder), []
    for nb in notebooks:
        stem = Path(nb).stem
        if manifest["notebooks"].get(stem) != code_digest(nb):
            found.append(f"{stem}: its code changed since its checkpoints were made; run "
                         f"`make checkpoints-verify NOTEBOOK={nb}` (or `make checkpoints`)")
    for digest, item in manifest["checkpoints"].items():
        if not all((folder / "adapters" / (digest + s)).exists() for s in SUFFIXES):
            found.append(f"{digest}: files missing")
        elif key_digest(item["key"]) != digest:
            found.append(f"{digest}: its key does not hash to its name")
        elif item["key"].get("version") != __version__:
            found.append(f"{digest}: made by version {item['key'].get('version')}, this is {__version__}")
    return found


def size_bytes(folder: Path | None = None) -> int:
    return sum(p.stat().st_size for p in (folder or shipped_dir()).rglob("*") if p.is_file())


def main(argv: list[str]) -> int:
    usage = "usage: python -m minibayeslora.shipped collect RECORDED NOTEBOOK... | verified NOTEBOOK"
    if argv[:1] == ["collect"] and len(argv) >= 3:
        manifest = collect(Path(argv[1]), [Path(nb) for nb in argv[2:]])
        print(f"shipped {len(manifest['checkpoints'])} checkpoints for {len(manifest['notebooks'])} notebooks "
              f"({size_bytes() / 2**20:.1f} MiB) in {shipped_dir()}")
    elif argv[:1] == ["verified"] and len(argv) == 2:
        mark_verified(Path(argv[1]))
        print(f"{Path(argv[1]).stem}: every fit has its shipped checkpoint; code hash updated")
    else:
        print(usage, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
