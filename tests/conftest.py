"""Shared test set-up: offline, CPU, and the location of ../shared (optional)."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

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


def command(script: str):
    """The ``drhard.commands`` module behind an original script path (``"star/train.py"``): its ``main``,
    ``parse_args`` and ``build_parser`` are what the script runs."""
    import importlib

    from drhard.commands import COMMANDS
    for c in COMMANDS.values():
        if c.script.lstrip("./") == script:
            return importlib.import_module(c.module)
    raise KeyError(f"no command behind {script}")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped, saying why, where none is usable")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def _cuda_unusable_reason():
    """None when torch can use a CUDA GPU, else why not (for the skip message of `gpu` tests)."""
    import torch
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"needs a CUDA GPU: torch {torch.__version__} is a CPU-only build"
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return ("needs a CUDA GPU: CUDA_VISIBLE_DEVICES is empty (tests/conftest.py hides GPUs unless it is set; "
                "run e.g. CUDA_VISIBLE_DEVICES=0,1 python -m pytest -m gpu tests/test_gpu.py)")
    return "needs a CUDA GPU: torch.cuda.is_available() is False (no GPU or no driver visible)"


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _cuda_unusable_reason()
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))
