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
