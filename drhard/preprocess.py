"""MS MARCO text -> DRhard token-id memmaps (what ``preprocess.py`` runs).

Outputs in ``out_data_dir`` are the original's, byte for byte for the same input and
vocabulary: the token caches ``passages`` (``[N, max_seq_length]`` int32 rows) and
``<mode>-query`` for train/dev/test/lead (``[Q, max_query_length]``), the id maps and, for
train/dev/test, the offset qrels in qrels-file order (names in ``drhard.io``, formats in
docs/formats.md).  train/dev/test keep the queries that have a qrels line, in query-file
order; lead keeps all.

Plus one extra file, ``preprocess_manifest.json`` (flags, tokenizer fingerprint, pad id, row
counts, input sizes and sha256, lines with extra columns, and ``files``: size and sha256 of
every output, see below).  Two deliberate differences from the original's files: the id-map
pickles hold plain Python ints (the original's keys were numpy int32 scalars, which pickle
as numpy globals and cannot be read by a safe loader), and a last line without a newline is
kept (the original counted lines with ``wc -l`` and dropped it).

How it runs: the collection is read in blocks of whole lines; a pool of ``--threads``
processes (capped at the usable cores) parses, validates and tokenizes each block; the
parent takes the results in file order (a bounded window of blocks in flight, so memory
stays flat in corpus size) and writes padded rows into the memmap, whose disk space was
reserved up front (``io.allocate_file``; a full disk is an error before any work).  Every
output is written into a staging folder ``.preprocess.tmp-<pid>-*`` inside ``out_data_dir``;
a failed run leaves no output and no split folders (the staging folder of a killed run is
removed by the next run).

The outputs are one set.  When the whole run succeeded they are moved into place as a
commit: ``.preprocess-commit.json`` (the moves and the records of the new set) is written
first, then the data files, the metas and the manifest last are renamed, then the marker
is removed.  A kill between two renames leaves the marker: every reader (``io.TokenCache``,
``check_token_cache``, ``read_meta``) refuses such a folder, and the next run finishes the
commit when the killed run's staged files are intact (else it deletes that set and rebuilds
it).  The manifest's ``files`` record each output's size and sha256 (files over 16 MiB: of
their first and last MiB); readers compare the files they read with it, so files copied in
from another run are refused too.  A folder without a manifest (the original's) is read as is.

Reuse.  A previous run's passages are reused when they are complete, match the manifest's
records, and were made from a collection with the same sha256, the same tokenizer and the
same ``--max_seq_length`` / ``--max_doc_character``; queries are always rebuilt (cheap).  The
sha256 is computed in the pass that counts the collection's lines (``scan_file``, one read in
16 MiB blocks): about 0.9 s per GiB from the page cache on a 2-core x86 with SHA extensions,
0.55 s of it the hash, i.e. roughly 20 s for the 22 GB document collection (the read from
disk costs more when it is not cached).  While tokenizing, the parent hashes the blocks again:
a collection that changed during the run is an error.  Before anything is tokenized, the
free disk space of ``out_data_dir`` is checked against the size of what will be written
(``output_bytes``: rows x width x 4 B per memmap, plus lengths and id maps); the file size
is no bound, since a 3 GB collection becomes an 18 GB memmap at 512 tokens.

Bad input (docs/bad-input.md has the table).  Fatal (``DataError`` naming ``file:line``; the
CLI prints one ``error:`` line and exits 1): a missing input file; CRLF or a lone CR, a UTF-8
byte-order mark, undecodable bytes; too few tab-separated columns (also a blank line); a
non-integer id, a doc id without its ``D``; a duplicate pid/docid or a duplicate qid within
one query file; a passage or query whose text is empty after the original's stripping
(transformers 2.8.0 crashed on it; no row is invented for it); a qrels line whose qid is not
in the mode's query file or whose pid/docid is not in the collection (the original crashed
with a KeyError); a non-integer relevance; an empty collection.  Query files and qrels are
validated before the collection is tokenized, so these errors come first, except an
unknown pid/docid, which is known only after the collection.  Not errors: more columns than
used (the first ones are used, as the original did; the lines are counted and reported),
duplicate qrels lines (written twice, as the original did), qrels grades of 0, a doc with
an empty url/title/body, an empty query or qrels file (0 rows, with a warning).
"""
from __future__ import annotations

import array
import collections
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import io as dio
from .cli import check_flags, flag, int_at_least
from .device import usable_cpus
from .lineage import save_manifest
from .io import DataError, data_error
from .rawdata import (INPUT_FILES, input_names, parse_collection_line, parse_data_type, parse_qrels_line,
                      parse_query_line)

logger = logging.getLogger(__name__)

MANIFEST = dio.PREPROCESS_MANIFEST
STAGE_PREFIX = ".preprocess.tmp-"
BLOCK_BYTES = 1 << 20
QUERY_BLOCK = 2000

@dataclass
class PreprocessArgs:
    """Every setting of a preprocess run, declared once: these fields are preprocess.py's flags (same names,
    defaults and help, ``drhard.cli.add_dataclass_flags``); the manifest records them."""
    model_name_or_path: str = flag("roberta-base", help="local tokenizer directory; 'roberta-base' resolves to "
                                   "$DRHARD_TOKENIZER or ./data/roberta-base")
    # the width of the stored passage rows (``passage_width``); the original's flag name
    max_seq_length: int = flag(512, type=int_at_least(2, " (<s> and </s>)"),
                               help="The maximum total input sequence length after tokenization. Sequences longer "
                               "than this will be truncated, sequences shorter will be padded.")
    max_query_length: int = flag(64, type=int_at_least(2, " (<s> and </s>)"),
                                 help="The maximum total input sequence length after tokenization. Sequences longer "
                                 "than this will be truncated, sequences shorter will be padded.")
    max_doc_character: int = flag(10000, type=int_at_least(1), help="used before tokenizer to save tokenizer latency")
    data_type: str = flag("1", help="0 (or doc) for doc, 1 (or passage) for passage")
    threads: int = flag(32, type=int_at_least(1), help="worker processes (capped at the usable cores)")
    data_dir: Optional[str] = flag(None, help="default ./data/{doc,passage}/dataset")
    out_data_dir: Optional[str] = flag(None, help="default ./data/{doc,passage}/preprocess")
    tokenizer_compat: str = flag("auto", choices=["auto", "drhard", "hf"],
                                 help="drhard: transformers 2.8.0 RoBERTa rules (what the released checkpoints need); "
                                 "hf: the tokenizer's own modern behaviour; auto: drhard for RoBERTa-style "
                                 "vocab.json+merges.txt directories")
    overwrite: bool = flag(False, help="rebuild passages even when complete")
    command: List[str] = flag([], cli=False)

    @property
    def passage_width(self) -> int:
        """Tokens stored per passage row (the flag is ``--max_seq_length``, the original's name)."""
        return self.max_seq_length

    @property
    def query_width(self) -> int:
        return self.max_query_length

    def resolve(self) -> "PreprocessArgs":
        """``data_type`` as ``passage``/``doc`` and the default folders ``./data/<type>/{dataset,preprocess}``."""
        self.data_type = parse_data_type(self.data_type)
        self.data_dir = self.data_dir or os.path.join(".", "data", self.data_type, "dataset")
        self.out_data_dir = self.out_data_dir or os.path.join(".", "data", self.data_type, "preprocess")
        return self


# --------------------------------------------------------------------------- lines with extra columns
class ExtraColumns:
    """Lines of one input file that had more tab-separated columns than were used: a count and
    the first ``FIRST`` line numbers (reported at the end of the run and in the manifest)."""

    FIRST = 10

    def __init__(self):
        self.lines = 0
        self.first: List[int] = []

    def add(self, count: int, first: Sequence[int]) -> None:
        self.lines += int(count)
        self.first.extend(int(n) for n in first[: self.FIRST - len(self.first)])

    def record(self) -> dict:
        return {"lines": self.lines, "first_lines": list(self.first)}


# --------------------------------------------------------------------------- workers
_TOKENIZER = None


def _init_worker(tokenizer_path: str, compat: str, subprocess: bool = True) -> None:
    global _TOKENIZER
    if subprocess:  # one process per core: no extra threads inside the Rust tokenizers
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from .tokenization import load_tokenizer
    _TOKENIZER = load_tokenizer(tokenizer_path, compat=compat)


def _quiet_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _encode_rows(texts: Sequence[str], max_length: int) -> Tuple[np.ndarray, np.ndarray]:
    """Token ids of ``texts`` as one flat int32 array plus int32 lengths."""
    return _TOKENIZER.encode_batch_flat(texts, max_length)


def _collection_block(task) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int, List[int]]:
    """Parse, validate and tokenize one block of whole collection lines: ids, flat token ids,
    lengths, and the lines with extra columns (their count, the first few line numbers)."""
    kind, path, first_lineno, blob, max_length, max_doc_character = task
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        for k, raw in enumerate(blob.split(b"\n")):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise data_error(path, first_lineno + k, f"not valid UTF-8 ({e.reason})") from None
        raise
    if first_lineno == 1 and text.startswith("\ufeff"):
        raise data_error(path, 1, "starts with a UTF-8 byte-order mark (remove it)")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    pids = np.empty(len(lines), dtype=np.int64)
    texts = []
    extra: List[int] = []  # line numbers with more columns than used
    for k, line in enumerate(lines):
        pid, t, more = parse_collection_line(kind, path, first_lineno + k, line, max_doc_character)
        if not -(1 << 63) <= pid < (1 << 63):
            raise data_error(path, first_lineno + k, f"id {pid} does not fit in 64 bits")
        pids[k] = pid
        texts.append(t)
        if more:
            extra.append(first_lineno + k)
    flat, lengths = _encode_rows(texts, max_length)
    return pids, flat, lengths, len(extra), extra[: ExtraColumns.FIRST]


def _query_block(task) -> Tuple[np.ndarray, np.ndarray]:
    texts, max_length = task
    return _encode_rows(texts, max_length)


class _OrderedPool:
    """Map ``fn`` over tasks in order with at most ``window`` tasks in flight.

    ``Pool.imap`` would read the whole input ahead; this keeps memory bounded.  With one
    worker everything runs in this process.
    """

    def __init__(self, workers: int, tokenizer_path: str, compat: str, tokenizer=None):
        global _TOKENIZER
        self.workers = workers
        self.pool = None
        if tokenizer is not None:
            _TOKENIZER = tokenizer
        else:
            _init_worker(tokenizer_path, compat, subprocess=False)
        if workers > 1:
            ctx = multiprocessing.get_context()
            if ctx.get_start_method() == "fork":  # children inherit the loaded tokenizer
                self.pool = ctx.Pool(workers, _quiet_worker)
            else:
                self.pool = ctx.Pool(workers, _init_worker, (tokenizer_path, compat))

    def map(self, fn, tasks):
        if self.pool is None:
            for t in tasks:
                yield fn(t)
            return
        pending = collections.deque()
        window = 2 * self.workers
        for t in tasks:
            pending.append(self.pool.apply_async(fn, (t,)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def _line_blocks(path: str, block_bytes: int, digest=None):
    """``(first_lineno, bytes)`` blocks of whole lines (split on ``\\n`` only); ``digest``, a hashlib
    object, is updated with every byte read."""
    lineno = 1
    with open(path, "rb") as f:
        while True:
            blob = f.read(block_bytes)
            if not blob:
                return
            if not blob.endswith(b"\n"):
                blob += f.readline()
            if digest is not None:
                digest.update(blob)
            yield lineno, blob
            lineno += blob.count(b"\n")


class _RowWriter:
    """Writes ``rows`` zero-padded int32 rows into a raw memmap file whose disk space is reserved
    up front (``allocate_file``: a full disk is a ``NoSpaceError`` before any work, not a failure
    hours later)."""

    def __init__(self, path: str, width: int, rows: int, what: str):
        dio.allocate_file(path, int(rows) * width * 4, what)
        self.f = open(path, "r+b")
        self.path = path
        self.width = width
        self.rows = int(rows)
        self.lengths = array.array("i")
        self._cols = np.arange(width, dtype=np.int32)

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        block = np.zeros((len(lengths), self.width), dtype=np.int32)
        block[self._cols[None, :] < lengths[:, None]] = flat
        self.f.write(block.tobytes())
        self.lengths.extend(lengths.tolist())

    def close(self) -> np.ndarray:
        """Lengths of the rows written; the caller checks their number against ``rows``."""
        self.f.truncate()  # fewer rows than reserved: the caller reports it, the file keeps what was written
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return np.frombuffer(self.lengths, dtype=np.int32) if len(self.lengths) else np.zeros(0, np.int32)

    def abort(self) -> None:
        self.f.close()


def _save_token_cache(prefix: str, lengths: np.ndarray, width: int) -> None:
    np.save(dio.length_path(prefix), np.asarray(lengths, dtype=np.int32))
    dio.write_meta(prefix, len(lengths), width)


def _save_pickle(path: str, mapping: Dict[int, int]) -> None:
    with open(path, "wb") as f:
        pickle.dump(mapping, f, protocol=4)


# --------------------------------------------------------------------------- queries and qrels
@dataclass
class _QuerySet:
    mode: str
    query_path: str
    qrels_path: Optional[str]
    qids: List[int]
    texts: List[str]
    qrels: List[Tuple[int, int, int, str]]  # (lineno, qid, pid, rel string)
    extra: ExtraColumns


def _read_query_set(kind: str, data_dir: str, mode: str) -> _QuerySet:
    qfile, rfile = INPUT_FILES[kind][mode]
    qpath = os.path.join(data_dir, qfile)
    seen: Dict[int, int] = {}
    qids, texts = [], []
    extra = ExtraColumns()
    for lineno, line in dio.iter_lines(qpath):
        qid, text, more = parse_query_line(qpath, lineno, line)
        if qid in seen:
            raise data_error(qpath, lineno, f"duplicate query id {qid} (first on line {seen[qid]})")
        seen[qid] = lineno
        qids.append(qid)
        texts.append(text)
        if more:
            extra.add(1, [lineno])
    qrels = []
    rpath = None
    if rfile is not None:
        rpath = os.path.join(data_dir, rfile)
        for lineno, line in dio.iter_lines(rpath):
            qid, pid, rel = parse_qrels_line(kind, rpath, lineno, line)
            if qid not in seen:
                raise data_error(rpath, lineno, f"query id {qid} has no line in {qpath}")
            qrels.append((lineno, qid, pid, rel))
        if not qrels:
            logger.warning("%s is empty: %s will have no rows", rpath, dio.query_name(mode))
    if not qids:
        logger.warning("%s is empty: %s will have no rows", qpath, dio.query_name(mode))
    return _QuerySet(mode, qpath, rpath, qids, texts, qrels, extra)


# --------------------------------------------------------------------------- the run
PASSAGE_FILES = tuple(dio.token_cache_names(dio.PASSAGES)) + (dio.PID2OFFSET,)


def output_names() -> List[str]:
    """Every file name preprocess writes (a mode without qrels has no qrels file)."""
    names = list(PASSAGE_FILES)
    for mode in dio.MODES:
        names += dio.token_cache_names(dio.query_name(mode)) + [dio.qid2offset_name(mode)]
        names += [dio.qrel_name(mode)] if mode in dio.QREL_MODES else []
    return names + [MANIFEST]


def _passages_reusable(out_dir: str, args: PreprocessArgs, fingerprint: str,
                       collection_sha256: str) -> Optional[Tuple[Dict[int, int], Optional[dict]]]:
    """``(pid2offset, old manifest or None)`` when the passages in ``out_dir`` are complete and were
    made from a collection with this content (sha256), this tokenizer and these flags."""
    prefix = dio.token_prefix(out_dir, dio.PASSAGES)
    try:
        _meta, n = dio.check_token_cache(prefix)  # sizes agree; files match the manifest's records
        if _meta["width"] != args.passage_width:
            return None
        if len(np.load(dio.length_path(prefix), mmap_mode="r")) != n:
            return None
        pid2offset = dio.load_offset_map(dio.pid2offset_path(out_dir))
        if len(pid2offset) != n:
            return None
    except (DataError, OSError, ValueError):
        return None
    man_path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(man_path):
        logger.warning("reusing complete passages in %s that have no %s (made by the original code?); "
                       "--overwrite rebuilds them", out_dir, MANIFEST)
        return pid2offset, None
    collection = INPUT_FILES[args.data_type]["collection"]
    try:
        with open(man_path, encoding="utf-8") as f:
            old = json.load(f)
        same = (old["tokenizer"]["fingerprint"] == fingerprint and old["data_type"] == args.data_type
                and old["flags"]["max_seq_length"] == args.passage_width  # the manifest records the flags
                and old["flags"]["max_doc_character"] == args.max_doc_character
                and old["input_sha256"][collection] == collection_sha256
                and isinstance(old["files"], dict) and all(n in old["files"] for n in PASSAGE_FILES))
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if not same:
        logger.info("existing passages were made with other settings or another %s: rebuilding them",
                    collection)
        return None
    return pid2offset, old


SCAN_BLOCK = 1 << 24


def scan_file(path: str) -> Tuple[int, str]:
    """``(lines, sha256 hex)`` of ``path`` in one read; a last line without a newline counts (as
    preprocess keeps it).  About 0.9 s per GiB from the page cache (0.4 of it counting)."""
    n, last = 0, b"\n"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for blob in iter(lambda: f.read(SCAN_BLOCK), b""):
            n += blob.count(b"\n")
            digest.update(blob)
            last = blob[-1:]
    return n + (last != b"\n"), digest.hexdigest()


def count_lines(path: str) -> int:
    """Lines of ``path``, a last line without a newline included (as preprocess keeps it)."""
    return scan_file(path)[0]


def output_bytes(n_passages: int, query_rows: Sequence[int], passage_width: int, query_width: int) -> int:
    """Bytes preprocess writes for ``n_passages`` collection rows (0 when reused) and the query sets:
    int32 memmap rows and lengths, plus 16 B per id-map entry (the pickles take about 10)."""
    per_passage = 4 * passage_width + 4 + 16
    per_query = 4 * query_width + 4 + 16 + 16  # + its qrels line
    return int(n_passages) * per_passage + int(sum(query_rows)) * per_query


def preprocess(args: PreprocessArgs) -> dict:
    """Run the whole preprocessing; returns the manifest (also written to the output dir)."""
    from .tokenization import load_tokenizer, resolve_tokenizer_path

    t_start = time.time()
    check_flags(args)  # the ranges preprocess.py's parser enforces, for library callers
    kind = args.resolve().data_type
    files = INPUT_FILES[kind]
    needed = input_names(kind)
    missing = [f for f in needed if not os.path.isfile(os.path.join(args.data_dir, f))]
    if missing:
        raise data_error(args.data_dir, None, "missing input files: " + ", ".join(missing))
    inputs = {f: os.path.getsize(os.path.join(args.data_dir, f)) for f in needed}

    tok_path = str(resolve_tokenizer_path(args.model_name_or_path))
    tokenizer = load_tokenizer(tok_path, compat=args.tokenizer_compat)
    compat = tokenizer.compat
    fingerprint = tokenizer.fingerprint()
    workers = max(1, min(args.threads, usable_cpus()))
    logger.info("tokenizer %s (compat %s, fingerprint %s), %d worker(s)", tok_path, compat, fingerprint[:12], workers)

    # query files and qrels first: cheap, and their errors should not wait for the collection
    query_sets = [_read_query_set(kind, args.data_dir, mode) for mode in dio.MODES]
    input_sha256 = {f: dio.sha256_file(os.path.join(args.data_dir, f)) for f in needed[1:]}

    out_dir = args.out_data_dir
    os.makedirs(out_dir, exist_ok=True)
    recover_commit(out_dir)
    dio.remove_stale_tmp(out_dir)  # staging folders (and temp files) of killed runs; a live run's are kept
    stage = tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=out_dir)
    pool = None
    rows: Dict[str, int] = {}
    qrel_lines: Dict[str, int] = {}
    try:
        collection_path = os.path.join(args.data_dir, files["collection"])
        n_lines, input_sha256[files["collection"]] = scan_file(collection_path)
        reuse = None if args.overwrite else _passages_reusable(out_dir, args, fingerprint,
                                                               input_sha256[files["collection"]])
        dio.check_free_space(stage, output_bytes(0 if reuse else n_lines, [len(qs.qids) for qs in query_sets],
                                                 args.passage_width, args.query_width),
                             "the preprocess outputs")
        pool = _OrderedPool(workers, tok_path, compat, tokenizer)
        if reuse is None:
            pid2offset, extra = _tokenize_collection(kind, args, stage, pool, n_lines,
                                                     input_sha256[files["collection"]])
            reused = False
        else:
            logger.info("passages in %s are complete and made from this %s: reusing them",
                        out_dir, files["collection"])
            pid2offset, old = reuse
            extra = ExtraColumns()
            old_extra = ((old or {}).get("extra_columns") or {}).get(files["collection"])
            if isinstance(old_extra, dict):
                extra.add(old_extra.get("lines", 0), old_extra.get("first_lines", []))
            reused = True
        rows[dio.PASSAGES] = len(pid2offset)
        extra_columns = {files["collection"]: extra}

        for qs in query_sets:
            n, nq = _write_query_set(kind, qs, pid2offset, args, stage, pool)
            rows[dio.query_name(qs.mode)] = n
            extra_columns[os.path.basename(qs.query_path)] = qs.extra
            if nq is not None:
                qrel_lines[dio.qrel_name(qs.mode)] = nq
        if pool is not None:
            pool.close()
            pool = None
        extra_rec = {}
        for name, ex in extra_columns.items():
            if ex.lines:
                extra_rec[name] = ex.record()
                logger.warning("%s: %d line(s) had more tab-separated columns than used (the first ones were "
                               "used, as the original did); first on lines %s", name, ex.lines,
                               ", ".join(map(str, ex.first)))

        staged = sorted(os.listdir(stage))
        records = {n: dio.set_file_record(os.path.join(stage, n)) for n in staged}
        if reused:
            records.update({n: dio.set_file_record(os.path.join(out_dir, n)) for n in PASSAGE_FILES})
        manifest = {
            "command": list(args.command),
            "flags": {k: v for k, v in asdict(args).items() if k != "command"},
            "data_type": kind,
            "tokenizer": {"path": os.path.abspath(tok_path), "compat": compat, "fingerprint": fingerprint,
                          "backend": getattr(tokenizer, "backend", None)},
            "pad_token_id": tokenizer.pad_token_id,
            "rows": rows,
            "qrel_lines": qrel_lines,
            "inputs": inputs,
            "input_sha256": input_sha256,
            "extra_columns": extra_rec,
            "files": dict(sorted(records.items())),
            "passages_reused": reused,
            "workers": workers,
            "seconds": round(time.time() - t_start, 3),
        }
        save_manifest(os.path.join(stage, MANIFEST), manifest)
        records[MANIFEST] = dio.set_file_record(os.path.join(stage, MANIFEST))
        _commit(stage, out_dir, records, staged + [MANIFEST])
    finally:
        if pool is not None:
            pool.close()
        shutil.rmtree(stage, ignore_errors=True)
    logger.info("preprocess done in %.1f s: %s", time.time() - t_start, rows)
    return manifest


# --------------------------------------------------------------------------- committing the set
def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move(src: str, dst: str) -> None:
    """One rename of the commit (a separate function so tests can interrupt a commit between moves)."""
    os.replace(src, dst)


def _commit_order(names: Sequence[str]) -> List[str]:
    """Data files first, metas next, the manifest last."""
    return ([n for n in names if not n.endswith("_meta") and n != MANIFEST]
            + [n for n in names if n.endswith("_meta")] + [n for n in names if n == MANIFEST])


def _commit(stage: str, out_dir: str, records: Dict[str, dict], moves: Sequence[str]) -> None:
    """Move the staged files ``moves`` into ``out_dir`` as one set.

    The marker (``dio.COMMIT_MARKER``: the stage, the moves and the records of the whole new
    set) is written first, so a kill between two renames leaves a folder that readers refuse
    and that the next run finishes (``recover_commit``); it is removed after the last rename.
    """
    order = _commit_order(moves)
    plan = {"pid": os.getpid(), "stage": os.path.basename(stage), "moves": order, "files": records}
    with dio.atomic_write(os.path.join(out_dir, dio.COMMIT_MARKER)) as f:
        json.dump(plan, f, indent=1, sort_keys=True)
    _fsync_dir(out_dir)
    for name in order:
        _move(os.path.join(stage, name), os.path.join(out_dir, name))
    _fsync_dir(out_dir)
    os.remove(os.path.join(out_dir, dio.COMMIT_MARKER))
    _fsync_dir(out_dir)


def _is_live_preprocess(pid: int) -> bool:
    """A running process ``pid`` that is a Python process (a pid reused by something else is not)."""
    if not dio.pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"python" in f.read().lower()
    except OSError:
        return True  # no /proc: trust the pid


def recover_commit(out_dir: str) -> Optional[str]:
    """Deal with the marker of an interrupted commit in ``out_dir``: ``"finished"`` when the killed
    run's staged files were all still there (the moves are completed), ``"removed"`` when they were
    not (every file of that set is deleted, so the rerun rebuilds them); None without a marker."""
    marker = os.path.join(out_dir, dio.COMMIT_MARKER)
    if not os.path.exists(marker):
        return None
    try:
        with open(marker, encoding="utf-8") as f:
            plan = json.load(f)
        pid, moves, records = int(plan["pid"]), list(plan["moves"]), dict(plan["files"])
        stage = os.path.join(out_dir, os.path.basename(str(plan["stage"])))
        if not all(isinstance(n, str) and os.path.basename(n) == n and n in records for n in moves):
            raise ValueError("bad move list")
    except (OSError, ValueError, KeyError, TypeError):
        plan = None
    if plan is not None and pid != os.getpid() and _is_live_preprocess(pid) and os.path.isdir(stage):
        raise data_error(out_dir, None, f"preprocess.py (pid {pid}) is committing its outputs here; "
                         "wait for it to end")
    if plan is not None:
        pending = []
        for name in moves:
            src, dst = os.path.join(stage, name), os.path.join(out_dir, name)
            if os.path.exists(src) and dio.record_matches(src, records[name]):
                pending.append(name)
            elif not (os.path.exists(dst) and dio.record_matches(dst, records[name])):
                break
        else:
            for name in pending:
                _move(os.path.join(stage, name), os.path.join(out_dir, name))
            _fsync_dir(out_dir)
            os.remove(marker)
            _fsync_dir(out_dir)
            shutil.rmtree(stage, ignore_errors=True)
            logger.warning("%s: finished the commit of a killed preprocess.py run (pid %d, %d of %d files "
                           "were still to move)", out_dir, pid, len(pending), len(moves))
            return "finished"
    names = set(output_names()) | (set(records) if plan is not None else set())
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, name))
    _fsync_dir(out_dir)
    os.remove(marker)
    _fsync_dir(out_dir)
    logger.warning("%s: a killed preprocess.py commit could not be finished (its staged files are gone): "
                   "removed the mixed set; everything is rebuilt", out_dir)
    return "removed"


def _tokenize_collection(kind: str, args: PreprocessArgs, stage: str, pool: _OrderedPool, n_lines: int,
                         sha256: str) -> Tuple[Dict[int, int], ExtraColumns]:
    from tqdm import tqdm

    path = os.path.join(args.data_dir, INPUT_FILES[kind]["collection"])
    prefix = dio.token_prefix(stage, dio.PASSAGES)
    writer = _RowWriter(dio.token_memmap_path(prefix), args.passage_width, n_lines, "the passages memmap")
    pids = array.array("q")
    extra = ExtraColumns()
    digest = hashlib.sha256()
    tasks = ((kind, path, lineno, blob, args.passage_width, args.max_doc_character)
             for lineno, blob in _line_blocks(path, BLOCK_BYTES, digest))
    changed = f"changed while preprocess.py read it ({n_lines} lines when counted, %s): rerun when it is complete"
    try:
        with tqdm(unit=" passages", desc="passages", disable=None, file=sys.stderr) as bar:
            for block_pids, flat, lengths, n_extra, first_extra in pool.map(_collection_block, tasks):
                if len(pids) + len(block_pids) > n_lines:
                    raise data_error(path, None, changed % "more now")
                writer.add(flat, lengths)
                pids.extend(block_pids.tolist())
                extra.add(n_extra, first_extra)
                bar.update(lengths.size)
    except BaseException:
        writer.abort()
        raise
    lengths = writer.close()
    if len(pids) != n_lines or digest.hexdigest() != sha256:
        raise data_error(path, None, changed % f"{len(pids)} when tokenized, other content")
    if not len(pids):
        raise data_error(path, None, "the collection is empty")
    ids = np.frombuffer(pids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    dup = np.nonzero(ids[order][1:] == ids[order][:-1])[0]
    if dup.size:
        # report the duplicate that appears earliest in the file
        second = order[dup + 1]
        k = int(np.argmin(second))
        first_line = int(order[dup[k]]) + 1
        raise data_error(path, int(second[k]) + 1, f"duplicate id {int(ids[second[k]])} (first on line {first_line})")
    _save_token_cache(prefix, lengths, args.passage_width)
    pid2offset = dict(zip(ids.tolist(), range(len(ids))))
    _save_pickle(dio.pid2offset_path(stage), pid2offset)
    logger.info("%d passages tokenized", len(ids))
    return pid2offset, extra


def _write_query_set(kind: str, qs: _QuerySet, pid2offset: Dict[int, int], args: PreprocessArgs,
                     stage: str, pool: _OrderedPool) -> Tuple[int, Optional[int]]:
    # qrels must point at the collection
    for lineno, _qid, pid, _rel in qs.qrels:
        if pid not in pid2offset:
            raise data_error(qs.qrels_path, lineno, f"{'D' if kind == 'doc' else ''}{pid} is not in the collection")
    if qs.qrels_path is None:
        keep = list(range(len(qs.qids)))
    else:
        judged = {qid for _, qid, _, _ in qs.qrels}
        keep = [i for i, qid in enumerate(qs.qids) if qid in judged]
    qid2offset = {qs.qids[i]: row for row, i in enumerate(keep)}
    texts = [qs.texts[i] for i in keep]

    prefix = dio.token_prefix(stage, dio.query_name(qs.mode))
    writer = _RowWriter(dio.token_memmap_path(prefix), args.query_width, len(texts),
                        f"the {dio.query_name(qs.mode)} memmap")
    tasks = ((texts[s:s + QUERY_BLOCK], args.query_width) for s in range(0, len(texts), QUERY_BLOCK))
    try:
        for flat, lengths in pool.map(_query_block, tasks):
            writer.add(flat, lengths)
    except BaseException:
        writer.abort()
        raise
    lengths = writer.close()
    _save_token_cache(prefix, lengths, args.query_width)
    _save_pickle(dio.qid2offset_path(stage, qs.mode), qid2offset)
    if qs.qrels_path is None:
        return len(keep), None
    with open(dio.qrel_path(stage, qs.mode), "w", encoding="utf-8", newline="\n") as f:
        for _lineno, qid, pid, rel in qs.qrels:
            f.write(f"{qid2offset[qid]}\t0\t{pid2offset[pid]}\t{rel}\n")
    return len(keep), len(qs.qrels)
