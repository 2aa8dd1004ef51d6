"""Shared test set-up: offline, the location of ../shared (optional), helpers every test file uses, and the
skip of ``gpu`` tests where no GPU is usable (markers: setup.cfg).

GPUs are not hidden from the tests (the ``gpu`` tests need them); a subprocess that must run on the CPU
gets ``cpu_env()``."""
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DRHARD_SHARED", REPO.parent / "shared"))


def shared_path(*parts) -> Path:
    """A path under ../shared, or skip the test when it is absent (a user's machine)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present")
    return p


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """One tiny preprocess folder with its hard.json and init model (tests/tinyprep.py), made once."""
    from tinyprep import make_tiny_preprocess
    return make_tiny_preprocess(tmp_path_factory.mktemp("tiny") / "t")["root"]


@pytest.fixture
def tiny(tiny_base, tmp_path) -> dict:
    """A copy of ``tiny_base`` for one test (which may change its files): the paths ``preprocess``, ``hard``,
    ``init`` and ``root``."""
    root = tmp_path / "t"
    shutil.copytree(tiny_base, root)
    return {"preprocess": root / "preprocess", "hard": root / "hard.json", "init": root / "init", "root": root}


def cpu_env(**extra) -> dict:
    """The environment for a subprocess of a test: offline, on the CPU (``CUDA_VISIBLE_DEVICES`` empty)."""
    return dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false", **extra)


def command(script: str):
    """The ``drhard.commands`` module behind an original script path (``"star/train.py"``): its ``main``,
    ``parse_args`` and ``build_parser`` are what the script runs."""
    import importlib

    from drhard.commands import COMMANDS
    for c in COMMANDS.values():
        if c.script.lstrip("./") == script:
            return importlib.import_module(c.module)
    raise KeyError(f"no command behind {script}")


def _cuda_unusable_reason():
    """None when torch can use a CUDA GPU, else why not (for the skip message of `gpu` tests)."""
    import torch
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"needs a CUDA GPU: torch {torch.__version__} is a CPU-only build"
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return "needs a CUDA GPU: CUDA_VISIBLE_DEVICES is set and empty in this environment"
    return "needs a CUDA GPU: torch.cuda.is_available() is False (no GPU or no driver visible)"


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _cuda_unusable_reason()
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))
