"""Model -> embedding memmaps.

Rows of a preprocess token memmap (``passages``, ``<mode>-query``) are cut to
``max_len`` by the rule of SPEC §4 (keep ``<s>`` and the final ``</s>``),
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
tokens) are recomputed.  Free disk space for the whole file is checked before it is
started.
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
from .io import DataError, atomic_path, atomic_write, check_free_space

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".info.json"


# --------------------------------------------------------------------------- batching
def cut_lengths(lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Length of each row after the SPEC §4 cut: ``min(len, max_len)``."""
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


def forward_module(model: torch.nn.Module, device: torch.device, multi_gpu: bool = True) -> torch.nn.Module:
    """Move ``model`` to ``device`` in eval mode; wrap it in DataParallel when several GPUs are visible.

    The returned module maps ``(input_ids, attention_mask)`` to embeddings.
    """
    model.to(device).eval()
    if multi_gpu and device.type == "cuda" and torch.cuda.device_count() > 1:
        logger.info("encoding on %d GPUs (DataParallel)", torch.cuda.device_count())
        return torch.nn.DataParallel(model)
    return model


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
    module = forward_module(model, device, multi_gpu)
    pad_id = model.pad_token_id
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    with torch.inference_mode(), tqdm(total=n, desc=desc, unit="row", disable=not progress) as bar:
        for b, rows in enumerate(batches):
            ids, mask = batch_rows(cache, rows, max_len, pad_id, pad_to=max_len if b < pad_first else None)
            if vocab is not None and ids.size and int(ids.max()) >= vocab:
                bad = int(rows[int(np.argmax(ids.max(axis=1)))])
                raise DataError(f"{getattr(cache, 'prefix', 'token cache')}: row {bad} holds token id "
                                f"{int(ids.max())}, beyond the model's vocabulary of {vocab}: the folder was "
                                "tokenized with another tokenizer than the model's")
            ids_t = torch.from_numpy(ids).to(device, non_blocking=True)  # (B, T)
            mask_t = torch.from_numpy(mask).to(device, non_blocking=True)  # (B, T)
            with autocast(device, fp16, bf16):
                emb = module(ids_t, mask_t)  # (B, dim)
            out[rows] = emb.float().cpu().numpy()
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
    fingerprint = model_fingerprint(model)
    tokens = tokens_fingerprint(cache)
    if reuse and embeddings_complete(path, n, dim, max_len, fingerprint, tokens):
        logger.info("%s is complete (%d x %d, same model and max_len %d): reusing it", path, n, dim, max_len)
        return np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))
    if os.path.exists(path):
        logger.info("%s exists but is not a complete embedding file of this model: recomputing", path)
    check_free_space(path, n * dim * 4, f"{n} x {dim} float32 embeddings")
    with contextlib.suppress(FileNotFoundError):
        os.remove(sidecar_path(path))
    with atomic_path(path) as tmp:
        out = np.memmap(tmp, dtype=np.float32, mode="w+", shape=(n, dim))
        encode_cache(model, cache, max_len, batch_size, device, fp16=fp16, bf16=bf16, out=out,
                     progress=progress, desc=desc or os.path.basename(path), multi_gpu=multi_gpu)
        out.flush()
        del out
    with atomic_write(sidecar_path(path)) as f:
        json.dump(_expected_info(n, dim, max_len, fingerprint, tokens), f)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))

