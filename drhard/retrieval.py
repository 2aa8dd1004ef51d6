"""Dense retrieval over preprocess offsets: embed passages and queries, search, write runs.

The steps ``star/inference.py``, ``star/prepare_hardneg.py`` and
``adore/inference.py`` share.  Everything is keyed by preprocess offsets:
query row ``q`` of ``<mode>-query`` is ``qoffset`` q, passage row ``p`` is
``poffset`` p, and rank files read ``qoffset\\tpoffset\\trank``.

Output names (in the output directory, as the original writes them):
``passages.memmap`` / ``passages-id.memmap``, ``<mode>-query.memmap`` /
``<mode>-query-id.memmap`` (float32 embeddings, int32 offsets) and
``<mode>.rank.tsv``.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from . import index as dindex
from .encode import encode_to_memmap
from .io import (TokenCache, atomic_write, read_offset_qrels, remove_stale_tmp, save_array_memmap, token_prefix,
                 write_rank)

logger = logging.getLogger(__name__)

PASSAGES = "passages"


# --------------------------------------------------------------------------- names
def query_name(mode: str) -> str:
    """Token-cache name of a query set in the preprocess dir (``dev-query``)."""
    return f"{mode}-query"


def passage_embedding_path(output_dir: str) -> str:
    return os.path.join(output_dir, "passages.memmap")


def passage_id_path(output_dir: str) -> str:
    return os.path.join(output_dir, "passages-id.memmap")


def query_embedding_path(output_dir: str, mode: str) -> str:
    return os.path.join(output_dir, f"{mode}-query.memmap")


def query_id_path(output_dir: str, mode: str) -> str:
    return os.path.join(output_dir, f"{mode}-query-id.memmap")


def rank_path(output_dir: str, mode: str) -> str:
    return os.path.join(output_dir, f"{mode}.rank.tsv")


def qrel_path(preprocess_dir: str, mode: str) -> str:
    return os.path.join(preprocess_dir, f"{mode}-qrel.tsv")


def dense_retrieval_outputs(output_dir: str, mode: str) -> Dict[str, str]:
    """Label -> path of every file ``dense_retrieval`` writes for ``mode`` (for lineage manifests)."""
    q = query_name(mode)
    return {PASSAGES: passage_embedding_path(output_dir), f"{PASSAGES}-id": passage_id_path(output_dir),
            q: query_embedding_path(output_dir, mode), f"{q}-id": query_id_path(output_dir, mode),
            "rank": rank_path(output_dir, mode)}


# --------------------------------------------------------------------------- sizes
def visible_gpu_count(device: torch.device) -> int:
    return torch.cuda.device_count() if device.type == "cuda" else 0


def total_batch_size(per_device: int, device: torch.device) -> int:
    """``per_device * number of GPUs``, and ``per_device`` on the CPU (the original's was 0 there)."""
    return int(per_device) * max(1, visible_gpu_count(device))


def passage_count(preprocess_dir: str) -> Optional[int]:
    """Rows of the preprocess ``passages`` memmap, from its meta; None when there is none."""
    from .io import DataError, read_meta
    try:
        return read_meta(token_prefix(preprocess_dir, PASSAGES))["total_number"]
    except DataError:
        return None


# --------------------------------------------------------------------------- embedding
def write_offset_ids(path: str, n: int) -> None:
    """``<name>-id.memmap``: int32 offsets 0..n-1 (row i of the embeddings is offset i)."""
    save_array_memmap(path, np.arange(n, dtype=np.int32), np.int32)


def embed_passages(model, preprocess_dir: str, output_dir: str, max_len: int, batch_size: int,
                   device: torch.device, fp16: bool = False, bf16: bool = False, reuse: bool = True) -> np.memmap:
    """``passages.memmap`` (+ ``passages-id.memmap``) in ``output_dir``; a complete file of the same model is reused."""
    os.makedirs(output_dir, exist_ok=True)
    remove_stale_tmp(output_dir)  # temp files of killed runs (live writers' files are kept)
    cache = TokenCache(token_prefix(preprocess_dir, PASSAGES))
    emb = encode_to_memmap(model, cache, max_len, passage_embedding_path(output_dir), batch_size, device,
                           fp16=fp16, bf16=bf16, reuse=reuse, desc="passages")
    write_offset_ids(passage_id_path(output_dir), len(cache))
    return emb


def embed_queries(model, preprocess_dir: str, mode: str, max_len: int, batch_size: int, device: torch.device,
                  output_path: str, id_path: Optional[str] = None, fp16: bool = False, bf16: bool = False,
                  reuse: bool = True) -> np.memmap:
    """Embed ``<mode>-query`` of the preprocess dir into ``output_path`` (+ offsets into ``id_path``)."""
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    cache = TokenCache(token_prefix(preprocess_dir, query_name(mode)))
    emb = encode_to_memmap(model, cache, max_len, output_path, batch_size, device, fp16=fp16, bf16=bf16,
                           reuse=reuse, desc=f"{mode} queries")
    if id_path:
        write_offset_ids(id_path, len(cache))
    return emb


def open_passage_embeddings(path: str, dim: int, n: Optional[int] = None) -> np.memmap:
    """Open precomputed passage embeddings (float32 [n, dim]) for a model of embedding size ``dim``.

    A file of another model's width is refused with a message that says so
    (the original reshaped to a hard-coded 768 and searched garbage).
    """
    from .encode import read_sidecar
    from .io import DataError, open_embeddings
    if not os.path.exists(path):
        raise DataError(f"{path}: passage embedding memmap not found (run star/inference.py first)")
    size = os.path.getsize(path)
    info = read_sidecar(path)
    if info is not None and info.get("dim") not in (None, dim):
        raise DataError(f"{path}: wrong embedding dimension: it holds {info['dim']}-dim embeddings, but the "
                        f"model's embedding size is {dim}")
    if n is not None and size != n * dim * 4 and n > 0 and size % (4 * n) == 0:
        other = (f" or {size // (4 * dim)} passages of dim {dim} (truncated, or another preprocess folder)"
                 if size % (4 * dim) == 0 else "")
        raise DataError(f"{path}: wrong embedding dimension or passage count: {size} bytes are not {n} passages x dim {dim} (the model's "
                        f"embedding size); they are {n} passages of dim {size // (4 * n)} (another model)" + other)
    try:
        return open_embeddings(path, dim=dim, n=n)
    except DataError as e:
        raise DataError(f"{e} [model embedding size {dim}"
                        + (f", {n} passages in the preprocess dir]" if n is not None else "]")) from None


# --------------------------------------------------------------------------- search and runs
def retrieve(passage_emb: np.ndarray, query_emb: np.ndarray, topk: int, gpus: Optional[Sequence[int]] = None,
             search_batch_size: int = 4096, omp_threads: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``topk`` poffsets of every query: ``(scores (Q, k), poffsets (Q, k))``."""
    if passage_emb.shape[1] != query_emb.shape[1]:
        raise ValueError(f"query embeddings have dim {query_emb.shape[1]} but passage embeddings "
                         f"{passage_emb.shape[1]}: they come from different models")
    idx = dindex.build_index(passage_emb, gpus=gpus, omp_threads=omp_threads)
    try:
        return dindex.search(idx, query_emb, topk, batch_size=search_batch_size)
    finally:
        del idx


def write_offset_rank(path: str, poffsets: np.ndarray) -> None:
    """``qoffset\\tpoffset\\trank`` for query rows 0..Q-1 (faiss's -1 fillers skipped); atomic."""
    write_rank(path, range(poffsets.shape[0]), poffsets)


def offset_run(poffsets: np.ndarray) -> "OrderedDict[int, List[int]]":
    return OrderedDict((q, [int(p) for p in row if p >= 0]) for q, row in enumerate(poffsets))


def evaluate_offsets(qrels_file: str, poffsets: np.ndarray, k: int = 10) -> Dict[str, float]:
    """MRR@k (MS MARCO: every qrels query in the denominator) and QueriesRanked of a retrieval."""
    from .metrics import mrr_at_k
    qrels = read_offset_qrels(qrels_file)
    run = offset_run(poffsets)
    return {f"MRR @{k}": mrr_at_k(qrels, run, k), "QueriesRanked": len(run)}


def hard_negatives(poffsets: np.ndarray, qrels: Mapping[int, Sequence[int]], topk: int) -> List[np.ndarray]:
    """Per query row, the first ``topk`` retrieved poffsets that are not relevant, in rank order.

    ``poffsets`` (Q, K) from ``retrieve``; ``qrels`` {qoffset: relevant poffsets}.
    Vectorised: a (Q, K) mask of relevant or missing (-1) entries, then a
    stable sort that moves the kept entries to the front of each row.
    """
    ids = np.asarray(poffsets)
    nq = ids.shape[0]
    drop = ids < 0  # (Q, K)
    qs = np.fromiter((q for q, ps in qrels.items() if 0 <= q < nq for _ in ps), dtype=np.int64)
    ps = np.fromiter((p for q, ps in qrels.items() if 0 <= q < nq for p in ps), dtype=np.int64)
    if len(qs):
        hit_pair, hit_col = np.nonzero(ids[qs] == ps[:, None])  # (P, K) -> matches
        drop[qs[hit_pair], hit_col] = True
    order = np.argsort(drop, axis=1, kind="stable")[:, :topk]  # kept entries first, rank order kept
    kept = np.take_along_axis(ids, order, axis=1)  # (Q, topk)
    counts = np.minimum((~drop).sum(axis=1), topk)
    return [kept[q, :counts[q]] for q in range(nq)]


def write_hard_json(path: str, negatives: Sequence[np.ndarray], qoffsets: Optional[Sequence[int]] = None) -> None:
    """``hard.json``: ``{"<qoffset>": [poffset, ...]}`` streamed (it is large for MS MARCO), atomic."""
    qoffsets = range(len(negatives)) if qoffsets is None else qoffsets
    with atomic_write(path) as f:
        f.write("{")
        for i, (q, negs) in enumerate(zip(qoffsets, negatives)):
            f.write(("" if i == 0 else ", ") + json.dumps(str(int(q))) + ": " + json.dumps([int(p) for p in negs]))
        f.write("}")


def dense_retrieval(model, preprocess_dir: str, output_dir: str, mode: str, max_query_length: int,
                    max_doc_length: int, batch_size: int, device: torch.device, topk: int,
                    faiss_gpus: Optional[Sequence[int]] = None, fp16: bool = False,
                    bf16: bool = False) -> np.ndarray:
    """The star/inference pipeline: passage and ``mode`` query embeddings, exact search, ``<mode>.rank.tsv``.

    Returns the (Q, topk) poffsets.
    """
    if os.path.realpath(output_dir) == os.path.realpath(preprocess_dir):
        from .io import DataError
        raise DataError(f"{output_dir}: the output dir is the preprocess dir; embeddings named "
                        "passages.memmap / <mode>-query.memmap would overwrite its token memmaps")
    p_emb = embed_passages(model, preprocess_dir, output_dir, max_doc_length, batch_size, device, fp16, bf16)
    q_emb = embed_queries(model, preprocess_dir, mode, max_query_length, batch_size, device,
                          query_embedding_path(output_dir, mode), query_id_path(output_dir, mode), fp16, bf16)
    _, poffsets = retrieve(p_emb, q_emb, topk, gpus=faiss_gpus)
    write_offset_rank(rank_path(output_dir, mode), poffsets)
    logger.info("wrote %s (%d queries, top %d)", rank_path(output_dir, mode), len(poffsets), topk)
    return poffsets
