"""The raw MS MARCO inputs (``data/<type>/dataset``): file names per task, line parsers, streaming readers.

The one reader of the official files: ``preprocess.py`` tokenizes what these
parsers return, and BM25 (``drhard.bm25``) indexes the same text, so both see
exactly the same passages (doc text is ``url<sep>title<sep>body``).  The formats
are in docs/formats.md; the line rules (what the original could read is read the
same way, what made it crash is an error naming ``file:line``) in docs/bad-input.md.
"""
from __future__ import annotations

import os
from typing import Dict, Iterator, Optional, Tuple

from .errors import data_error
from .io import MODES, iter_lines, parse_int

SEP = "<sep>"

INPUT_FILES = {
    "passage": {"collection": "collection.tsv",
                "train": ("queries.train.tsv", "qrels.train.tsv"),
                "dev": ("queries.dev.small.tsv", "qrels.dev.small.tsv"),
                "test": ("msmarco-test2019-queries.tsv", "2019qrels-pass.txt"),
                "lead": ("queries.eval.small.tsv", None)},
    "doc": {"collection": "msmarco-docs.tsv",
            "train": ("msmarco-doctrain-queries.tsv", "msmarco-doctrain-qrels.tsv"),
            "dev": ("msmarco-docdev-queries.tsv", "msmarco-docdev-qrels.tsv"),
            "test": ("msmarco-test2019-queries.tsv", "2019qrels-docs.txt"),
            "lead": ("docleaderboard-queries.tsv", None)},
}


def parse_data_type(value) -> str:
    """``0``/``doc`` -> ``doc``, ``1``/``passage`` -> ``passage`` (the original used 0/1)."""
    v = str(value).strip().lower()
    if v in ("0", "doc"):
        return "doc"
    if v in ("1", "passage"):
        return "passage"
    raise ValueError(f"data_type must be 0/doc or 1/passage, not {value!r}")


def input_names(data_type) -> list:
    """Every file name of the task's dataset folder that preprocess reads: the collection first."""
    files = INPUT_FILES[parse_data_type(data_type)]
    return [files["collection"]] + [f for m in MODES for f in files[m] if f is not None]


def dataset_files(data_dir: str, data_type) -> Dict[str, str]:
    """``collection``, ``<mode>_queries`` and ``<mode>_qrels`` paths of a dataset folder."""
    names = INPUT_FILES[parse_data_type(data_type)]
    out = {"collection": os.path.join(data_dir, names["collection"])}
    for mode in MODES:
        qfile, rfile = names[mode]
        out[f"{mode}_queries"] = os.path.join(data_dir, qfile)
        if rfile is not None:
            out[f"{mode}_qrels"] = os.path.join(data_dir, rfile)
    return out


# --------------------------------------------------------------------------- line parsers
def _check_raw(path: str, lineno: int, line: str) -> None:
    if "\r" in line:
        raise data_error(path, lineno, "carriage return (CRLF line endings?); convert the file with dos2unix")


def parse_collection_line(kind: str, path: str, lineno: int, line: str,
                          max_doc_character: int) -> Tuple[int, str, bool]:
    """``(pid, text, extra)`` of one collection line, the text exactly as the original built it.

    The original used the first columns and ignored any further ones; so do we (``extra``
    says the line had more columns than that).  Too few columns are an error, as they were.
    """
    _check_raw(path, lineno, line)
    if kind == "passage":
        cols = line.strip().split("\t")
        if len(cols) == 1 and "\t" in line:  # 'pid<TAB>   ': the text is white space only
            raise data_error(path, lineno, f"passage {cols[0]!r} has an empty text")
        if len(cols) < 2:
            raise data_error(path, lineno, f"expected 2 tab-separated columns 'pid<TAB>text', got {len(cols)}")
        pid = parse_int(path, lineno, cols[0], "passage id")
        text = cols[1].rstrip()[:max_doc_character]
        if not text:
            raise data_error(path, lineno, f"passage {pid} has an empty text")
        return pid, text, len(cols) > 2
    cols = line.split("\t")
    if len(cols) < 4:
        raise data_error(path, lineno, f"expected 4 tab-separated columns 'D<id> url title body', got {len(cols)}")
    return (parse_doc_id(path, lineno, cols[0]),
            (cols[1].rstrip() + SEP + cols[2].rstrip() + SEP + cols[3].rstrip())[:max_doc_character],
            len(cols) > 4)


def parse_doc_id(path: str, lineno: int, value: str) -> int:
    if not value.startswith("D"):
        raise data_error(path, lineno, f"document id {value!r} does not start with 'D'")
    return parse_int(path, lineno, value[1:], "document id")


def parse_query_line(path: str, lineno: int, line: str) -> Tuple[int, str, bool]:
    """``(qid, text, extra)``: columns 0 and 1 of ``line.split('\\t')`` as the original; ``extra``
    says there were more."""
    _check_raw(path, lineno, line)
    cols = line.split("\t")
    if len(cols) < 2:
        raise data_error(path, lineno, f"expected 2 tab-separated columns 'qid<TAB>text', got {len(cols)}")
    qid = parse_int(path, lineno, cols[0], "query id")
    text = cols[1].rstrip()
    if not text:
        raise data_error(path, lineno, f"query {qid} has an empty text")
    return qid, text, len(cols) > 2


def parse_qrels_line(kind: str, path: str, lineno: int, line: str) -> Tuple[int, int, str]:
    """``(qid, pid, rel)`` of an official qrels line ``qid 0 pid rel`` (white space; doc ids with their
    ``D``, dropped); ``rel`` is the integer as written (preprocess copies it unchanged)."""
    cols = line.split()
    if len(cols) != 4:
        raise data_error(path, lineno, f"expected 4 columns 'qid 0 pid rel', got {len(cols)}")
    qid = parse_int(path, lineno, cols[0], "query id")
    pid = parse_doc_id(path, lineno, cols[2]) if kind == "doc" else parse_int(path, lineno, cols[2], "passage id")
    parse_int(path, lineno, cols[3], "relevance")
    return qid, pid, cols[3]


# --------------------------------------------------------------------------- streaming readers
def read_collection(path: str, data_type, max_doc_character: Optional[int] = None) -> Iterator[Tuple[int, str]]:
    """Yield ``(pid, text)`` (doc ids without their ``D``); text cut to ``max_doc_character`` when given.

    Lines with more columns than used are read as preprocess reads them (the first columns)."""
    kind = parse_data_type(data_type)
    cut = max_doc_character if max_doc_character is not None else 1 << 62
    for lineno, line in iter_lines(path):
        pid, text, _extra = parse_collection_line(kind, path, lineno, line, cut)
        yield pid, text


def read_queries(path: str) -> Iterator[Tuple[int, str]]:
    for lineno, line in iter_lines(path):
        qid, text, _extra = parse_query_line(path, lineno, line)
        yield qid, text
