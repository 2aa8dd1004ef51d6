"""Training data for the warmup baselines and STAR: items, negatives and collation.

One item per training query (as in the original): the query, one positive
drawn from its relevant passages, and ``hard_num`` negatives that are either
static hard negatives from ``hard.json`` (STAR; BM25-Neg when the file came
from BM25), uniformly random passages (Rand-Neg), or none (Inbatch-Neg).

Random draws are seeded by ``(seed, epoch, item)`` so that a run resumed from
a checkpoint sees exactly the items an uninterrupted run would.
"""
from __future__ import annotations

import json
import logging
import os
import random
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .io import (PASSAGES, DataError, TokenCache, data_error, qrel_path, query_name, read_meta, read_offset_qrels,
                 token_memmap_path, token_prefix)

logger = logging.getLogger(__name__)

NEGATIVE_TYPES = ("star", "inbatch", "random")


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def load_hardneg(path: str, n_passages: int, n_queries: Optional[int] = None) -> Dict[int, List[int]]:
    """``hard.json``: {str(qoffset): [poffset, ...]} -> {qoffset: [poffset, ...]}.

    Every malformation is a ``DataError`` naming the file (and the line of a
    JSON syntax or UTF-8 error): a key that is not a query offset (or, with
    ``n_queries``, not a row of the query memmap), a key given twice, a value
    that is not a list of ints, a passage offset outside ``0..n_passages-1``.
    """
    if not os.path.exists(path):
        raise data_error(path, None, "hard-negative file not found (run star/prepare_hardneg.py "
                         "or star/bm25_hardneg.py first)")
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        raise data_error(path, 1, "starts with a UTF-8 byte-order mark (remove it)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise data_error(path, data.count(b"\n", 0, e.start) + 1, f"not valid UTF-8 ({e.reason})") from None
    try:
        raw = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as e:
        raise data_error(path, None, f"key {e.args[0]!r} appears twice") from None
    except json.JSONDecodeError as e:
        raise data_error(path, e.lineno, f"not valid JSON ({e.msg}, column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise data_error(path, None, f"not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise data_error(path, None, "expected a JSON object {query offset: [passage offsets]}")
    out: Dict[int, List[int]] = {}
    for k, v in raw.items():
        if not (k.isascii() and k.isdigit()):
            raise data_error(path, None, f"key {k!r} is not a query offset (a non-negative integer)")
        q = int(k)
        if q in out:
            raise data_error(path, None, f"key {k!r} names query offset {q} again")
        if n_queries is not None and q >= n_queries:
            raise data_error(path, None, f"query offset {q} is not a row of the query memmap ({n_queries} rows): "
                             "hard.json from another preprocess folder?")
        if not isinstance(v, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in v):
            raise data_error(path, None, f"query {k}: expected a list of passage offsets (integers)")
        bad = [p for p in v if p < 0 or p >= n_passages]
        if bad:
            raise data_error(path, None, f"query {k}: passage offset {bad[0]} outside 0..{n_passages - 1} "
                             "(hard.json from another preprocess folder?)")
        out[q] = v
    return out


def check_hardneg_coverage(path: str, hard: Dict[int, List[int]], qoffsets: Sequence[int],
                           hard_num: int) -> None:
    """Every training query needs at least ``hard_num`` hard negatives."""
    missing = [q for q in qoffsets if q not in hard]
    short = [q for q in qoffsets if q in hard and len(hard[q]) < hard_num]
    if missing or short:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(qoffsets)} training queries have no entry (e.g. {missing[:5]})")
        if short:
            parts.append(f"{len(short)} have fewer than --hard_num {hard_num} negatives (e.g. {short[:5]})")
        raise data_error(path, None, "; ".join(parts) + ". hard.json must be mined for the TRAIN queries "
                         "(star/prepare_hardneg.py --mode train) from this preprocess folder")


def open_nonempty_cache(preprocess_dir: str, name: str, what: str) -> TokenCache:
    """The token cache ``name`` of ``preprocess_dir``, checked complete; an empty one is a ``DataError`` naming it."""
    prefix = token_prefix(preprocess_dir, name)
    if read_meta(prefix)["total_number"] == 0:
        raise data_error(token_memmap_path(prefix), None, f"holds no {what} (0 rows): nothing to train on "
                         "(did preprocess.py read an empty file?)")
    return TokenCache(prefix)


def check_qrels_offsets(path: str, qrels: Mapping[int, Sequence[int]], n_queries: int, n_passages: int) -> None:
    """Every query offset of ``qrels`` is a row of the query cache and every passage offset a passage row."""
    bad_q = [q for q in qrels if not 0 <= q < n_queries]
    if bad_q:
        raise DataError(f"{path}: query offsets {bad_q[:5]} are not rows of the query cache ({n_queries} rows): "
                        "preprocess outputs do not match")
    bad_p = sorted({p for ps in qrels.values() for p in ps if not 0 <= p < n_passages})
    if bad_p:
        raise DataError(f"{path}: passage offsets {bad_p[:5]} are not rows of passages ({n_passages} rows): "
                        "preprocess outputs do not match")


def training_qrels(path: str, n_queries: int, n_passages: int) -> Dict[int, List[int]]:
    """{qoffset: relevant poffsets} of the offset qrels ``path`` for the queries with a relevant passage
    (relevance >= 1), offsets checked against the caches; none at all is a ``DataError``."""
    rels = read_offset_qrels(path)
    check_qrels_offsets(path, rels, n_queries, n_passages)
    rels = {q: ps for q, ps in rels.items() if ps}
    if not rels:
        raise data_error(path, None, "no relevant (query, passage) pair to train on")
    return rels


class QueryDataset(Dataset):
    """The queries of ``mode`` that have a relevant passage, in offset order; item ``i`` is
    ``(qoffset, query ids cut to max_query_length)`` and ``rels[qoffset]`` its relevant poffsets.

    The query cache and the qrels are checked (an empty cache, offsets outside the caches, no relevant
    pair are each a ``DataError``).  ADORE trains on these items; STAR's items extend them.
    """

    def __init__(self, preprocess_dir: str, max_query_length: int, n_passages: int, mode: str = "train"):
        self.queries = open_nonempty_cache(preprocess_dir, query_name(mode), "queries")
        self.rels = training_qrels(qrel_path(preprocess_dir, mode), len(self.queries), n_passages)
        self.qoffsets = sorted(self.rels)
        self.max_query_length = max_query_length

    def __len__(self) -> int:
        return len(self.qoffsets)

    def __getitem__(self, i: int):
        q = self.qoffsets[i]
        return q, self.queries.get(q, self.max_query_length)


class TrainQueryDataset(QueryDataset):
    """Items for STAR / Inbatch-Neg / Rand-Neg training."""

    def __init__(self, preprocess_dir: str, max_query_length: int, max_doc_length: int,
                 negative_type: str = "star", hardneg_path: Optional[str] = None, hard_num: int = 1,
                 seed: int = 42, mode: str = "train"):
        if negative_type not in NEGATIVE_TYPES:
            raise ValueError(f"negative type must be one of {NEGATIVE_TYPES}")
        self.docs = open_nonempty_cache(preprocess_dir, PASSAGES, "passages")
        super().__init__(preprocess_dir, max_query_length, len(self.docs), mode)
        self.rel_sets = {q: set(ps) for q, ps in self.rels.items()}
        self.max_doc_length = max_doc_length
        self.negative_type = negative_type
        self.hard_num = hard_num
        self.seed = seed
        self.epoch = 0
        self.hard: Dict[int, List[int]] = {}
        if negative_type == "star":
            if not hardneg_path:
                raise DataError("--hardneg_path is required for STAR / BM25-Neg training "
                                "(use --negative_type inbatch or random to train without it)")
            self.hard = load_hardneg(hardneg_path, len(self.docs), len(self.queries))
            check_hardneg_coverage(hardneg_path, self.hard, self.qoffsets, hard_num)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, item: int) -> dict:
        rng = random.Random(hash((self.seed, self.epoch, int(item))))
        q = self.qoffsets[item]
        pos = rng.choice(self.rels[q])
        if self.negative_type == "star":
            negs = rng.sample(self.hard[q], self.hard_num)
        elif self.negative_type == "random":
            negs = [rng.randrange(len(self.docs)) for _ in range(self.hard_num)]
        else:
            negs = []
        return {
            "qoffset": q,
            "query": self.queries.get(q, self.max_query_length),
            "pos_poffset": pos,
            "pos": self.docs.get(pos, self.max_doc_length),
            "neg_poffsets": negs,
            "negs": [self.docs.get(p, self.max_doc_length) for p in negs],
        }


class EpochSeededSampler(Sampler):
    """A random permutation per epoch, seeded by ``seed + epoch`` (so resume replays the same order)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, length: Optional[int] = None):
    """Right-pad id lists: (input_ids, attention_mask), both (B, length or longest)."""
    width = length if length is not None else max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        r = r[:width]
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


class TrainCollator:
    """Batches of items -> padded tensors and relevance masks.

    ``rel_pair_mask`` (B, B): 0 where in-batch document j is relevant to query i
    (the diagonal included); ``neg_pair_mask`` (B, B*hard_num): 0 where the
    negative is relevant to the query (the masks of ``drhard.losses``).  The first ``pad_first`` batches of the
    run are padded to the full max length (to hit out-of-memory early), later
    ones to the batch's longest row; ``pad_to_max`` pads every batch to the max.

    "The first batches of the run" is decided on the global batch index, not on
    how many batches this process has collated: the trainer calls
    ``start_at(index)`` before it iterates (at each epoch start, with the index
    of the next batch, ``global_step * gradient_accumulation_steps``), so a run
    resumed from a checkpoint pads exactly the batches an uninterrupted run
    padded (the batch shapes, and so the dropout draws, are the same).  With
    DataLoader workers, worker ``w`` of ``n`` collates batches ``w, w+n, ...``
    of the iteration, and the index accounts for it.
    """

    def __init__(self, rel_sets: Dict[int, set], pad_id: int, max_query_length: int, max_doc_length: int,
                 pad_to_max: bool = False, pad_first: int = 10):
        self.rel_sets = rel_sets
        self.pad_id = pad_id
        self.max_query_length = max_query_length
        self.max_doc_length = max_doc_length
        self.pad_to_max = pad_to_max
        self.pad_first = pad_first
        self.first_index = 0  # global index of the next batch of the current iteration
        self.calls = 0  # batches this copy collated since start_at

    def start_at(self, batch_index: int) -> None:
        """The next batch the data loader yields is the run's batch ``batch_index`` (0-based)."""
        self.first_index = int(batch_index)
        self.calls = 0

    def next_batch_index(self) -> int:
        """Global index of the batch this call collates (counts this copy's calls; DataLoader workers interleave)."""
        from torch.utils.data import get_worker_info
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        index = self.first_index + self.calls * workers + worker
        self.calls += 1
        return index

    def __call__(self, items: List[dict]) -> dict:
        full = self.pad_to_max or self.next_batch_index() < self.pad_first
        qlen = self.max_query_length if full else None
        dlen = self.max_doc_length if full else None
        q_ids, q_mask = pad_batch([it["query"] for it in items], self.pad_id, qlen)  # (B, Lq)
        d_ids, d_mask = pad_batch([it["pos"] for it in items], self.pad_id, dlen)  # (B, Ld)
        rels = [self.rel_sets.get(it["qoffset"], set()) for it in items]
        pos = [it["pos_poffset"] for it in items]
        rel_pair_mask = torch.tensor([[0.0 if p in r else 1.0 for p in pos] for r in rels])  # (B, B)
        batch = {"query_ids": q_ids, "query_mask": q_mask, "doc_ids": d_ids, "doc_mask": d_mask,
                 "rel_pair_mask": rel_pair_mask}
        negs = [n for it in items for n in it["negs"]]
        if negs:
            n_ids, n_mask = pad_batch(negs, self.pad_id, dlen)  # (B*hard_num, Ld)
            neg_pos = [p for it in items for p in it["neg_poffsets"]]
            batch["neg_ids"], batch["neg_mask"] = n_ids, n_mask
            batch["neg_pair_mask"] = torch.tensor([[0.0 if p in r else 1.0 for p in neg_pos] for r in rels])
        return batch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
