"""The raw MS MARCO files (SPEC §2): their names per task and streaming readers."""
from __future__ import annotations

import os
from typing import Dict, Iterator, Tuple

from .io import data_error, iter_lines, parse_int

PASSAGE_FILES = {
    "collection": "collection.tsv",
    "train_queries": "queries.train.tsv", "train_qrels": "qrels.train.tsv",
    "dev_queries": "queries.dev.small.tsv", "dev_qrels": "qrels.dev.small.tsv",
    "test_queries": "msmarco-test2019-queries.tsv", "test_qrels": "2019qrels-pass.txt",
    "lead_queries": "queries.eval.small.tsv",
}
DOC_FILES = {
    "collection": "msmarco-docs.tsv",
    "train_queries": "msmarco-doctrain-queries.tsv", "train_qrels": "msmarco-doctrain-qrels.tsv",
    "dev_queries": "msmarco-docdev-queries.tsv", "dev_qrels": "msmarco-docdev-qrels.tsv",
    "test_queries": "msmarco-test2019-queries.tsv", "test_qrels": "2019qrels-docs.txt",
    "lead_queries": "docleaderboard-queries.tsv",
}


def normalize_data_type(data_type) -> str:
    """``0``/``doc`` -> ``doc``; ``1``/``passage`` -> ``passage`` (the original used 0/1)."""
    v = str(data_type).strip().lower()
    if v in ("0", "doc"):
        return "doc"
    if v in ("1", "passage"):
        return "passage"
    raise ValueError(f"data type must be 0|doc or 1|passage, got {data_type!r}")


def dataset_files(data_dir: str, data_type) -> Dict[str, str]:
    names = DOC_FILES if normalize_data_type(data_type) == "doc" else PASSAGE_FILES
    return {k: os.path.join(data_dir, v) for k, v in names.items()}


def parse_doc_id(path: str, lineno: int, value: str) -> int:
    """``D1555982`` -> 1555982 (doc ids lose their ``D``, as in the original)."""
    if not value.startswith("D"):
        raise data_error(path, lineno, f"document id {value!r} does not start with 'D'")
    return parse_int(path, lineno, value[1:], "document id")


def read_collection(path: str, data_type) -> Iterator[Tuple[int, str]]:
    """Yield ``(pid, text)``; doc text is ``url<sep>title<sep>body`` (not cut here)."""
    doc = normalize_data_type(data_type) == "doc"
    for lineno, line in iter_lines(path):
        cols = line.split("\t")
        if doc:
            if len(cols) != 4:
                raise data_error(path, lineno, f"expected 4 tab-separated columns 'D<id> url title body', got {len(cols)}")
            yield parse_doc_id(path, lineno, cols[0]), cols[1].rstrip() + "<sep>" + cols[2].rstrip() + "<sep>" + cols[3].rstrip()
        else:
            if len(cols) != 2:
                raise data_error(path, lineno, f"expected 2 tab-separated columns 'pid text', got {len(cols)}")
            yield parse_int(path, lineno, cols[0], "passage id"), cols[1].rstrip()


def read_queries(path: str) -> Iterator[Tuple[int, str]]:
    for lineno, line in iter_lines(path):
        cols = line.split("\t")
        if len(cols) != 2:
            raise data_error(path, lineno, f"expected 2 tab-separated columns 'qid text', got {len(cols)}")
        yield parse_int(path, lineno, cols[0], "query id"), cols[1].rstrip()
