import os
import subprocess
import sys

import pytest
import torch

from minibayeslora import config


def _profile_in_subprocess(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MINIBAYESLORA_")}
    out = subprocess.run([sys.executable, "-c", "from minibayeslora import config; print(config.PROFILE, config.SMOKE)"],
                         env={**clean, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_profile_from_environment():
    default = "gpu" if torch.cuda.is_available() else "cpu"
    assert _profile_in_subprocess() == f"{default} False"
    assert _profile_in_subprocess(MINIBAYESLORA_SMOKE="1") == "smoke True"
    assert _profile_in_subprocess(MINIBAYESLORA_SMOKE="0") == f"{default} False"
    assert _profile_in_subprocess(MINIBAYESLORA_SMOKE="1", MINIBAYESLORA_PROFILE="cpu") == "cpu False"


def test_bad_forced_profile_is_one_clear_error():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MINIBAYESLORA_")}
    out = subprocess.run([sys.executable, "-c", "import minibayeslora.config"],
                         env={**clean, "MINIBAYESLORA_PROFILE": "tpu"}, capture_output=True, text=True)
    assert out.returncode != 0 and "MINIBAYESLORA_PROFILE='tpu' is not one of" in out.stderr


def test_by_profile():
    assert config.by_profile(smoke=1, cpu=2, gpu=3, profile="smoke") == 1
    assert config.by_profile(smoke=1, cpu=2, gpu=3, profile="cpu") == 2
    assert config.by_profile(smoke=1, cpu=2, gpu=3, profile="gpu") == 3
    assert config.by_profile(smoke=1, cpu=2, profile="gpu") == 2
    assert config.by_profile(smoke="s", cpu="c") == {"smoke": "s", "cpu": "c", "gpu": "c"}[config.PROFILE]
    with pytest.raises(ValueError, match="profile must be one of"):
        config.by_profile(1, 2, profile="laptop")


def test_seed_everything_reproduces_all_generators():
    import random

    import numpy as np

    def draw():
        g = config.seed_everything(123)
        return random.random(), np.random.rand(), torch.rand(3).tolist(), torch.rand(2, generator=g).tolist()

    assert draw() == draw()
    first = draw()
    config.seed_everything(124)
    assert torch.rand(3).tolist() != first[2]
    with pytest.raises(ValueError):
        config.seed_everything(-1)


def test_device_and_cache_dir(tmp_path, monkeypatch):
    assert config.device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("MINIBAYESLORA_CACHE", str(tmp_path / "c"))
    path = config.cache_dir("prefix")
    assert path == tmp_path / "c" / "prefix" and path.is_dir()
    monkeypatch.delenv("MINIBAYESLORA_CACHE")
    assert str(config.cache_dir()).startswith(os.path.expanduser("~"))


def test_package_import_is_light():
    code = "import sys, minibayeslora; print(sorted(m for m in ('transformers', 'peft', 'bitsandbytes', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_private_rng_seeds_inside_and_restores_outside():
    torch.manual_seed(5)
    expected_after = torch.rand(4)
    torch.manual_seed(5)
    with config.private_rng(0):
        inside = torch.rand(4)
    assert torch.equal(torch.rand(4), expected_after), "the caller's stream moved"
    torch.manual_seed(0)
    assert torch.equal(inside, torch.rand(4)), "the block's draws are those of seed 0"


def test_write_atomically_replaces_whole_files_and_cleans_up(tmp_path):
    import pytest

    target = tmp_path / "state.json"
    target.write_text("old")

    def interrupted(tmp):
        tmp.write_text("half of the new")
        raise KeyboardInterrupt   # as if the reader pressed stop mid-write

    with pytest.raises(KeyboardInterrupt):
        config.write_atomically(target, interrupted)
    assert target.read_text() == "old", "an interrupted write leaves the old file whole"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"], "and no temporary file behind"
    config.write_atomically(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
