"""The built-in default dataset: a small MS MARCO-layout retrieval task made offline from real text.

Source: the Python language reference topics that every CPython install
carries (``pydoc_data.topics``, the text behind ``help('assert')``).  Each
topic is split into paragraphs (code samples and headings dropped).  A
paragraph with at least two sentences gives a query: one of its
sentences, chosen by a seeded RNG; its positive passage is the paragraph
with that sentence removed (two queries, two sentences removed, for paragraphs of four
sentences or more).  Every paragraph is a passage, so the other
paragraphs of the same topic are natural hard negatives: they share the
topic's vocabulary but do not contain the answer.

Splits (by a hash of the query text, so stable under seed changes of other
parts): train / dev / test; ``lead`` = the test queries without qrels.  Test
qrels are graded like TREC DL: 3 for the positive, 1 for the paragraphs
right before and after it in the same topic (topically related, not the
answer).  The doc variant holds the same passages as documents
``D<pid>\\turl\\ttitle\\tbody`` (title = the topic's heading).

The text depends on the Python version (its documentation changes); the
version is written to ``dataset_info.json`` beside the files.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .io import atomic_write

_HEADING_RULE = re.compile(r"^[*=\-~^\"]{3,}\s*$")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9\)\"'][.?!])\s+(?=[A-Z\"(])")


@dataclass
class Paragraph:
    topic: str
    title: str
    index: int  # position within the topic
    text: str


def _clean(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def topic_paragraphs(min_words: int = 12) -> List[Paragraph]:
    """Prose paragraphs of every ``pydoc_data`` topic, in topic order."""
    from pydoc_data.topics import topics
    out: List[Paragraph] = []
    for name in sorted(topics):
        lines = topics[name].splitlines()
        title = _clean(lines[0]) if lines else name
        blocks, cur = [], []
        for i, line in enumerate(lines):
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if _HEADING_RULE.match(line) or _HEADING_RULE.match(nxt):
                if cur:
                    blocks.append(cur)
                cur = []
                continue
            if not line.strip():
                if cur:
                    blocks.append(cur)
                cur = []
            else:
                cur.append(line)
        if cur:
            blocks.append(cur)
        idx = 0
        for block in blocks:
            if any(b.startswith((" ", ">>>", "...")) for b in block):  # code, grammar, tables
                continue
            text = _clean(" ".join(block))
            if len(text.split()) < min_words:
                continue
            out.append(Paragraph(name, title, idx, text))
            idx += 1
    return out


def split_sentences(text: str) -> List[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _bucket(text: str) -> float:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF


@dataclass
class SampleTask:
    passages: List[str]
    titles: List[str]
    topics: List[str]
    queries: Dict[str, List[Tuple[int, str]]]  # split -> [(qid, text)]
    qrels: Dict[str, List[Tuple[int, int, int]]]  # split -> [(qid, pid, grade)]


def build_task(seed: int = 13, dev_frac: float = 0.15, test_frac: float = 0.15,
               max_passages: Optional[int] = None) -> SampleTask:
    rng = random.Random(seed)
    paras = topic_paragraphs()
    if max_passages:
        paras = paras[:max_passages]
    passages, titles, topic_of = [], [], []
    queries: Dict[str, List[Tuple[int, str]]] = {"train": [], "dev": [], "test": []}
    qrels: Dict[str, List[Tuple[int, int, int]]] = {"train": [], "dev": [], "test": []}
    by_topic: Dict[str, List[int]] = {}
    for pid, para in enumerate(paras):
        sents = split_sentences(para.text)
        n_q = 0 if len(sents) < 2 else 1 if len(sents) < 4 else 2
        picked = sorted(rng.sample(range(len(sents)), n_q))
        passages.append(" ".join(s for i, s in enumerate(sents) if i not in picked) if picked else para.text)
        titles.append(para.title)
        topic_of.append(para.topic)
        by_topic.setdefault(para.topic, []).append(pid)
        for j, k in enumerate(picked):
            query = sents[k].rstrip(".?!:")
            if len(query.split()) < 4:
                continue
            b = _bucket(query)
            split = "dev" if b < dev_frac else "test" if b < dev_frac + test_frac else "train"
            qid = 1000 + 2 * pid + j
            queries[split].append((qid, query))
            qrels[split].append((qid, pid, 3 if split == "test" else 1))
    # graded test qrels: the neighbours of the positive in its topic are related (grade 1)
    graded = []
    for qid, pid, g in qrels["test"]:
        graded.append((qid, pid, g))
        members = by_topic[topic_of[pid]]
        pos = members.index(pid)
        for nb in (pos - 1, pos + 1):
            if 0 <= nb < len(members):
                graded.append((qid, members[nb], 1))
    qrels["test"] = graded
    return SampleTask(passages, titles, topic_of, queries, qrels)


def _write_lines(path: str, lines) -> None:
    with atomic_write(path) as f:
        for line in lines:
            f.write(line + "\n")


def write_sample_dataset(root: str, seed: int = 13, max_passages: Optional[int] = None) -> Dict[str, str]:
    """Write ``<root>/passage/dataset`` and ``<root>/doc/dataset``; return their paths."""
    task = build_task(seed, max_passages=max_passages)
    info = {"source": "pydoc_data.topics (CPython language reference)", "python": sys.version.split()[0],
            "seed": seed, "passages": len(task.passages),
            "queries": {k: len(v) for k, v in task.queries.items()},
            "qrels": {k: len(v) for k, v in task.qrels.items()}}
    out = {}
    for kind in ("passage", "doc"):
        d = os.path.join(root, kind, "dataset")
        os.makedirs(d, exist_ok=True)
        if kind == "passage":
            _write_lines(os.path.join(d, "collection.tsv"), (f"{pid}\t{t}" for pid, t in enumerate(task.passages)))
            names = {"train": ("queries.train.tsv", "qrels.train.tsv"),
                     "dev": ("queries.dev.small.tsv", "qrels.dev.small.tsv"),
                     "test": ("msmarco-test2019-queries.tsv", "2019qrels-pass.txt")}
            lead = "queries.eval.small.tsv"
            pid_str = str
        else:
            _write_lines(os.path.join(d, "msmarco-docs.tsv"),
                         (f"D{pid}\thttps://docs.python.org/3/reference/#{task.topics[pid]}\t{task.titles[pid]}\t{t}"
                          for pid, t in enumerate(task.passages)))
            names = {"train": ("msmarco-doctrain-queries.tsv", "msmarco-doctrain-qrels.tsv"),
                     "dev": ("msmarco-docdev-queries.tsv", "msmarco-docdev-qrels.tsv"),
                     "test": ("msmarco-test2019-queries.tsv", "2019qrels-docs.txt")}
            lead = "docleaderboard-queries.tsv"
            pid_str = "D{}".format
        for split, (qfile, rfile) in names.items():
            _write_lines(os.path.join(d, qfile), (f"{q}\t{t}" for q, t in task.queries[split]))
            if split == "test" or kind == "doc":
                lines = (f"{q} 0 {pid_str(p)} {g}" for q, p, g in task.qrels[split])
            else:
                lines = (f"{q}\t0\t{p}\t{g}" for q, p, g in task.qrels[split])
            _write_lines(os.path.join(d, rfile), lines)
        _write_lines(os.path.join(d, lead), (f"{q}\t{t}" for q, t in task.queries["test"]))
        with atomic_write(os.path.join(d, "dataset_info.json")) as f:
            json.dump(info, f, indent=1)
        out[kind] = d
    return out
