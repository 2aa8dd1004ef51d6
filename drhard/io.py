"""On-disk names and formats of DRhard, in one place (docs/formats.md describes them for users).

Every artifact the pipeline reads or writes is named here (the "artifact names"
section: the files of a preprocess folder and the outputs of retrieval) and read
or written through this module: token-id memmaps with their ``_meta`` JSON and
``_length.npy``, the id maps, offset qrels, rank files, ``hard.json`` names and
embedding memmaps.  Writers are atomic: they write under a temporary name in the
same folder and rename when complete, so a killed process never leaves a file
that a rerun would trust.  Qrels, run and rank files are read by one line reader
(``iter_fields``), also used by ``drhard.metrics``.

Words: ``qid``/``pid`` are the collection's ids; ``qoffset``/``poffset`` are
rows of the memmaps (what preprocess assigned).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import socket
import tempfile
from collections import OrderedDict
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .errors import DataError, NoSpaceError, data_error  # noqa: F401 - re-exported: readers raise them

logger = logging.getLogger(__name__)

MODES = ("train", "dev", "test", "lead")
QREL_MODES = ("train", "dev", "test")  # the modes with qrels ("lead" has none)


# --------------------------------------------------------------------------- artifact names
# The one place where the pipeline's file names are spelled (docs/formats.md has the formats).
# A preprocess folder (preprocess.py): token caches "passages" and "<mode>-query" (each a
# <prefix>.memmap, <prefix>_length.npy and <prefix>_meta), the id maps and the offset qrels.
PASSAGES = "passages"
PID2OFFSET = "pid2offset.pickle"
PREPROCESS_MANIFEST = "preprocess_manifest.json"
COMMIT_MARKER = ".preprocess-commit.json"
# Outputs of retrieval (star/inference.py, star/prepare_hardneg.py, adore/inference.py, star/bm25_hardneg.py).
HARD_JSON = "hard.json"


def query_name(mode: str) -> str:
    """Token-cache name of the query set ``mode`` (``dev-query``)."""
    return f"{mode}-query"


def qid2offset_name(mode: str) -> str:
    return f"{mode}-qid2offset.pickle"


def qrel_name(mode: str) -> str:
    """The offset qrels of ``mode`` in a preprocess folder (``qoffset\\t0\\tpoffset\\trel``)."""
    return f"{mode}-qrel.tsv"


def token_cache_names(name: str) -> List[str]:
    """The three files of the token cache ``name``: ids, row lengths and meta."""
    return [name + ".memmap", name + "_length.npy", name + "_meta"]


def token_prefix(preprocess_dir: str, name: str) -> str:
    """Path prefix of the preprocess token memmap ``name`` (``passages``, ``dev-query``, ...).

    The one place that turns a token-cache name into a path: ``TokenCache``,
    ``read_meta`` and ``check_token_cache`` take what this returns.
    """
    return os.path.join(preprocess_dir, name)


def pid2offset_path(preprocess_dir: str) -> str:
    return os.path.join(preprocess_dir, PID2OFFSET)


def qid2offset_path(preprocess_dir: str, mode: str) -> str:
    return os.path.join(preprocess_dir, qid2offset_name(mode))


def qrel_path(preprocess_dir: str, mode: str) -> str:
    return os.path.join(preprocess_dir, qrel_name(mode))


def passage_embedding_path(output_dir: str) -> str:
    """float32 passage embeddings ``[N, dim]``, row = poffset (also ADORE's ``--pembed_path``/``--dmemmap_path``)."""
    return os.path.join(output_dir, PASSAGES + ".memmap")


def passage_id_path(output_dir: str) -> str:
    return os.path.join(output_dir, PASSAGES + "-id.memmap")


def query_embedding_path(output_dir: str, mode: str) -> str:
    return os.path.join(output_dir, query_name(mode) + ".memmap")


def query_id_path(output_dir: str, mode: str) -> str:
    return os.path.join(output_dir, query_name(mode) + "-id.memmap")


def qembed_path(output_dir: str, mode: str) -> str:
    """ADORE inference's query embeddings (``<mode>.qembed.memmap``)."""
    return os.path.join(output_dir, f"{mode}.qembed.memmap")


def rank_path(output_dir: str, mode: str) -> str:
    """A run of ``mode``: ``qoffset\\tpoffset\\trank`` (or official ids after cvt_back.py)."""
    return os.path.join(output_dir, f"{mode}.rank.tsv")


def trec_run_path(output_dir: str, mode: str) -> str:
    return os.path.join(output_dir, f"{mode}.rank.trec")


def hard_json_path(output_dir: str) -> str:
    return os.path.join(output_dir, HARD_JSON)


# --------------------------------------------------------------------------- hashing
HASH_BLOCK = 1 << 22


def sha256_file(path: str, ranges: Optional[Sequence[Tuple[int, int]]] = None) -> str:
    """sha256 hex of the file ``path``, or of its byte ``ranges`` ``[(start, length), ...]`` read one after the
    other (the one hashing loop of manifests, checkpoints and tokenizer fingerprints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for start, length in ranges if ranges is not None else [(0, None)]:
            f.seek(start)
            left = length
            while left is None or left > 0:
                block = f.read(HASH_BLOCK if left is None else min(HASH_BLOCK, left))
                if not block:
                    break
                h.update(block)
                if left is not None:
                    left -= len(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- atomic writes
def host_tag() -> str:
    """This machine's name as it appears in temporary names (``[A-Za-z0-9.]``, anything else ``_``)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "_"


def _tmp_name(path: str, host: bool = False) -> str:
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.tmp-{os.getpid()}" + (f"@{host_tag()}" if host else ""))


@contextlib.contextmanager
def atomic_path(path: str, host: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    For writers that want a file name (np.save, faiss, torch).  On any exception
    the temporary file is removed and ``path`` is left as it was.  ``host``: the
    name also carries this machine's name (``.<name>.tmp-<pid>@<host>``), for a file
    that processes of other machines write into too (sharded encoding on a shared
    file system): ``remove_stale_tmp`` on another machine, where the pid means
    nothing, leaves it alone.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp_name(path, host)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", encoding: Optional[str] = "utf-8"):
    """Open a temporary file for writing and rename it onto ``path`` when the block ends cleanly."""
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` on success.

    The temporary names carry the writer's pid (``.<name>.tmp-<pid>-XXXX``), so
    ``remove_stale_tmp`` can tell a killed writer's leftovers from a live one's.
    """
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path)
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-{os.getpid()}-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=f".{base}.old-{os.getpid()}-", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_WRITER = re.compile(r"(\d+)(?:@([A-Za-z0-9._]+))?(?:-|$)")


def _writer(name: str) -> Tuple[Optional[int], Optional[str]]:
    """``(pid, host)`` of ``.<name>.tmp-<pid>[@<host>][-XXXX]`` / ``.<name>.old-<pid>-XXXX``: host None when the
    name carries none (this machine's), pid None when there is no pid."""
    for marker in (".tmp-", ".old-"):
        if marker in name:
            m = _WRITER.match(name.rsplit(marker, 1)[1])
            return (int(m.group(1)), m.group(2)) if m else (None, None)
    return None, None


def _writer_pid(name: str) -> Optional[int]:
    """The pid in ``.<name>.tmp-<pid>[@<host>][-XXXX]`` / ``.<name>.old-<pid>-XXXX``; None when there is none."""
    return _writer(name)[0]


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists (ours included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
    return True


def remove_stale_tmp(folder: str) -> List[str]:
    """Delete temporary files that a killed writer left in ``folder``; return their names.

    Only names whose writer pid is not a running process are removed: a
    concurrent writer's temp file (another run writing into the same folder)
    is left alone, and so is a name without a pid (we cannot tell), and a name
    that carries another machine's name (``@<host>``: a pid is only known on its
    own machine, and the folder may be on a file system shared by several).
    """
    removed: List[str] = []
    if not os.path.isdir(folder):
        return removed
    here = host_tag()
    for name in os.listdir(folder):
        if not name.startswith(".") or not (".tmp-" in name or ".old-" in name):
            continue
        pid, host = _writer(name)
        if pid is None or (host is not None and host != here) or pid_alive(pid):
            continue
        p = os.path.join(folder, name)
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
        removed.append(name)
    if removed:
        logger.info("%s: removed %d temporary files of killed writers", folder, len(removed))
    return removed


# --------------------------------------------------------------------------- token-id caches
def token_memmap_path(prefix: str) -> str:
    """The ids of a token cache live in ``<prefix>.memmap`` (beside ``<prefix>_meta``, ``<prefix>_length.npy``)."""
    return token_cache_names(prefix)[0]


def length_path(prefix: str) -> str:
    return token_cache_names(prefix)[1]


def meta_path(prefix: str) -> str:
    return token_cache_names(prefix)[2]


def write_meta(prefix: str, total_number: int, width: int, dtype: str = "int32") -> None:
    """``<prefix>_meta`` exactly as the original writes it (json.dump, default separators): the row count and
    the row width, which the original's key calls ``embedding_size`` (it is a number of tokens)."""
    meta = {"type": dtype, "total_number": int(total_number), "embedding_size": int(width)}
    with atomic_write(meta_path(prefix)) as f:
        json.dump(meta, f)


def read_meta(prefix: str) -> dict:
    """``<prefix>_meta`` as a dict, plus ``width``: the tokens per row, stored under the original's key
    ``embedding_size`` (kept on disk; the library says ``width``).  Refuses a folder that an interrupted
    preprocess commit left mixed and a meta that is not the one ``preprocess_manifest.json`` records
    (see ``check_preprocess_set``)."""
    path = meta_path(prefix)
    check_no_interrupted_commit(os.path.dirname(path) or ".")
    if not os.path.exists(path):
        raise data_error(path, None, "missing (run preprocess.py first)")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        meta["total_number"] = int(meta["total_number"])
        meta["width"] = meta["embedding_size"] = int(meta["embedding_size"])
        np.dtype(meta["type"])
    except (ValueError, KeyError, TypeError) as e:
        raise data_error(path, None, f"not a DRhard meta file ({e})") from None
    check_preprocess_set(os.path.dirname(path) or ".", [os.path.basename(path)])
    return meta


def check_token_cache(prefix: str) -> Tuple[dict, int]:
    meta = read_meta(prefix)
    n, width = meta["total_number"], meta["width"]
    itemsize = np.dtype(meta["type"]).itemsize
    data = token_memmap_path(prefix)
    if not os.path.exists(data):
        raise data_error(data, None, "missing (run preprocess.py first)")
    size = os.path.getsize(data)
    if size != n * width * itemsize:
        raise data_error(data, None, f"truncated or wrong size: {size} bytes, meta says "
                         f"{n} rows x {width} x {itemsize} B = {n * width * itemsize}")
    lp = length_path(prefix)
    if not os.path.exists(lp):
        raise data_error(lp, None, "missing (run preprocess.py first)")
    folder, name = os.path.split(prefix)
    check_preprocess_set(folder or ".", [os.path.basename(data), os.path.basename(lp)] + set_companions(name))
    return meta, n


class TokenCache:
    """Rows of a preprocess memmap (``passages``, ``train-query``, ...) as id lists.

    ``cache[i]`` returns the real ids of row ``i`` (padding dropped);
    ``cache.get(i, max_len)`` cuts them as the original does:
    ``[ids[0]] + ids[1:n] + [ids[len-1]]``, ``n = min(max_len-1, len-1)``.
    """

    def __init__(self, prefix: str):
        meta, n = check_token_cache(prefix)
        self.prefix = prefix
        self.width = meta["width"]
        self.ids = np.memmap(token_memmap_path(prefix), dtype=meta["type"], mode="r", shape=(n, self.width))
        self.lengths = _load_lengths(length_path(prefix), n, self.width)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> List[int]:
        return self.ids[i, : int(self.lengths[i])].tolist()

    def get(self, i: int, max_len: int) -> List[int]:
        return cut_ids(self[i], max_len)


def _load_lengths(path: str, n: int, width: int) -> np.ndarray:
    """``<prefix>_length.npy``: ``n`` integer row lengths in 1..width (no pickles are loaded)."""
    try:
        lengths = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise data_error(path, None, f"not a numpy array of row lengths ({e})") from None
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise data_error(path, None, f"expected a 1-d integer array, got {lengths.dtype} {lengths.shape}")
    if len(lengths) != n:
        raise data_error(path, None, f"{len(lengths)} lengths for {n} rows")
    bad = np.flatnonzero((lengths < 1) | (lengths > width))
    if len(bad):
        raise data_error(path, None, f"row {bad[0]} has length {lengths[bad[0]]}, outside 1..{width} "
                         f"({len(bad)} such rows)")
    return lengths


def write_token_cache(prefix: str, rows: Sequence[Sequence[int]], width: int) -> None:
    """Write id rows as preprocess does (int32, zero-padded to ``width``, int32 lengths, meta); for tests and tools."""
    arr = np.zeros((len(rows), width), np.int32)
    lengths = np.zeros(len(rows), np.int32)
    for i, r in enumerate(rows):
        r = list(r)[:width]
        arr[i, : len(r)] = r
        lengths[i] = len(r)
    save_array_memmap(token_memmap_path(prefix), arr, np.int32)
    with atomic_path(length_path(prefix)) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, lengths)
    write_meta(prefix, len(rows), width)


def cut_ids(ids: Sequence[int], max_len: int) -> List[int]:
    """Keep ``<s>`` and the final ``</s>`` when cutting a stored row to ``max_len``, as the original's training
    and inference code cut it (docs/formats.md, "Preprocess folder")."""
    ids = list(ids)
    if len(ids) <= max_len:
        return ids
    n = min(max_len - 1, len(ids) - 1)
    return [ids[0]] + ids[1:n] + [ids[-1]]


# --------------------------------------------------------------------------- id maps (pickles)
_NUMPY_SCALAR_GLOBALS = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                         ("numpy", "dtype")}


class _IdMapUnpickler(pickle.Unpickler):
    """Allows only what an id map needs: ints, and numpy integer scalars (the original's
    ``pid2offset`` keys are ``numpy.int32`` read back from a memmap)."""

    def find_class(self, module, name):  # noqa: D401 - pickle API
        if (module, name) in _NUMPY_SCALAR_GLOBALS:
            if name == "dtype":
                return np.dtype
            try:
                from numpy._core.multiarray import scalar  # numpy 2
            except ImportError:
                from numpy.core.multiarray import scalar  # numpy 1
            return scalar
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: an id map holds only ints")


def load_offset_map(path: str) -> Dict[int, int]:
    """Load ``pid2offset.pickle`` / ``<mode>-qid2offset.pickle`` (dict of int -> int).

    The original format is a pickle; we read it with an unpickler that refuses
    every global, so a crafted file cannot run code.  A map of a preprocess folder goes
    through ``check_preprocess_set`` first, as every reader of that folder does.
    """
    _check_in_set(path)
    if not os.path.exists(path):
        raise data_error(path, None, "missing (run preprocess.py first)")
    try:
        with open(path, "rb") as f:
            obj = _IdMapUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise data_error(path, None, f"not a DRhard id map ({e})") from None
    ints = (int, np.integer)
    if not isinstance(obj, dict) or not all(isinstance(k, ints) and not isinstance(k, bool) and
                                            isinstance(v, ints) and not isinstance(v, bool) for k, v in obj.items()):
        raise data_error(path, None, "not a DRhard id map (expected a dict of int -> int)")
    return {int(k): int(v) for k, v in obj.items()}


def save_offset_map(path: str, mapping: Dict[int, int]) -> None:
    with atomic_write(path, "wb") as f:
        pickle.dump(mapping, f, protocol=4)


# --------------------------------------------------------------------------- qrels and runs
def _open_text(path: str):
    if not os.path.exists(path):
        raise data_error(path, None, "file not found")
    return open(path, "rb")


def _clean_line(path: str, lineno: int, raw: bytes, crlf: bool = False) -> str:
    """One raw line (bytes, with its ``\\n``) -> text; a CR, a BOM and bad UTF-8 are errors naming the line.

    ``crlf``: a CR right before the ``\\n`` (a CRLF line ending) is dropped instead of refused, as
    the official MS MARCO evaluation script strips it; a CR anywhere else is still an error.
    """
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if crlf and raw.endswith(b"\r"):
        raw = raw[:-1]
    if b"\r" in raw:
        if raw.endswith(b"\r") and not crlf:
            raise data_error(path, lineno, "CRLF line ending (convert the file with dos2unix)")
        raise data_error(path, lineno, "carriage return inside the line (a lone CR line break?)")
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raise data_error(path, lineno, "starts with a UTF-8 byte-order mark (remove it)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise data_error(path, lineno, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None


def iter_lines(path: str, crlf: bool = False) -> Iterator[Tuple[int, str]]:
    """Yield ``(lineno, line)`` without the newline; CR, BOM and bad UTF-8 are errors.

    Lines are split on ``\\n`` only and decoded one by one, so an error names the
    line that holds the bad byte.  ``crlf`` tolerates CRLF line endings (``_clean_line``).
    """
    with _open_text(path) as f:
        for lineno, raw in enumerate(f, 1):
            yield lineno, _clean_line(path, lineno, raw, crlf)


def iter_fields(path: str, crlf: bool = False) -> Iterator[Tuple[int, List[str]]]:
    """Yield ``(lineno, white-space split fields)`` of the non-blank lines of a qrels, run or rank file.

    The one reader of these files (``read_offset_qrels``, ``iter_rank_lines`` and
    ``drhard.metrics``): line rules of ``iter_lines``; ``crlf`` as there.
    """
    for lineno, line in iter_lines(path, crlf):
        fields = line.split()
        if fields:
            yield lineno, fields


def parse_int(path: str, lineno: int, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise data_error(path, lineno, f"{what} {value!r} is not an integer") from None


def read_offset_qrels(path: str, min_rel: int = 1) -> "OrderedDict[int, List[int]]":
    """``qoffset 0 poffset rel`` (tab or space) -> {qoffset: [poffset, ...]} in file order.

    Pairs with ``rel < min_rel`` are not relevant (graded test qrels keep 0s).
    Every query of the file is a key, even when none of its lines is relevant.
    The qrels of a preprocess folder go through ``check_preprocess_set`` first.
    """
    _check_in_set(path)
    rels: "OrderedDict[int, List[int]]" = OrderedDict()
    for lineno, cols in iter_fields(path):
        if len(cols) != 4:
            raise data_error(path, lineno, f"expected 4 columns 'qid 0 pid rel', got {len(cols)}")
        q = parse_int(path, lineno, cols[0], "query id")
        p = parse_int(path, lineno, cols[2], "passage id")
        r = parse_int(path, lineno, cols[3], "relevance")
        lst = rels.setdefault(q, [])
        if r >= min_rel and p not in lst:
            lst.append(p)
    return rels


def iter_rank_lines(path: str, offsets: bool = False) -> Iterator[Tuple[int, int, int, int]]:
    """Stream a rank file: ``(lineno, q, p, rank)`` per non-blank ``q p rank`` line (tab or space).

    ``offsets``: the ids are preprocess offsets (only the error messages differ).
    """
    what, qname, pname = (("qoffset poffset rank", "query offset", "passage offset") if offsets
                          else ("qid pid rank", "query id", "passage id"))
    for lineno, cols in iter_fields(path):
        if len(cols) != 3:
            raise data_error(path, lineno, f"expected 3 columns '{what}', got {len(cols)}")
        q = parse_int(path, lineno, cols[0], qname)
        p = parse_int(path, lineno, cols[1], pname)
        r = parse_int(path, lineno, cols[2], "rank")
        yield lineno, q, p, r


def read_rank(path: str) -> "OrderedDict[int, List[int]]":
    """``qid pid rank`` (tab or space, 1-based ranks) -> {qid: [pid by rank]}."""
    runs: "OrderedDict[int, List[Tuple[int, int]]]" = OrderedDict()
    for _, q, p, r in iter_rank_lines(path):
        runs.setdefault(q, []).append((r, p))
    return OrderedDict((q, [p for _, p in sorted(v)]) for q, v in runs.items())


def write_rank(path: str, qids: Iterable[int], pid_lists: Iterable[Iterable[int]]) -> None:
    """Write ``qid\\tpid\\trank`` (1-based), skipping faiss's -1 fillers; atomic."""
    with atomic_write(path) as f:
        for qid, pids in zip(qids, pid_lists):
            rank = 0
            for pid in pids:
                pid = int(pid)
                if pid < 0:
                    continue
                rank += 1
                f.write(f"{int(qid)}\t{pid}\t{rank}\n")


# --------------------------------------------------------------------------- embeddings
# Embedding files are raw row-major [rows, dim] arrays without a header, float32 as the original wrote them
# or float16 (``--embedding_dtype float16``).  The sidecar ``<file>.info.json`` (written by drhard.encode
# last, as the proof that the file is complete) records rows, dim and dtype; a file without one is float32,
# the original's format.
EMBEDDING_DTYPES = ("float32", "float16")
EMBEDDING_SIDECAR_SUFFIX = ".info.json"


def embedding_sidecar_path(path: str) -> str:
    """``<file>.info.json``, the sidecar of an embedding file."""
    return path + EMBEDDING_SIDECAR_SUFFIX


def read_embedding_info(path: str) -> Optional[dict]:
    """The sidecar of the embedding file ``path`` as a dict; None when there is none or it is not a JSON object."""
    try:
        with open(embedding_sidecar_path(path), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def check_embedding_dtype(dtype) -> np.dtype:
    """``float32`` or ``float16`` as a numpy dtype; anything else is a ``ValueError``."""
    dt = np.dtype(dtype)
    if dt.name not in EMBEDDING_DTYPES:
        raise ValueError(f"embedding dtype must be one of {', '.join(EMBEDDING_DTYPES)}, got {dt.name}")
    return dt


def embedding_dtype(path: str) -> np.dtype:
    """The dtype of the embedding file ``path``: its sidecar's ``dtype``, float32 without a sidecar (the
    original's files).  A sidecar naming another dtype is a ``DataError``."""
    info = read_embedding_info(path)
    name = "float32" if info is None or info.get("dtype") is None else info.get("dtype")
    if name not in EMBEDDING_DTYPES:
        raise data_error(embedding_sidecar_path(path), None, f"dtype {name!r} is not one of "
                         f"{', '.join(EMBEDDING_DTYPES)}")
    return np.dtype(name)


def open_embeddings(path: str, dim: Optional[int] = None, n: Optional[int] = None,
                    dtype=None) -> np.memmap:
    """Open an embedding memmap ``[N, dim]`` read-only (no header; the shape comes from the caller).

    ``dtype``: float32 or float16; None reads it from the sidecar (``embedding_dtype``: float32 without one).
    Either ``dim`` or ``n`` must be known; the file size must be a whole number of rows.
    """
    if not os.path.exists(path):
        raise data_error(path, None, "embedding memmap not found")
    dt = embedding_dtype(path) if dtype is None else check_embedding_dtype(dtype)
    item = dt.itemsize
    size = os.path.getsize(path)
    if dim is None and n is None:
        raise ValueError("open_embeddings needs dim or n")
    if dim is None:
        if n <= 0 or size % (item * n):
            raise data_error(path, None, f"{size} bytes is not {n} {dt.name} rows")
        dim = size // (item * n)
    if size % (item * dim):
        raise data_error(path, None, f"{size} bytes is not a whole number of {dt.name} rows of dim {dim} "
                         "(truncated, or written by a model of another embedding size)")
    rows = size // (item * dim)
    if n is not None and rows != n:
        raise data_error(path, None, f"holds {rows} {dt.name} rows of dim {dim}, expected {n} "
                         "(truncated, or written by a model of another embedding size)")
    return np.memmap(path, dtype=dt, mode="r", shape=(rows, dim))


def save_array_memmap(path: str, array: np.ndarray, dtype) -> None:
    """Write ``array`` as a raw memmap file (no header) atomically."""
    with atomic_path(path) as tmp:
        np.ascontiguousarray(array, dtype=dtype).tofile(tmp)


# --------------------------------------------------------------------------- disk space
def _existing_folder(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.isdir(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def check_free_space(path: str, nbytes: int, what: str = "the output") -> None:
    """Raise ``NoSpaceError`` unless the file system that will hold ``path`` has ``nbytes`` free.

    ``path`` is the file (or folder) about to be written; it need not exist yet.
    Called before a large memmap is written, so a run fails at once instead of
    hours later with a half-written file.  A file that is being replaced does not
    count as free: the new one is written beside it and renamed when complete.
    """
    folder = _existing_folder(path)
    free = shutil.disk_usage(folder).free
    if int(nbytes) > free:
        raise NoSpaceError(f"{folder}: not enough free disk space for {what}: {int(nbytes)} bytes "
                           f"({int(nbytes) / 2 ** 30:.2f} GiB) needed, {free} bytes ({free / 2 ** 30:.2f} GiB) free")


def allocate_file(path: str, nbytes: int, what: str = "the output") -> None:
    """Create ``path`` with ``nbytes`` of disk space reserved (``posix_fallocate``), ready for ``np.memmap(mode="r+")``.

    A sparse file (``np.memmap(mode="w+")``) reserves nothing: when the disk fills
    while it is written the process dies with ``SIGBUS`` ("Bus error").  Reserving
    the blocks up front turns that into ``NoSpaceError`` before any work, and the
    file is removed again.  File systems without ``fallocate`` get a sparse file
    (after the ``check_free_space`` test).
    """
    check_free_space(path, nbytes, what)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            if nbytes > 0:
                os.posix_fallocate(fd, 0, int(nbytes))
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise NoSpaceError(f"{os.path.dirname(os.path.abspath(path))}: not enough free disk space for "
                                   f"{what}: {int(nbytes)} bytes ({int(nbytes) / 2 ** 30:.2f} GiB) needed") from None
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            os.ftruncate(fd, int(nbytes))  # no fallocate on this file system: sparse, checked above
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        raise
    os.close(fd)


# --------------------------------------------------------------------------- preprocess output set
# preprocess.py writes its outputs as one set: every file is staged, then
#   1. COMMIT_MARKER is written (atomically) into the folder, listing the files about to move;
#   2. the files are renamed into the folder: data files, metas, PREPROCESS_MANIFEST last;
#   3. the marker is removed.
# A folder holding the marker is therefore a set mixed from two runs (a commit was killed):
# readers refuse it, and the next preprocess.py run finishes or undoes the commit.  The
# manifest records every file of the set (``set_file_record``); readers compare the files they
# read with it, which catches files copied in from another run.  A folder without a manifest
# (written by the original code) has nothing to compare against and stays readable.
SET_FULL_HASH_LIMIT = 16 * 2 ** 20  # files up to this size are hashed whole (reading them costs < 20 ms)
SET_EDGE_BYTES = 2 ** 20            # larger ones: sha256 of their first and last MiB (a 22 GB memmap)
MIXED_SET = "an interrupted preprocess.py commit left a mixed set of files (some from an earlier run): " \
            "rerun preprocess.py"


def set_companions(name: str) -> List[str]:
    """Files a reader of the token cache ``name`` uses with it: the id map (and the qrels)."""
    if name == PASSAGES:
        return [PID2OFFSET]
    for mode in MODES:
        if name == query_name(mode):
            return [qid2offset_name(mode), qrel_name(mode)]
    return []


def set_file_record(path: str) -> Dict[str, object]:
    """``{"size", "sha256"}`` of a file up to ``SET_FULL_HASH_LIMIT``; larger files get
    ``{"size", "sha256_edges"}``, the sha256 of their first and last ``SET_EDGE_BYTES``."""
    size = os.path.getsize(path)
    if size <= SET_FULL_HASH_LIMIT:
        return {"size": size, "sha256": sha256_file(path)}
    edges = [(0, SET_EDGE_BYTES), (size - SET_EDGE_BYTES, SET_EDGE_BYTES)]
    return {"size": size, "sha256_edges": sha256_file(path, edges)}


def record_matches(path: str, rec: dict) -> bool:
    """True when ``path`` has the size and hash of ``rec`` (a ``set_file_record``)."""
    try:
        if os.path.getsize(path) != rec.get("size"):
            return False
        return set_file_record(path) == rec
    except OSError:
        return False


def check_no_interrupted_commit(folder: str) -> None:
    """Raise ``DataError`` when ``folder`` holds the marker of a preprocess commit that did not finish."""
    if os.path.exists(os.path.join(folder, COMMIT_MARKER)):
        raise data_error(folder, None, MIXED_SET)


def read_set_records(folder: str) -> Optional[Dict[str, dict]]:
    """The ``files`` records of ``folder``'s preprocess manifest; None when it has no manifest or the
    manifest predates set records (then nothing can be compared)."""
    path = os.path.join(folder, PREPROCESS_MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            man = json.load(f)
    except (OSError, ValueError) as e:
        raise data_error(path, None, f"not readable JSON ({e}): rerun preprocess.py") from None
    files = man.get("files") if isinstance(man, dict) else None
    if files is None:
        return None
    if not isinstance(files, dict) or not all(isinstance(r, dict) for r in files.values()):
        raise data_error(path, None, "'files' is not a table of file records: rerun preprocess.py")
    return files


def _check_in_set(path: str) -> None:
    """``check_preprocess_set`` for the one file ``path`` (a folder without a preprocess manifest or marker,
    such as a dataset folder, passes at the cost of two stats)."""
    folder, name = os.path.split(path)
    check_preprocess_set(folder or ".", [name])


def check_preprocess_set(folder: str, names: Sequence[str]) -> None:
    """Refuse ``folder`` when a preprocess commit was interrupted there, or when one of the files
    ``names`` that exists differs (size, hash) from what ``preprocess_manifest.json`` records.

    Costs a stat per file plus hashing files up to 16 MiB whole and 2 MiB of larger ones.
    A missing file is left to the caller (which reports it as missing).
    """
    check_no_interrupted_commit(folder)
    records = read_set_records(folder)
    if records is None:
        return
    for name in names:
        rec, path = records.get(name), os.path.join(folder, name)
        if rec is None or not os.path.exists(path):
            continue
        if not record_matches(path, rec):
            size = os.path.getsize(path)
            what = (f"size {size} B, the manifest records {rec.get('size')} B" if size != rec.get("size")
                    else "same size, other content")
            raise data_error(path, None, f"is not the file {PREPROCESS_MANIFEST} records ({what}): files of "
                             "different preprocess.py runs are mixed; rerun preprocess.py")
