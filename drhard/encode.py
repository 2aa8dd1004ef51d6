"""Model -> embedding memmaps.

Rows of a preprocess token memmap (``passages``, ``<mode>-query``) are cut to
``max_len`` by the original's rule (keep ``<s>`` and the final ``</s>``),
padded with the model's pad id (attention 0) and embedded by
``RobertaDot.encode``.  The output is a float32 ``[N, dim]`` memmap in row
order (row ``i`` = offset ``i``).

Speed comes from padding, not from the matrix products (which already run near
the hardware's peak): rows are batched by length, longest first, so a batch of
short passages is not padded to a long one, and the first batch is the largest
(an out-of-memory shows at once, which is why the original padded its first
batches to the full length).  Embeddings are written back to their original
rows, so the order of the output does not depend on the batching.

A killed run must not leave a file that a rerun trusts: the memmap is written
under a temporary name and renamed when complete, and a sidecar
``<file>.info.json`` (rows, dim, max_len, model fingerprint, token fingerprint) is
written only after that.  A file is reused only when its size and its sidecar match,
so embeddings of a preprocess folder that was rebuilt since (same row count, other
tokens) are recomputed.  The disk space of the whole file is reserved when it is
created (``drhard.io.allocate_file``): a disk that is too full is a ``NoSpaceError``
before any encoding, never a ``Bus error`` half-way through a sparse file.

Every encoded batch is checked for NaN and infinity (``NonFiniteError`` naming the
row): a non-finite embedding ranks nothing and would be trusted by every later
step.  A reused file is checked too.

The forward pass runs under ``EncodeForward``, which enters inference mode and
autocast inside its own ``forward``: both are thread-local, and ``DataParallel``
runs each replica in a thread of its own, carrying over grad mode but not
inference mode, and re-entering autocast with its default dtype (fp16, whatever
dtype was asked for).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from .device import autocast
from .errors import NonFiniteError
from .finite import first_nonfinite_row
from .io import DataError, allocate_file, atomic_path, atomic_write

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".info.json"


# --------------------------------------------------------------------------- batching
def cut_lengths(lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Length of each row after the cut (``drhard.io.cut_ids``): ``min(len, max_len)``."""
    return np.minimum(np.asarray(lengths, dtype=np.int64), int(max_len))


def length_sorted_batches(lengths: np.ndarray, max_len: int, batch_size: int) -> List[np.ndarray]:
    """Row indices in batches of similar cut length, longest batch first (stable among equal lengths)."""
    cut = cut_lengths(lengths, max_len)
    order = np.argsort(-cut, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def file_order_batches(n: int, batch_size: int) -> List[np.ndarray]:
    """Row indices in file order, as the original batched them."""
    return [np.arange(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]


def batch_rows(cache, rows: Sequence[int], max_len: int, pad_id: int,
               pad_to: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask of ``rows`` of a ``TokenCache``, cut and padded.

    Row ``r`` becomes ``cache.get(r, max_len)`` followed by ``pad_id``; the
    batch is padded to its longest row, or to ``pad_to``.
    Returns ``(input_ids (B, T) int64, attention_mask (B, T) int64)``.
    """
    idx = np.asarray(rows, dtype=np.int64)
    full = np.asarray(cache.lengths[idx], dtype=np.int64)  # (B,) stored lengths
    cut = np.minimum(full, int(max_len))  # (B,)
    width = int(pad_to) if pad_to else max(1, int(cut.max(initial=0)))
    take = min(width, int(cache.ids.shape[1]))
    order = np.argsort(idx, kind="stable")  # read the memmap in file order
    raw = np.empty((len(idx), take), dtype=np.int64)  # (B, take)
    raw[order] = cache.ids[idx[order], :take]
    mask = np.arange(width)[None, :] < cut[:, None]  # (B, T)
    ids = np.full((len(idx), width), int(pad_id), dtype=np.int64)  # (B, T)
    ids[:, :take] = np.where(mask[:, :take], raw, int(pad_id))
    cut_rows = np.nonzero((cut > 0) & (cut < full))[0]  # rows that lost their tail keep the final </s>
    if len(cut_rows):
        ids[cut_rows, cut[cut_rows] - 1] = cache.ids[idx[cut_rows], full[cut_rows] - 1]
    return ids, mask.astype(np.int64)


# --------------------------------------------------------------------------- model set-up
def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's weights (names, shapes, sums and samples of every tensor).

    Cheap enough for roberta-base; two different checkpoints differ in it.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1).float().cpu()
        step = max(1, flat.numel() // 256)
        sample = torch.cat([flat[:64], flat[::step][:256], flat[-64:]])
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(np.float64(flat.double().sum().item()).tobytes())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:24]


class EncodeForward(torch.nn.Module):
    """``model.encode`` under inference mode and autocast, both entered in ``forward`` itself.

    Inference mode and autocast are thread-local.  ``DataParallel`` calls each
    replica's ``forward`` in a thread of its own, where the caller's
    ``torch.inference_mode()`` does not hold and autocast is re-entered with its
    default dtype (fp16, so bf16 silently became fp16).  Entering both here makes
    them hold in every replica.
    """

    def __init__(self, model: torch.nn.Module, fp16: bool = False, bf16: bool = False):
        super().__init__()
        self.model = model
        self.fp16, self.bf16 = bool(fp16), bool(bf16)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(input_ids.device, self.fp16, self.bf16):
            return self.model.encode(input_ids, attention_mask)  # (B, dim)


def forward_module(model: torch.nn.Module, device: torch.device, multi_gpu: bool = True, fp16: bool = False,
                   bf16: bool = False) -> torch.nn.Module:
    """Move ``model`` to ``device`` in eval mode and wrap it in ``EncodeForward`` (fp16/bf16 autocast);
    in DataParallel too when several GPUs are visible.

    The returned module maps ``(input_ids, attention_mask)`` to embeddings.
    """
    model.to(device).eval()
    module = EncodeForward(model, fp16=fp16, bf16=bf16)
    if multi_gpu and device.type == "cuda" and torch.cuda.device_count() > 1:
        logger.info("encoding on %d GPUs (DataParallel)", torch.cuda.device_count())
        return torch.nn.DataParallel(module)
    return module


def embedding_size(model: torch.nn.Module) -> int:
    return int(getattr(model, "output_embedding_size"))


# --------------------------------------------------------------------------- encoding
def encode_cache(model: torch.nn.Module, cache, max_len: int, batch_size: int, device: torch.device,
                 fp16: bool = False, bf16: bool = False, out: Optional[np.ndarray] = None,
                 sort_by_length: bool = True, pad_first: int = 0, progress: bool = True,
                 desc: str = "encode", multi_gpu: bool = True) -> np.ndarray:
    """Embed every row of ``cache`` (a ``TokenCache``): returns ``out`` (N, dim) float32, row i = offset i.

    ``sort_by_length`` batches rows by length (default); False keeps file order
    as the original did.  ``pad_first`` pads the first that many batches to
    ``max_len`` (the original's 10, to meet out-of-memory early).  ``out`` may
    be a writable memmap.
    """
    n = len(cache)
    dim = embedding_size(model)
    if out is None:
        out = np.empty((n, dim), dtype=np.float32)
    if out.shape != (n, dim):
        raise ValueError(f"output has shape {out.shape}, expected {(n, dim)}")
    batch_size = max(1, int(batch_size))
    if sort_by_length:
        batches = length_sorted_batches(cache.lengths, max_len, batch_size)
    else:
        batches = file_order_batches(n, batch_size)
    module = forward_module(model, device, multi_gpu, fp16=fp16, bf16=bf16)
    where = getattr(cache, "prefix", "token cache")
    pad_id = model.pad_token_id
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    with torch.inference_mode(), tqdm(total=n, desc=desc, unit="row", disable=not progress) as bar:
        for b, rows in enumerate(batches):
            ids, mask = batch_rows(cache, rows, max_len, pad_id, pad_to=max_len if b < pad_first else None)
            if vocab is not None and ids.size and int(ids.max()) >= vocab:
                bad = int(rows[int(np.argmax(ids.max(axis=1)))])
                raise DataError(f"{where}: row {bad} holds token id "
                                f"{int(ids.max())}, beyond the model's vocabulary of {vocab}: the folder was "
                                "tokenized with another tokenizer than the model's")
            ids_t = torch.from_numpy(ids).to(device, non_blocking=True)  # (B, T)
            mask_t = torch.from_numpy(mask).to(device, non_blocking=True)  # (B, T)
            emb = module(ids_t, mask_t).float().cpu().numpy()  # (B, dim)
            bad = first_nonfinite_row(emb)
            if bad is not None:
                precision = " (under fp16/bf16 autocast: an overflow? try without --fp16)" if fp16 or bf16 else ""
                raise NonFiniteError(f"{where}: row {int(rows[bad])} encodes to NaN or infinite values{precision}; "
                                     "the model is not usable as it is, nothing is written")
            out[rows] = emb
            bar.update(len(rows))
    return out


def sidecar_path(path: str) -> str:
    return path + SIDECAR_SUFFIX


def _expected_info(n: int, dim: int, max_len: int, fingerprint: str, tokens: Optional[str] = None) -> dict:
    info = {"rows": int(n), "dim": int(dim), "dtype": "float32", "max_len": int(max_len), "model": fingerprint}
    if tokens is not None:
        info["tokens"] = tokens
    return info


def tokens_fingerprint(cache, edge_rows: int = 1024) -> str:
    """A short hash of a token cache: every row's length and the ids of its first and last rows."""
    h = hashlib.sha256()
    h.update(np.asarray(cache.lengths, dtype=np.int64).tobytes())
    h.update(str(tuple(cache.ids.shape)).encode())
    h.update(np.ascontiguousarray(cache.ids[:edge_rows]).tobytes())
    h.update(np.ascontiguousarray(cache.ids[-edge_rows:]).tobytes())
    return h.hexdigest()[:24]


def read_sidecar(path: str) -> Optional[dict]:
    try:
        with open(sidecar_path(path), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def embeddings_complete(path: str, n: int, dim: int, max_len: int, fingerprint: str,
                        tokens: Optional[str] = None) -> bool:
    """True when ``path`` is a finished float32 (n, dim) memmap of this model at this max_len
    (and, given ``tokens``, of a token cache with that ``tokens_fingerprint``)."""
    if not os.path.exists(path) or os.path.getsize(path) != n * dim * 4:
        return False
    info = read_sidecar(path)
    return info is not None and all(info.get(k) == v for k, v in
                                    _expected_info(n, dim, max_len, fingerprint, tokens).items())


def encode_to_memmap(model: torch.nn.Module, cache, max_len: int, path: str, batch_size: int,
                     device: torch.device, fp16: bool = False, bf16: bool = False, reuse: bool = True,
                     progress: bool = True, desc: Optional[str] = None, multi_gpu: bool = True) -> np.memmap:
    """Embed ``cache`` into the float32 memmap ``path`` (atomically) and return it opened read-only.

    With ``reuse``, a complete file of the same model, tokens and ``max_len``
    (see ``embeddings_complete``) is returned without recomputing.
    """
    n, dim = len(cache), embedding_size(model)
    if n == 0:
        raise DataError(f"{getattr(cache, 'prefix', 'token cache')}: holds no rows, nothing to encode")
    fingerprint = model_fingerprint(model)
    tokens = tokens_fingerprint(cache)
    if reuse and embeddings_complete(path, n, dim, max_len, fingerprint, tokens):
        emb = np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))
        bad = first_nonfinite_row(emb)
        if bad is None:
            logger.info("%s is complete (%d x %d, same model and max_len %d): reusing it", path, n, dim, max_len)
            return emb
        del emb
        logger.warning("%s: row %d holds NaN or infinite values: not reusing it, recomputing", path, bad)
    elif os.path.exists(path):
        logger.info("%s exists but is not a complete embedding file of this model: recomputing", path)
    with atomic_path(path) as tmp:
        # the whole file's blocks are reserved now: a full disk is a NoSpaceError here, not a Bus error later
        allocate_file(tmp, n * dim * 4, f"{n} x {dim} float32 embeddings")
        with contextlib.suppress(FileNotFoundError):
            os.remove(sidecar_path(path))
        out = np.memmap(tmp, dtype=np.float32, mode="r+", shape=(n, dim))
        try:
            encode_cache(model, cache, max_len, batch_size, device, fp16=fp16, bf16=bf16, out=out,
                         progress=progress, desc=desc or os.path.basename(path), multi_gpu=multi_gpu)
            out.flush()
        finally:
            del out
    with atomic_write(sidecar_path(path)) as f:
        json.dump(_expected_info(n, dim, max_len, fingerprint, tokens), f)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))
