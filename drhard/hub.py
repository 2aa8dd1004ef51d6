"""Resolve a model/tokenizer name to a local directory: a folder as is, else the Hugging Face hub.

The hub is asked only when a name is not a local folder and ``HF_HUB_OFFLINE``
is not set (a GPU cluster with internet can then use ``roberta-base`` as the
original README does); offline, the caller's own clear error stands.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from .tokenization import TOKENIZER_FILES

logger = logging.getLogger(__name__)

TOKENIZER_PATTERNS = TOKENIZER_FILES + ("config.json",)
MODEL_PATTERNS = TOKENIZER_PATTERNS + ("model.safetensors", "pytorch_model.bin", "1_Pooling/config.json")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or \
        os.environ.get("TRANSFORMERS_OFFLINE", "0").lower() in ("1", "true", "yes")


def from_hub(name: str, patterns: Sequence[str]) -> Optional[Path]:
    """Download ``patterns`` of hub repo ``name`` into the HF cache; None when offline or unavailable."""
    if offline() or not name or os.path.sep in name.strip("/") and os.path.exists(os.path.dirname(name)):
        return None
    try:
        from huggingface_hub import snapshot_download
        path = Path(snapshot_download(repo_id=name, allow_patterns=list(patterns)))
    except Exception as e:  # noqa: BLE001 - any hub failure means "not available"
        logger.info("%s is not a local folder and the hub did not provide it (%s)", name, e)
        return None
    logger.info("using %s from the Hugging Face hub cache (%s)", name, path)
    return path
