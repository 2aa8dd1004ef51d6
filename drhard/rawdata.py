"""The raw MS MARCO files (SPEC §2) for tools other than preprocess: names per task and streaming readers.

File names and line rules are those of ``drhard.preprocess`` (one source of
truth), so BM25 reads exactly the text preprocess tokenized (doc text is
``url<sep>title<sep>body``).
"""
from __future__ import annotations

import os
from typing import Dict, Iterator, Optional, Tuple

from .io import iter_lines
from .preprocess import INPUT_FILES, parse_collection_line, parse_data_type, parse_query_line

normalize_data_type = parse_data_type


def dataset_files(data_dir: str, data_type) -> Dict[str, str]:
    """``collection``, ``<mode>_queries`` and ``<mode>_qrels`` paths of a dataset folder."""
    names = INPUT_FILES[parse_data_type(data_type)]
    out = {"collection": os.path.join(data_dir, names["collection"])}
    for mode in ("train", "dev", "test", "lead"):
        qfile, rfile = names[mode]
        out[f"{mode}_queries"] = os.path.join(data_dir, qfile)
        if rfile is not None:
            out[f"{mode}_qrels"] = os.path.join(data_dir, rfile)
    return out


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
