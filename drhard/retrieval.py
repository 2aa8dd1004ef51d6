"""Dense retrieval over preprocess offsets: embed passages and queries, search, write runs.

The steps ``star/inference.py``, ``star/prepare_hardneg.py`` and
``adore/inference.py`` share.  Everything is keyed by preprocess offsets:
query row ``q`` of ``<mode>-query`` is ``qoffset`` q, passage row ``p`` is
``poffset`` p, and rank files read ``qoffset\\tpoffset\\trank``.

Output names (in the output directory, as the original writes them) come from
``drhard.io`` (``passage_embedding_path``, ``query_embedding_path``, ``rank_path``...):
float32 embeddings, int32 offsets and the rank file of each mode.

The scripts check every input they will read (``open_token_cache``,
``drhard.dataset.check_qrels_offsets``, ``open_passage_embeddings``) and that the output folder
takes files (``prepare_output_dir``) before the first long step, so a bad file
fails in seconds, not after hours of encoding.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from . import index as dindex
from .cli import naming_output
from .device import resolve_device
from .encode import embeddings_complete, embedding_size, encode_to_memmap, model_fingerprint, tokens_fingerprint
from .errors import DataError, data_error
from .finite import check_model_finite
from .io import (PASSAGES, TokenCache, atomic_write, check_free_space, check_no_interrupted_commit, meta_path,
                 passage_embedding_path, passage_id_path, query_embedding_path, query_id_path, query_name, rank_path,
                 read_meta, remove_stale_tmp, save_array_memmap, token_memmap_path, token_prefix, write_rank)
from .lineage import check_tokenizer_lineage
from .model import RobertaDot

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- outputs
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
    """Rows of the preprocess ``passages`` memmap, from its meta; None when the folder has no passages meta.

    Any other problem (an interrupted preprocess commit, a meta that is not JSON or not the one the
    manifest records) is the ``DataError`` of ``read_meta``."""
    prefix = token_prefix(preprocess_dir, PASSAGES)
    check_no_interrupted_commit(preprocess_dir)
    if not os.path.exists(meta_path(prefix)):
        return None
    return read_meta(prefix)["total_number"]


# --------------------------------------------------------------------------- checks before the long work
@dataclass
class Encoder:
    """The model of an inference program and how it runs."""
    model: RobertaDot
    device: torch.device
    batch_size: int  # per step, over every visible GPU (or the CPU)
    tokenizer: dict  # the lineage record of its tokenizer (lineage.check_tokenizer_lineage)


def load_encoder(model_dir: str, preprocess_dir: str, per_device_batch_size: int, no_cuda: bool = False,
                 allow_tokenizer_mismatch: bool = False) -> Encoder:
    """Load and check the model of an inference program before any encoding: its tokenizer made the token ids
    of ``preprocess_dir`` (or ``allow_tokenizer_mismatch``), it loads, and no weight is NaN or infinite."""
    tokenizer = check_tokenizer_lineage(preprocess_dir, model_dir, allow_tokenizer_mismatch)
    device = resolve_device(no_cuda)
    model = RobertaDot.from_pretrained(model_dir)
    check_model_finite(model, model_dir)
    batch_size = total_batch_size(per_device_batch_size, device)
    logger.info("model %s on %s, batch size %d", model_dir, device, batch_size)
    return Encoder(model, device, batch_size, tokenizer)


def open_token_cache(preprocess_dir: str, name: str) -> TokenCache:
    """The preprocess token cache ``name``, fully checked (meta, memmap size, lengths); an empty one is an error.

    A query set with no rows passes preprocess with a warning; encoding it would come
    only after the whole corpus, so it is refused here, naming the file.
    """
    prefix = token_prefix(preprocess_dir, name)
    meta = read_meta(prefix)
    if meta["total_number"] < 1:
        raise data_error(token_memmap_path(prefix), None,
                         f"holds no rows (the {name} set is empty: its input file had no lines): nothing to encode")
    if meta["width"] < 1:
        raise data_error(meta_path(prefix), None, f"row width {meta['width']} is not positive")
    return TokenCache(prefix)


def read_eval_qrels(path: str):
    """The judgments of ``path`` for printing an MRR (``drhard.metrics.read_qrels``), read before any work;
    None when the file is absent or has no judgment line (a mode without qrels: nothing to evaluate)."""
    from .metrics import read_qrels
    if not os.path.exists(path):
        return None
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a qrels file")
    with open(path, "rb") as f:
        if not any(line.strip() for line in f):
            logger.warning("%s has no judgments: the retrieval is not evaluated", path)
            return None
    return read_qrels(path)


def prepare_output_dir(path: str) -> None:
    """Create ``path`` and prove that it takes files (one is created and removed), so that a read-only
    or impossible output folder is an ``OSError`` before the long work, not after it."""
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=f".write-test.tmp-{os.getpid()}-", dir=path)
    os.close(fd)
    os.remove(probe)


def check_embedding_space(model, output_dir: str, files: Sequence[Tuple[str, TokenCache, int]]) -> None:
    """Free space for every embedding file of ``files`` (``(path, cache, max_len)``) that is not reusable,
    checked together before the first is written (each file's own blocks are reserved when it is created)."""
    fingerprint, dim, need = model_fingerprint(model), embedding_size(model), 0
    for path, cache, max_len in files:
        if not embeddings_complete(path, len(cache), dim, max_len, fingerprint, tokens_fingerprint(cache)):
            need += len(cache) * dim * 4
    if need:
        check_free_space(output_dir, need, f"{len(files)} embedding files ({dim}-dim float32)")


# --------------------------------------------------------------------------- embedding
def write_offset_ids(path: str, n: int) -> None:
    """``<name>-id.memmap``: int32 offsets 0..n-1 (row i of the embeddings is offset i)."""
    with naming_output(path):
        save_array_memmap(path, np.arange(n, dtype=np.int32), np.int32)


def embed_passages(model, preprocess_dir: str, output_dir: str, max_len: int, batch_size: int,
                   device: torch.device, fp16: bool = False, bf16: bool = False, reuse: bool = True) -> np.memmap:
    """``passages.memmap`` (+ ``passages-id.memmap``) in ``output_dir``; a complete file of the same model is reused."""
    os.makedirs(output_dir, exist_ok=True)
    remove_stale_tmp(output_dir)  # temp files of killed runs (live writers' files are kept)
    cache = open_token_cache(preprocess_dir, PASSAGES)
    emb = encode_to_memmap(model, cache, max_len, passage_embedding_path(output_dir), batch_size, device,
                           fp16=fp16, bf16=bf16, reuse=reuse, desc="passages")
    write_offset_ids(passage_id_path(output_dir), len(cache))
    return emb


def embed_queries(model, preprocess_dir: str, mode: str, max_len: int, batch_size: int, device: torch.device,
                  output_path: str, id_path: Optional[str] = None, fp16: bool = False, bf16: bool = False,
                  reuse: bool = True) -> np.memmap:
    """Embed ``<mode>-query`` of the preprocess dir into ``output_path`` (+ offsets into ``id_path``)."""
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    cache = open_token_cache(preprocess_dir, query_name(mode))
    emb = encode_to_memmap(model, cache, max_len, output_path, batch_size, device, fp16=fp16, bf16=bf16,
                           reuse=reuse, desc=f"{mode} queries")
    if id_path:
        write_offset_ids(id_path, len(cache))
    return emb


def open_passage_embeddings(path: str, dim: int, n: Optional[int] = None) -> np.memmap:
    """Open precomputed passage embeddings (float32 [n, dim]) for a model of embedding size ``dim``.

    A file of another model's width is refused with a message that says so
    (the original reshaped to a hard-coded 768 and searched garbage).  Its values
    are checked by ``passage_index``, as the index is filled.
    """
    from .encode import read_sidecar
    from .io import open_embeddings
    if not os.path.exists(path):
        raise DataError(f"{path}: passage embedding memmap not found (run star/inference.py first)")
    size = os.path.getsize(path)
    if size == 0:
        raise DataError(f"{path}: holds no passage embeddings (empty file)")
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
        emb = open_embeddings(path, dim=dim, n=n)
    except DataError as e:
        raise DataError(f"{e} [model embedding size {dim}"
                        + (f", {n} passages in the preprocess dir]" if n is not None else "]")) from None
    return emb


# --------------------------------------------------------------------------- search and runs
def passage_index(passage_emb: np.ndarray, path: str, gpus: Optional[Sequence[int]] = None,
                  omp_threads: Optional[int] = None):
    """The exact search index over passage embeddings (the file ``path``), every row checked for NaN/inf as it is
    added (``drhard.index.build_index(check_finite=...)``): the one check of passage embeddings, for ADORE's
    training and inference and STAR inference alike.  A bad row is a ``NonFiniteError`` naming the file and row."""
    return dindex.build_index(passage_emb, gpus=gpus, omp_threads=omp_threads,
                              check_finite=f"{path} (passage embeddings)")


def search_index(index, query_emb: np.ndarray, topk: int, batch_size: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``topk`` poffsets of every query: ``(scores (Q, k), poffsets (Q, k))``."""
    if index.d != query_emb.shape[1]:
        raise ValueError(f"query embeddings have dim {query_emb.shape[1]} but passage embeddings "
                         f"{index.d}: they come from different models")
    return dindex.search(index, query_emb, topk, batch_size=batch_size)


def write_offset_rank(path: str, poffsets: np.ndarray) -> None:
    """``qoffset\\tpoffset\\trank`` for query rows 0..Q-1 (faiss's -1 fillers skipped); atomic."""
    with naming_output(path):
        write_rank(path, range(poffsets.shape[0]), poffsets)


def offset_run(poffsets: np.ndarray) -> "OrderedDict[int, List[int]]":
    return OrderedDict((q, [int(p) for p in row if p >= 0]) for q, row in enumerate(poffsets))


def evaluate_offsets(qrels, poffsets: np.ndarray, k: int = 10, min_rel: Optional[int] = None) -> Dict[str, float]:
    """MRR@k and QueriesRanked of a retrieval, as ``msmarco_eval.py`` prints them for its rank file.

    ``qrels``: a qrels file or what ``read_eval_qrels`` returned.  Official semantics
    (``drhard.metrics``): every qrels line is relevant (``min_rel`` None), every qrels
    query is in the denominator; QueriesRanked counts the queries with a ranked passage.
    """
    from .metrics import mrr_at_k, read_qrels
    if isinstance(qrels, (str, os.PathLike)):
        qrels = read_qrels(str(qrels))
    run = OrderedDict((str(q), [str(p) for p in ps]) for q, ps in offset_run(poffsets).items() if ps)
    return {f"MRR @{k}": mrr_at_k(qrels, run, k, min_rel), "QueriesRanked": len(run)}


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
    with naming_output(path), atomic_write(path) as f:
        f.write("{")
        for i, (q, negs) in enumerate(zip(qoffsets, negatives)):
            f.write(("" if i == 0 else ", ") + json.dumps(str(int(q))) + ": " + json.dumps([int(p) for p in negs]))
        f.write("}")


def check_not_preprocess_dir(output_dir: str, preprocess_dir: str) -> None:
    """The embeddings' names (``passages.memmap``, ``<mode>-query.memmap``) are the token memmaps' names."""
    if os.path.realpath(output_dir) == os.path.realpath(preprocess_dir):
        raise DataError(f"{output_dir}: the output dir is the preprocess dir; embeddings named "
                        "passages.memmap / <mode>-query.memmap would overwrite its token memmaps")


def dense_retrieval(model, preprocess_dir: str, output_dir: str, mode: str, max_query_length: int,
                    max_doc_length: int, batch_size: int, device: torch.device, topk: int,
                    faiss_gpus: Optional[Sequence[int]] = None, fp16: bool = False,
                    bf16: bool = False) -> np.ndarray:
    """The star/inference pipeline: passage and ``mode`` query embeddings, exact search, ``<mode>.rank.tsv``.

    Every input and the output folder are checked first, and the free space for
    both embedding files.  Returns the (Q, topk) poffsets.
    """
    check_not_preprocess_dir(output_dir, preprocess_dir)
    passages = open_token_cache(preprocess_dir, PASSAGES)
    queries = open_token_cache(preprocess_dir, query_name(mode))
    prepare_output_dir(output_dir)
    check_embedding_space(model, output_dir, [(passage_embedding_path(output_dir), passages, max_doc_length),
                                              (query_embedding_path(output_dir, mode), queries, max_query_length)])
    p_emb = embed_passages(model, preprocess_dir, output_dir, max_doc_length, batch_size, device, fp16, bf16)
    q_emb = embed_queries(model, preprocess_dir, mode, max_query_length, batch_size, device,
                          query_embedding_path(output_dir, mode), query_id_path(output_dir, mode), fp16, bf16)
    index = passage_index(p_emb, passage_embedding_path(output_dir), gpus=faiss_gpus)
    _, poffsets = search_index(index, q_emb, topk)
    del index
    write_offset_rank(rank_path(output_dir, mode), poffsets)
    logger.info("wrote %s (%d queries, top %d)", rank_path(output_dir, mode), len(poffsets), topk)
    return poffsets
