"""Exact inner-product top-k without the embeddings in RAM (streamed from disk), or on a torch device.

``search_memmap`` reads an embedding file (raw float32 or float16 rows, no
header, as ``io.open_embeddings`` reads) in chunks of rows into reused buffers
with ``pread`` and keeps a running top-k per query, so memory stays bounded by
the chunk and the results whatever the file size: the 27 GB MS MARCO passage
matrix can be searched on a machine with less RAM than that.  The file is read
once, whatever the number of queries.  The chunks are read with ``pread``
rather than by slicing a ``np.memmap``, because mapped file pages count in the
process's resident memory (and can push it towards the OOM killer) while pages
read into a buffer stay in the kernel's page cache.  Each chunk is scored by
faiss' exact kernel when faiss is installed (``faiss.knn``: no index, no
score matrix) or by a torch matrix product.

``TorchFlatIndex`` holds the rows as one torch tensor (fp32 or fp16 storage) on
any device and answers ``search(q, k)`` on that device, chunked over rows to
bound the temporary score matrix: when the index shares a GPU with the query
encoder (ADORE), queries never leave the device.

Both compute the scores in float32 (fp16 rows are widened chunk by chunk, which
is exact) and return what ``faiss.IndexFlatIP`` returns on the same rows:
scores ``(Q, k)`` float32 sorted descending and row ids ``(Q, k)`` int64, with
id -1 and score ``-3.4028235e38`` (faiss' filler) after the last row when the
index holds fewer than ``k`` rows.  Scores agree with faiss to float32
rounding; ids agree except among (near-)tied scores, whose order faiss leaves
to its heap.

Tie order here is fixed and documented: among scores that compare equal the
lower row id ranks first, both in the order of the list and in which rows make
the cut at rank ``k``.  Chunk size, query batch, scorer and device change at
most the last bit of a score (a different summation order), so only rows whose
scores differ by float rounding can change places between them.
"""
from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Optional, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from .errors import NonFiniteError, data_error

logger = logging.getLogger(__name__)

FILLER_ID = -1
FILLER_SCORE = float(np.finfo(np.float32).min)  # what faiss IndexFlatIP reports beside id -1
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
DEFAULT_QUERY_BATCH = 1024
SCORERS = ("faiss", "torch")
# Chunk budget: this fraction of MemAvailable, at most MAX_CHUNK_BYTES (a bigger chunk buys nothing once the
# matrix product dominates), at least MIN_CHUNK_ROWS rows.
CHUNK_MEMORY_FRACTION = 0.25
MAX_CHUNK_BYTES = 256 << 20
FALLBACK_CHUNK_BYTES = 256 << 20  # when MemAvailable cannot be read (not Linux)
CUDA_MAX_CHUNK_BYTES = 2 << 30  # a GPU scores more rows per kernel; fewer chunks, fewer launches and syncs
MIN_CHUNK_ROWS = 256
TIE_FIX_ROWS = 64  # query rows whose tie at the cut is redone at once (bounds those temporaries)

ArrayOrPath = Union[str, os.PathLike, np.ndarray]


# --------------------------------------------------------------------------- memory budget
def mem_available_bytes(meminfo: str = "/proc/meminfo") -> Optional[int]:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes, or None where there is no such file (not Linux)."""
    try:
        with open(meminfo, "r", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    return None


def chunk_row_bytes(dim: int, file_dtype, query_batch: int, scorer: str = "torch") -> int:
    """Memory one chunk row costs a streamed search: two fp32 row buffers (one is read while the other is
    scored), an fp16 staging row for fp16 files, and with the torch scorer the row's column of the
    (query_batch, chunk) score matrix (faiss scores without one)."""
    file_dtype = np.dtype(file_dtype)
    staging = dim * file_dtype.itemsize if file_dtype != np.float32 else 0
    scores = int(query_batch) * 4 if scorer == "torch" else 0
    return 2 * dim * 4 + staging + scores


def default_chunk_rows(dim: int, file_dtype, query_batch: int, available: Optional[int] = None,
                       scorer: str = "torch") -> int:
    """Rows per chunk: ``CHUNK_MEMORY_FRACTION`` of ``available`` (default MemAvailable), capped at
    ``MAX_CHUNK_BYTES``, divided by ``chunk_row_bytes`` (which grows with the query batch)."""
    if available is None:
        available = mem_available_bytes()
    budget = FALLBACK_CHUNK_BYTES if available is None else int(available * CHUNK_MEMORY_FRACTION)
    budget = min(budget, MAX_CHUNK_BYTES)
    return max(MIN_CHUNK_ROWS, budget // chunk_row_bytes(dim, file_dtype, query_batch, scorer))


# --------------------------------------------------------------------------- top-k primitives
def sort_pairs(scores: torch.Tensor, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Order each row by score descending, then id ascending (two stable sorts)."""
    o = torch.argsort(ids, dim=1, stable=True)  # (B, m)
    scores, ids = scores.gather(1, o), ids.gather(1, o)
    o = torch.argsort(scores, dim=1, descending=True, stable=True)  # (B, m)
    return scores.gather(1, o), ids.gather(1, o)


def chunk_topk(scores: torch.Tensor, k: int, ordered: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``min(k, C)`` of each row of ``scores`` (B, C): ``(values, columns)`` ordered by value descending,
    column ascending; among values tied at the cut the lowest columns are kept.  ``ordered=False`` skips the
    final ordering (the set is the same; ``merge_topk`` orders what it merges anyway).

    ``torch.topk`` keeps an arbitrary subset of a tie that straddles the cut.  Asking it for one value more
    shows where that can have happened (the ``kc``-th and ``kc+1``-th values are equal) at no extra pass over
    the scores; only those rows are redone deterministically.
    """
    b, c = scores.shape
    kc = min(int(k), c)
    vals, cols = torch.topk(scores, min(kc + 1, c), dim=1, largest=True, sorted=True)  # (B, kc [+1])
    if vals.shape[1] > kc:
        straddle = vals[:, kc - 1] == vals[:, kc]  # (B,)
        vals, cols = vals[:, :kc], cols[:, :kc]  # (B, kc)
        if bool(straddle.any()):
            straddling = straddle.nonzero().squeeze(1)  # (R,)
            for g in range(0, len(straddling), TIE_FIX_ROWS):  # a few rows at a time: (R, C) temporaries
                rows = straddling[g:g + TIE_FIX_ROWS]  # (r,)
                sub, t = scores[rows], vals[rows, kc - 1:]  # (r, C), (r, 1) the kc-th largest value
                above = sub > t  # (r, C)
                tied = sub == t  # (r, C)
                need = kc - above.sum(dim=1, keepdim=True)  # (r, 1) how many tied values make the cut
                keep = above | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= need))  # (r, C) kc per row
                fixed = keep.nonzero()[:, 1].view(len(rows), kc)  # (r, kc) columns ascending
                cols[rows] = fixed
                vals[rows] = sub.gather(1, fixed)
    return sort_pairs(vals, cols) if ordered else (vals, cols)


def merge_topk(scores_a: torch.Tensor, ids_a: torch.Tensor, scores_b: torch.Tensor, ids_b: torch.Tensor,
               k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The top-``k`` of two candidate lists per row (B, ka) and (B, kb), by score descending then id ascending."""
    s, i = sort_pairs(torch.cat([scores_a, scores_b], dim=1), torch.cat([ids_a, ids_b], dim=1))  # (B, ka + kb)
    return s[:, :k], i[:, :k]


def pad_results(scores: torch.Tensor, ids: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Widen (B, m <= k) results to k columns with faiss' fillers (score -FLT_MAX, id -1)."""
    b, m = scores.shape
    if m == k:
        return scores, ids
    fill_s = torch.full((b, k - m), FILLER_SCORE, dtype=scores.dtype, device=scores.device)  # (B, k - m)
    fill_i = torch.full((b, k - m), FILLER_ID, dtype=ids.dtype, device=ids.device)  # (B, k - m)
    return torch.cat([scores, fill_s], dim=1), torch.cat([ids, fill_i], dim=1)


class RunningTopK:
    """Top-``k`` rows of one block of queries over chunks of scores that arrive one by one (any order, any sizes).

    ``add(scores, first_row)`` folds in the scores (B, C) of rows ``first_row .. first_row + C - 1``;
    ``result()`` returns ``(scores (B, k), ids (B, k))`` with fillers where fewer than ``k`` rows were seen.
    Memory: the (B, k) lists, plus what ``chunk_topk`` needs for one chunk.
    """

    def __init__(self, num_queries: int, k: int, device: Union[str, torch.device] = "cpu"):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)
        self.scores = torch.empty((num_queries, 0), dtype=torch.float32, device=device)  # (B, m), m grows to k
        self.ids = torch.empty((num_queries, 0), dtype=torch.int64, device=device)  # (B, m)

    def add(self, scores: torch.Tensor, first_row: int) -> None:
        if scores.shape[0] != self.scores.shape[0]:
            raise ValueError(f"scores for {scores.shape[0]} queries, this block has {self.scores.shape[0]}")
        if scores.shape[1] == 0:
            return
        self.add_candidates(*chunk_topk(scores, self.k, ordered=False), first_row)  # (B, kc)

    def add_candidates(self, scores: torch.Tensor, columns: torch.Tensor, first_row: int) -> None:
        """Fold in a chunk's own top-``k`` set (B, kc): ``columns`` count from the chunk's ``first_row``."""
        self.scores, self.ids = merge_topk(self.scores, self.ids, scores, columns + int(first_row),
                                           self.k)  # (B, <=k)

    def result(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return pad_results(self.scores, self.ids, self.k)


def faiss_knn():
    """``faiss.knn`` (exact top-k of queries against rows, no index), or None without faiss."""
    try:
        import faiss
    except ImportError:
        return None
    return getattr(faiss, "knn", None)


def faiss_chunk_topk(q: np.ndarray, x: np.ndarray, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``chunk_topk`` of the scores ``q @ x.T`` ((B, D) and (C, D) float32) computed by faiss' exact kernel,
    which never holds the (B, C) score matrix; the set is the same (lowest columns among ties at the cut),
    not ordered.  faiss is asked for one result more to see ties at the cut; a row with one gets all C
    results from faiss and is cut by ``sort_pairs``."""
    import faiss
    c = x.shape[0]
    kc = min(int(k), c)
    d, i = faiss.knn(q, x, min(kc + 1, c), metric=faiss.METRIC_INNER_PRODUCT)  # (B, kc [+1])
    vals, cols = torch.from_numpy(d), torch.from_numpy(i)  # (B, kc [+1])
    if vals.shape[1] > kc:
        straddle = vals[:, kc - 1] == vals[:, kc]  # (B,)
        vals, cols = vals[:, :kc], cols[:, :kc]  # (B, kc)
        if bool(straddle.any()):
            straddling = straddle.nonzero().squeeze(1)  # (R,)
            for g in range(0, len(straddling), TIE_FIX_ROWS):
                rows = straddling[g:g + TIE_FIX_ROWS]  # (r,)
                d_all, i_all = faiss.knn(q[rows.numpy()], x, c, metric=faiss.METRIC_INNER_PRODUCT)  # (r, C)
                s_all, c_all = sort_pairs(torch.from_numpy(d_all), torch.from_numpy(i_all))  # (r, C)
                vals[rows], cols[rows] = s_all[:, :kc], c_all[:, :kc]
    return vals, cols


# --------------------------------------------------------------------------- reading rows in chunks
def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in SUPPORTED_DTYPES:
        raise ValueError(f"embedding dtype must be float32 or float16, got {dt}")
    return dt


def _pread_into(fd: int, buf: memoryview, offset: int, path: str) -> None:
    """Fill ``buf`` from byte ``offset`` of the open file (short reads are continued)."""
    pos, want = 0, len(buf)
    while pos < want:
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [buf[pos:]], offset + pos)
        else:  # pragma: no cover - platforms without preadv
            data = os.pread(fd, want - pos, offset + pos)
            got = len(data)
            buf[pos:pos + got] = data
        if got == 0:
            raise data_error(path, None, f"ended at byte {offset + pos} while {offset + want} bytes were expected "
                             "(truncated while it was being read?)")
        pos += got


class RowSource:
    """Rows of an embedding matrix, yielded as float32 chunks (C, D) that reuse a fixed set of buffers.

    A file (a path, or a ``np.memmap`` or contiguous view of one, see ``memmap_region``) is read with ``pread`` by a background
    thread one chunk ahead, into two alternating float32 buffers (fp16 rows go through one staging buffer and
    are widened there), so resident memory is about ``2 x chunk`` whatever the file size.  An in-memory array
    is sliced (float32 rows are yielded without a copy).  Each chunk is checked for NaN/inf when ``check_finite``.
    """

    def __init__(self, path_or_array: ArrayOrPath, dim: Optional[int] = None, dtype=np.float32,
                 n: Optional[int] = None, check_finite: bool = True):
        self.check_finite = bool(check_finite)
        self.array: Optional[np.ndarray] = None
        self.path: Optional[str] = None
        self.offset = 0
        region = memmap_region(path_or_array) if isinstance(path_or_array, np.ndarray) else None
        if region is not None:  # read the memmap's rows from its file instead of paging them in
            a = path_or_array
            (self.path, self.offset), self.dtype = region, _check_dtype(a.dtype)
            self.rows, self.dim = int(a.shape[0]), int(a.shape[1])
        elif isinstance(path_or_array, np.ndarray):
            a = path_or_array
            if a.ndim != 2:
                raise ValueError(f"embeddings must be (N, D), got shape {a.shape}")
            self.array, self.dtype = a, _check_dtype(a.dtype)
            self.rows, self.dim = int(a.shape[0]), int(a.shape[1])
        else:
            self.path, self.dtype = os.fspath(path_or_array), _check_dtype(dtype)
            if dim is None:
                raise ValueError("the row width (dim) of an embedding file must be given")
            self.dim = int(dim)
            self.rows = self._file_rows(n)
        if dim is not None and int(dim) != self.dim:
            raise ValueError(f"embeddings have {self.dim} columns, queries {dim}")
        if n is not None and int(n) != self.rows:
            raise data_error(self.where, None, f"holds {self.rows} rows, expected {n}")
        self.what = f"embeddings {self.where}"

    @property
    def where(self) -> str:
        return self.path if self.path is not None else "(array)"

    def _file_rows(self, n: Optional[int]) -> int:
        if not os.path.exists(self.path):
            raise data_error(self.path, None, "embedding file not found")
        size = os.path.getsize(self.path)
        row = self.dim * self.dtype.itemsize
        if size % row:
            raise data_error(self.path, None, f"{size} bytes is not a whole number of {self.dtype} rows of dim "
                             f"{self.dim} (truncated, or written with another dtype or embedding size)")
        rows = size // row
        if n is not None and rows != int(n):
            raise data_error(self.path, None, f"holds {rows} {self.dtype} rows of dim {self.dim}, expected {n} "
                             "(truncated, or written with another dtype or embedding size)")
        return rows

    def chunks(self, chunk_rows: int) -> Iterator[Tuple[int, np.ndarray]]:
        """``(first_row, rows (C, D) float32)``; a yielded chunk is valid until the next one is asked for."""
        chunk_rows = max(1, min(int(chunk_rows), max(1, self.rows)))
        if self.array is not None:
            yield from self._array_chunks(chunk_rows)
        else:
            yield from self._file_chunks(chunk_rows)

    def _checked(self, first_row: int, chunk: np.ndarray) -> np.ndarray:
        if self.check_finite and not np.isfinite(chunk).all():
            bad = first_row + int(np.argmin(np.isfinite(chunk).all(axis=1)))
            raise NonFiniteError(f"{self.what}: row {bad} holds NaN or infinite values")
        return chunk

    def _array_chunks(self, chunk_rows: int) -> Iterator[Tuple[int, np.ndarray]]:
        a = self.array
        buf = None if a.dtype == np.float32 else np.empty((chunk_rows, self.dim), np.float32)
        for start in range(0, self.rows, chunk_rows):
            part = a[start:start + chunk_rows]
            if buf is None:
                chunk = np.ascontiguousarray(part)  # (C, D) a view when already contiguous
            else:
                chunk = buf[:len(part)]  # (C, D)
                np.copyto(chunk, part)
            yield start, self._checked(start, chunk)

    def _file_chunks(self, chunk_rows: int) -> Iterator[Tuple[int, np.ndarray]]:
        bufs = [np.empty((chunk_rows, self.dim), np.float32) for _ in range(2)]  # (C, D) each
        staging = None if self.dtype == np.float32 else np.empty((chunk_rows, self.dim), self.dtype)
        row_bytes = self.dim * self.dtype.itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

            def read(slot: int, start: int) -> np.ndarray:
                rows = min(chunk_rows, self.rows - start)
                out = bufs[slot][:rows]  # (C, D) float32
                target = out if staging is None else staging[:rows]
                _pread_into(fd, memoryview(target).cast("B"), self.offset + start * row_bytes, self.path)
                if staging is not None:
                    np.copyto(out, target)  # fp16 -> fp32, exact
                return self._checked(start, out)

            starts = list(range(0, self.rows, chunk_rows))
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="drhard-read") as pool:
                pending = pool.submit(read, 0, starts[0]) if starts else None
                for j, start in enumerate(starts):
                    chunk = pending.result()
                    # the other buffer is free: the caller finished with it when it asked for this chunk
                    pending = pool.submit(read, (j + 1) % 2, starts[j + 1]) if j + 1 < len(starts) else None
                    try:
                        yield start, chunk
                    except GeneratorExit:
                        if pending is not None:
                            pending.cancel()
                        raise
        finally:
            os.close(fd)


def memmap_region(a: np.ndarray) -> Optional[Tuple[str, int]]:
    """``(file, byte offset of row 0)`` when ``a`` is a C-contiguous 2-D ``np.memmap`` or a contiguous view of
    one (a row slice, a reshape), so its rows can be read from the file; None otherwise.

    A view's ``offset`` attribute is its parent's, so the position comes from addresses: numpy maps the file
    from ``offset`` rounded down to ``mmap.ALLOCATIONGRANULARITY``.
    """
    import mmap
    if not isinstance(a, np.memmap) or a.ndim != 2 or not a.flags.c_contiguous or a.size == 0:
        return None
    root = a
    while isinstance(root, np.ndarray) and not isinstance(root.base, mmap.mmap):
        root = root.base
    if not isinstance(root, np.memmap) or getattr(root, "filename", None) is None:
        return None
    mapping = root.base
    mapped_from = int(root.offset) - int(root.offset) % mmap.ALLOCATIONGRANULARITY
    first_byte = np.frombuffer(mapping, dtype=np.uint8).ctypes.data  # address of the mapping's first byte
    return str(root.filename), mapped_from + (a.ctypes.data - first_byte)


# --------------------------------------------------------------------------- streamed search
def _shared_tensor(chunk: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``chunk``'s memory; read-only arrays (a read-only memmap's rows, frozen queries) are
    only ever read here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(chunk)


def _query_tensor(queries, dim: Optional[int] = None) -> torch.Tensor:
    q = queries if isinstance(queries, torch.Tensor) else _shared_tensor(np.asarray(queries))
    if q.ndim != 2 or (dim is not None and q.shape[1] != dim):
        want = f"(Q, {dim})" if dim is not None else "(Q, D)"
        raise ValueError(f"queries must be {want}, got shape {tuple(q.shape)}")
    return q


def _check_queries_finite(q: torch.Tensor, step: int = 65536) -> None:
    for start in range(0, q.shape[0], step):  # in row blocks: no (Q, D) temporary for a large query set
        ok = torch.isfinite(q[start:start + step]).all(dim=1)  # (b,)
        if not bool(ok.all()):
            bad = start + int(torch.argmin(ok.to(torch.uint8)))
            raise NonFiniteError(f"queries: row {bad} holds NaN or infinite values")


def search_memmap(path_or_array: ArrayOrPath, queries, k: int, chunk_rows: Optional[int] = None,
                  dtype=np.float32, query_batch: int = DEFAULT_QUERY_BATCH, progress: bool = True,
                  n: Optional[int] = None, check_finite: bool = True,
                  scorer: str = "auto") -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries`` (Q, D) against the rows of an embedding file or array.

    ``path_or_array``: a raw row-major file of ``dtype`` (float32 or float16) rows of width D (the queries'
    width; ``n`` rows when given, checked against the file size), a ``np.memmap`` of one or a contiguous view
    of one (read from its file region, in its own dtype), or an in-memory array.  Files are streamed
    ``chunk_rows`` rows at a time (default: ``default_chunk_rows``, from MemAvailable and the query batch) and
    read once whatever Q is; each chunk is scored against ``query_batch`` queries at a time in float32.  Peak
    memory beyond the returned arrays: ``chunk_rows * chunk_row_bytes(D, dtype, query_batch, scorer)`` plus
    small per-chunk top-k lists.

    ``scorer``: ``"faiss"`` (faiss' exact kernel per chunk; faster than a torch matrix product on CPUs
    measured here, and needs no score matrix), ``"torch"``, or ``"auto"``: faiss when it is installed.

    Returns ``(scores (Q, k) float32, ids (Q, k) int64)`` like ``faiss.IndexFlatIP.search``: descending
    scores, id -1 (score -FLT_MAX) after the last row when there are fewer than ``k`` rows; equal scores rank
    the lower row id first.  NaN/inf in a query or an embedding row is a ``NonFiniteError`` naming the row.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = _query_tensor(queries)
    q = q.to(dtype=torch.float32).contiguous()  # (Q, D)
    nq, dim = q.shape
    if check_finite:
        _check_queries_finite(q)
    src = RowSource(path_or_array, dim=dim, dtype=dtype, n=n, check_finite=check_finite)
    if scorer == "auto":
        scorer = "faiss" if faiss_knn() is not None else "torch"
    elif scorer == "faiss" and faiss_knn() is None:
        raise ValueError("scorer 'faiss' needs faiss (faiss-cpu or faiss-gpu with faiss.knn); use 'torch'")
    elif scorer not in SCORERS:
        raise ValueError(f"scorer must be 'auto' or one of {SCORERS}, got {scorer!r}")
    qb = max(1, min(int(query_batch), max(1, nq)))
    chunk_rows = int(chunk_rows) if chunk_rows else default_chunk_rows(dim, src.dtype, qb, scorer=scorer)
    chunk_rows = max(1, min(chunk_rows, max(1, src.rows)))
    logger.info("exact search: %d queries x %d rows (dim %d, %s, %s), k %d, chunks of %d rows, query batch %d, "
                "%s scorer", nq, src.rows, dim, src.dtype, src.where, k, chunk_rows, qb, scorer)
    with tqdm(total=src.rows, desc="search", unit="row", unit_scale=True, disable=not progress or not nq) as bar:
        chunks = ((start, _shared_tensor(chunk)) for start, chunk in src.chunks(chunk_rows))  # (C, D) no copy
        s, i = score_chunks(q, chunks, k, qb, chunk_rows, on_chunk=bar.update, scorer=scorer)  # (Q, k)
    return s.numpy(), i.numpy()


def score_chunks(q: torch.Tensor, chunks: Iterable[Tuple[int, torch.Tensor]], k: int, query_batch: int,
                 chunk_rows: int, on_chunk: Optional[Callable[[int], object]] = None, scorer: str = "torch"
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The exact top-``k`` of queries ``q`` (Q, D) float32 over ``(first_row, rows (C <= chunk_rows, D) float32)``
    chunks on ``q``'s device, each chunk visited once and scored against ``query_batch`` queries at a time;
    one ``RunningTopK`` per query batch.  The one scoring loop of ``search_memmap`` and ``TorchFlatIndex``.

    ``scorer="torch"``: a matrix product into one reused (query_batch, chunk_rows) score buffer, then
    ``chunk_topk``.  ``scorer="faiss"`` (CPU tensors only): ``faiss_chunk_topk``, no score buffer.
    """
    nq = q.shape[0]
    blocks = [(q0, RunningTopK(min(query_batch, nq - q0), k, q.device)) for q0 in range(0, nq, query_batch)]
    if scorer == "torch":
        score_buf = torch.empty(min(query_batch, nq) * chunk_rows, dtype=torch.float32, device=q.device)  # (b x C)
    elif scorer == "faiss":
        if q.device.type != "cpu":
            raise ValueError("the faiss scorer needs CPU tensors")
        q_np = q.numpy()  # (Q, D) shares memory
    else:
        raise ValueError(f"scorer must be one of {SCORERS}, got {scorer!r}")
    for start, x in (chunks if nq else ()):
        c = x.shape[0]
        for q0, block in blocks:
            b = block.scores.shape[0]
            if scorer == "faiss":
                block.add_candidates(*faiss_chunk_topk(q_np[q0:q0 + b], x.numpy(), k), start)  # (b, kc)
            else:
                s = score_buf[:b * c].view(b, c)  # (b, C)
                torch.mm(q[q0:q0 + b], x.t(), out=s)  # (b, D) @ (D, C) -> (b, C)
                block.add(s, start)
        if on_chunk is not None:
            on_chunk(c)
    scores = torch.empty((nq, k), dtype=torch.float32, device=q.device)  # (Q, k)
    ids = torch.empty((nq, k), dtype=torch.int64, device=q.device)  # (Q, k)
    for j, (q0, block) in enumerate(blocks):
        s, i = block.result()  # (b, k)
        scores[q0:q0 + len(s)], ids[q0:q0 + len(s)] = s, i
        blocks[j] = (q0, None)  # let the block's lists go: peak stays near one copy of the results
    return scores, ids


# --------------------------------------------------------------------------- flat index on a torch device
def device_chunk_rows(device: torch.device, dim: int, storage_dtype: torch.dtype, query_batch: int) -> int:
    """Rows scored at once by ``TorchFlatIndex.search``: the (query_batch, C) fp32 scores and mask, plus the
    (C, D) fp32 copy of fp16 rows, within ``CHUNK_MEMORY_FRACTION`` of the device's free memory, at most
    ``CUDA_MAX_CHUNK_BYTES`` on a GPU and ``MAX_CHUNK_BYTES`` on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        available: Optional[int] = int(free)
        cap = CUDA_MAX_CHUNK_BYTES
    else:
        available = mem_available_bytes()
        cap = MAX_CHUNK_BYTES
    budget = FALLBACK_CHUNK_BYTES if available is None else int(available * CHUNK_MEMORY_FRACTION)
    budget = min(budget, cap)
    per_row = int(query_batch) * (4 + 1) + (dim * 4 if storage_dtype != torch.float32 else 0)
    return max(MIN_CHUNK_ROWS, budget // per_row)


class TorchFlatIndex:
    """An exact inner-product index whose rows live in one torch tensor on ``device``.

    ``embeddings``: a tensor (N, D), an array or ``np.memmap`` (N, D), or the path of a raw embedding file
    (then ``dim`` and ``file_dtype`` describe it).  Arrays and files are copied in chunks into the
    preallocated tensor (a file is read with ``pread``, never mapped), so the host holds at most one chunk
    beside the index.  ``dtype`` is the storage: ``torch.float32`` or ``torch.float16`` (half the memory;
    scores are still computed in fp32 from the stored fp16 values).

    ``search(q, k)`` takes queries (Q, D) as a tensor (on any device; one already on ``device`` is not
    copied) or an array, and returns ``(scores (Q, k) float32, ids (Q, k) int64)`` on ``device`` with the
    ordering, ties and fillers of ``search_memmap``.  Nothing but one flag per chunk and query batch (does a
    tie straddle the cut?) is read back to the host.  Temporary device memory: ``chunk_rows`` (default
    ``device_chunk_rows``) times ``query_batch`` fp32 scores, plus a (chunk_rows, D) fp32 copy for fp16 storage.
    """

    def __init__(self, embeddings, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                 chunk_rows: Optional[int] = None, dim: Optional[int] = None, file_dtype=np.float32,
                 n: Optional[int] = None, check_finite: bool = True):
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"storage dtype must be torch.float32 or torch.float16, got {dtype}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.chunk_rows = int(chunk_rows) if chunk_rows else None
        self.check_finite = bool(check_finite)
        if isinstance(embeddings, torch.Tensor):
            if embeddings.ndim != 2:
                raise ValueError(f"embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
            self.x = embeddings.detach().to(device=self.device, dtype=dtype).contiguous()  # (N, D)
            if check_finite:
                self._check_rows_finite()
        else:
            src = RowSource(embeddings, dim=dim, dtype=file_dtype, n=n, check_finite=check_finite)
            self.x = torch.empty((src.rows, src.dim), dtype=dtype, device=self.device)  # (N, D)
            load_rows = self.chunk_rows or default_chunk_rows(src.dim, src.dtype, 1)
            for start, chunk in src.chunks(load_rows):
                self.x[start:start + len(chunk)].copy_(_shared_tensor(chunk))  # (C, D) fp32 -> storage
        logger.info("torch flat index: %d x %d, %s on %s", self.ntotal, self.d, dtype, self.device)

    @property
    def ntotal(self) -> int:
        return int(self.x.shape[0])

    @property
    def d(self) -> int:
        return int(self.x.shape[1])

    def _check_rows_finite(self) -> None:
        step = self.chunk_rows or 65536
        for start in range(0, self.ntotal, step):
            ok = torch.isfinite(self.x[start:start + step]).all(dim=1)  # (C,)
            if not bool(ok.all()):
                bad = start + int(torch.argmin(ok.to(torch.uint8)))
                raise NonFiniteError(f"embeddings: row {bad} holds NaN or infinite values")

    def search(self, q, k: int, query_batch: int = DEFAULT_QUERY_BATCH) -> Tuple[torch.Tensor, torch.Tensor]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = _query_tensor(q, self.d).to(device=self.device, dtype=torch.float32)  # (Q, D), no copy when in place
        if self.check_finite:
            _check_queries_finite(q)
        nq = q.shape[0]
        qb = max(1, min(int(query_batch), max(1, nq)))
        chunk_rows = self.chunk_rows or device_chunk_rows(self.device, self.d, self.dtype, qb)
        chunk_rows = max(1, min(chunk_rows, max(1, self.ntotal)))
        return score_chunks(q, self._chunks(chunk_rows), k, qb, chunk_rows)  # (Q, k) on the device

    def _chunks(self, chunk_rows: int) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(first_row, rows (C, D) float32)``: views of fp32 storage; fp16 rows widened into one reused buffer."""
        wide = (None if self.dtype == torch.float32
                else torch.empty((chunk_rows, self.d), dtype=torch.float32, device=self.device))  # (C, D)
        for start in range(0, self.ntotal, chunk_rows):
            x = self.x[start:start + chunk_rows]  # (C, D) storage dtype
            yield start, (x if wide is None else wide[:x.shape[0]].copy_(x))  # fp16 -> fp32 is exact
