"""Guards against NaN and infinity: in losses, embeddings and weights.

A non-finite number that slips through silently ruins hours of work: faiss
returns id -1 for a NaN query (so candidate lists come back empty and a loss can
look like a clean 0.0), a NaN embedding row ranks nothing, a NaN weight is saved
into every later checkpoint.  Each check here raises ``NonFiniteError`` naming
what was not finite and where.

``NonFiniteGuard`` is the policy for training steps: a single non-finite loss
(an fp16 overflow, one bad batch) skips that step without touching the weights,
as a gradient scaler would, and training stops with a clear error only after
``max_consecutive`` non-finite steps in a row.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from .errors import NonFiniteError

logger = logging.getLogger(__name__)

CHECK_CHUNK_ROWS = 65536


class NonFiniteGuard:
    """Counts non-finite training steps; ``update`` says whether to skip one, and raises after too many in a row."""

    def __init__(self, max_consecutive: int = 10, what: str = "training loss"):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = int(max_consecutive)
        self.what = what
        self.consecutive = 0
        self.skipped = 0

    def update(self, finite: bool, step: int, value: Optional[float] = None) -> bool:
        """Record step ``step`` (1-based); True when it is non-finite and must be skipped (no update)."""
        if finite:
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.skipped += 1
        shown = "" if value is None else f" ({value})"
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{self.what} is not finite{shown} at step {step} ({self.consecutive} non-finite steps in a row): stopping "
                "(lower the learning rate, check the data, or resume from the last checkpoint)")
        logger.warning("%s is not finite%s at step %d: skipping the step (no update; %d in a row, %d in all; "
                       "training stops after %d in a row)", self.what, shown, step, self.consecutive, self.skipped,
                       self.max_consecutive)
        return True

    def state_dict(self) -> Dict[str, int]:
        return {"consecutive": self.consecutive, "skipped": self.skipped}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.skipped = int(state.get("skipped", 0))


def first_nonfinite_row(array: np.ndarray, chunk_rows: int = CHECK_CHUNK_ROWS) -> Optional[int]:
    """Index of the first row of ``array`` (N, ...) holding NaN or inf, or None; reads a memmap chunk by chunk."""
    n = array.shape[0]
    for start in range(0, n, chunk_rows):
        chunk = np.asarray(array[start:start + chunk_rows])
        ok = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if not ok.all():
            return start + int(np.argmin(ok))
    return None


def checked_chunks(array: np.ndarray, what: str,
                   chunk_rows: int = CHECK_CHUNK_ROWS) -> Iterator[Tuple[int, np.ndarray]]:
    """``(first row, rows as float32)`` of ``array`` (N, D), chunk by chunk, each checked for NaN and inf as it is
    read: the one reader that checks embeddings (``drhard.index.build_index`` fills an index from it, so the bytes
    checked are the bytes indexed, in one pass over a memmap).  A bad row is a ``NonFiniteError`` naming ``what``
    and the row."""
    for start in range(0, array.shape[0], chunk_rows):
        chunk = np.ascontiguousarray(array[start:start + chunk_rows], dtype=np.float32)  # (rows, D), in RAM
        bad = first_nonfinite_row(chunk, chunk_rows)
        if bad is not None:
            raise NonFiniteError(f"{what}: row {start + bad} holds NaN or infinite values")
        yield start, chunk


def check_finite_rows(array: np.ndarray, what: str, chunk_rows: int = CHECK_CHUNK_ROWS) -> None:
    """Raise ``NonFiniteError`` naming ``what`` and the first bad row when ``array`` holds NaN or inf
    (a whole pass of ``checked_chunks``)."""
    for _ in checked_chunks(array, what, chunk_rows):
        pass


def first_nonfinite_parameter(model: torch.nn.Module) -> Optional[str]:
    """Name of the first parameter or buffer of ``model`` holding NaN or inf, or None."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_model_finite(model: torch.nn.Module, what: str) -> None:
    """Raise ``NonFiniteError`` when a weight of ``model`` is NaN or inf (``what`` names the model or the save)."""
    bad = first_nonfinite_parameter(model)
    if bad is not None:
        raise NonFiniteError(f"{what}: weight {bad} holds NaN or infinite values; refusing to save or use it")
