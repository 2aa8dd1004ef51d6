"""BM25 negatives: top-k BM25 passages that are not relevant, per training query.

The BM25-Neg warmup of the paper trains on these (``hard.json``, the same
format as ``star/prepare_hardneg.py`` writes), so a warmup model can be
trained from a plain pretrained encoder without the ANCE checkpoint.  BM25
itself comes from the ``bm25s`` library (Lucene scoring; k1=0.9, b=0.4 by
default as Anserini uses for MS MARCO).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .io import (DataError, atomic_write, hard_json_path, load_offset_map, pid2offset_path, qid2offset_path, qrel_path,
                 rank_path, read_offset_qrels, write_rank)
from .rawdata import dataset_files, read_collection, read_queries

logger = logging.getLogger(__name__)


def corpus_by_offset(data_dir: str, data_type: str, preprocess_dir: str) -> List[str]:
    """Texts of the collection ordered by passage offset (the memmap row preprocess gave them)."""
    map_path = pid2offset_path(preprocess_dir)
    pid2offset = load_offset_map(map_path)
    texts: List[str] = [""] * len(pid2offset)
    got = np.zeros(len(pid2offset), dtype=bool)
    path = dataset_files(data_dir, data_type)["collection"]
    for pid, text in read_collection(path, data_type):
        off = pid2offset.get(pid)
        if off is None:
            continue
        if not 0 <= off < len(texts):
            raise DataError(f"{map_path}: offset {off} of pid {pid} is not a row "
                            f"(0..{len(texts) - 1})")
        if got[off]:
            raise DataError(f"{path}: passage id {pid} appears twice")
        texts[off] = text
        got[off] = True
    seen = int(got.sum())
    if seen != len(pid2offset):
        raise DataError(f"{path}: the collection holds {seen} of the {len(pid2offset)} passages of "
                        f"{preprocess_dir} (another collection?)")
    return texts


def queries_by_offset(data_dir: str, data_type: str, preprocess_dir: str, mode: str) -> Tuple[List[int], List[str]]:
    qid2offset = load_offset_map(qid2offset_path(preprocess_dir, mode))
    found: Dict[int, str] = {}
    path = dataset_files(data_dir, data_type)[f"{mode}_queries"]
    for qid, text in read_queries(path):
        if qid in qid2offset:
            if qid2offset[qid] in found:
                raise DataError(f"{path}: query id {qid} appears twice")
            found[qid2offset[qid]] = text
    missing = len(qid2offset) - len(found)
    if missing:
        raise DataError(f"{path}: {missing} {mode} queries of {preprocess_dir} are not in the query file")
    offsets = sorted(found)
    return offsets, [found[o] for o in offsets]


def bm25_search(corpus: Sequence[str], queries: Sequence[str], k: int, k1: float = 0.9, b: float = 0.4,
                threads: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``k`` corpus rows per query: (ids (Q, k) int64, scores (Q, k) float32)."""
    import bm25s
    k = min(k, len(corpus))
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(bm25s.tokenize(list(corpus), stopwords="en", show_progress=True), show_progress=True)
    q_tokens = bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
    ids, scores = retriever.retrieve(q_tokens, k=k, n_threads=threads, show_progress=True)
    return np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32)


def mine_bm25_negatives(data_dir: str, data_type: str, preprocess_dir: str, output_dir: str, mode: str = "train",
                        topk: int = 200, k1: float = 0.9, b: float = 0.4, threads: int = 0) -> Dict[str, List[int]]:
    """Write ``hard.json`` and the ``mode`` rank file (offsets) into ``output_dir`` from BM25; return the hard lists."""
    corpus = corpus_by_offset(data_dir, data_type, preprocess_dir)
    qoffsets, texts = queries_by_offset(data_dir, data_type, preprocess_dir, mode)
    rels = read_offset_qrels(qrel_path(preprocess_dir, mode))
    logger.info("BM25 over %d passages for %d %s queries (top %d)", len(corpus), len(texts), mode, topk)
    ids, _ = bm25_search(corpus, texts, topk + 10 if topk + 10 <= len(corpus) else len(corpus), k1, b, threads)
    hard: Dict[str, List[int]] = {}
    for q, row in zip(qoffsets, ids):
        relevant = set(rels.get(q, ()))
        hard[str(q)] = [int(p) for p in row if int(p) not in relevant][:topk]
    os.makedirs(output_dir, exist_ok=True)
    write_rank(rank_path(output_dir, mode), qoffsets, ids)
    with atomic_write(hard_json_path(output_dir)) as f:
        json.dump(hard, f)
    return hard
