"""Exact inner-product search with faiss: CPU by default, GPU and multi-GPU sharding when asked.

DRhard scores a query against a passage by the inner product of their
embeddings and retrieves exactly (``IndexFlatIP``).  The MS MARCO passage index
is 8.8 M x 768 x 4 B = 27 GB, more than most single GPUs hold, so on GPUs the
index is sharded: each GPU holds a slice of the rows and faiss merges the
per-shard top-k lists.

Nothing here keeps GPU state at module level: the GPU resources live as long as
the index that ``build_index`` returns (faiss keeps them referenced).  When the
requested GPUs cannot hold the index, or faiss was built without GPU support,
we say so in the log and search on the CPU instead of failing mid-run.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from .device import usable_cpus
from .finite import checked_chunks

logger = logging.getLogger(__name__)

# Head room per GPU on top of the index itself: faiss' temporary search memory
# (StandardGpuResources reserves up to ~1.5 GiB) plus the CUDA context.
GPU_MARGIN_BYTES = 2 * 1024 ** 3
ADD_CHUNK_ROWS = 65536


def faiss_module():
    import faiss
    return faiss


def faiss_has_gpu() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    faiss = faiss_module()
    return hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def visible_faiss_gpus() -> List[int]:
    """Every GPU faiss can use (``prepare_hardneg.py`` uses them all unless ``--not_faiss_cuda``)."""
    return list(range(faiss_module().get_num_gpus())) if faiss_has_gpu() else []


def index_bytes(n: int, dim: int, float16: bool = False) -> int:
    """Memory of a flat index: one stored vector per row."""
    return int(n) * int(dim) * (2 if float16 else 4)


def gpu_free_bytes(gpu: int) -> Optional[int]:
    """Free memory of one GPU as CUDA reports it, or None when it cannot be asked."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(gpu)
        return int(free)
    except Exception as e:  # noqa: BLE001 - any failure only means "unknown"
        logger.debug("cannot read free memory of GPU %s: %s", gpu, e)
        return None


def release_torch_cache() -> None:
    """Give the memory torch's allocator keeps cached (e.g. after encoding) back, so faiss can use it."""
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception as e:  # noqa: BLE001
        logger.debug("cannot empty the torch CUDA cache: %s", e)


def gpus_fit(gpus: Sequence[int], nbytes: int) -> Tuple[bool, str]:
    """Whether ``gpus`` hold an index of ``nbytes`` sharded evenly, and why not."""
    release_torch_cache()
    per_gpu = -(-nbytes // len(gpus)) + GPU_MARGIN_BYTES
    short = []
    for g in gpus:
        free = gpu_free_bytes(g)
        if free is None:
            logger.warning("cannot read the free memory of GPU %d; assuming the index shard fits", g)
            continue
        if free < per_gpu:
            short.append(f"GPU {g} has {free / 2 ** 30:.1f} GiB free")
    if short:
        return False, (f"the index needs {nbytes / 2 ** 30:.1f} GiB ({per_gpu / 2 ** 30:.1f} GiB per GPU over "
                       f"{len(gpus)} GPU(s) with search head room) but " + ", ".join(short))
    return True, ""


def build_index(embeddings: np.ndarray, gpus: Optional[Sequence[int]] = None, omp_threads: Optional[int] = None,
                use_float16: bool = False, check_finite: Optional[str] = None):
    """An exact inner-product index over ``embeddings`` (N, D).

    The rows are added in chunks (a memmap is read once, one chunk in RAM besides the index);
    with ``check_finite`` (a name for the message) each chunk is checked for NaN/inf as it is
    read (``drhard.finite.checked_chunks``): faiss would silently return id -1 for such a row.

    ``gpus`` None or empty: ``faiss.IndexFlatIP`` on the CPU, searched with
    ``omp_threads`` threads (default: every core this process may use).  One
    GPU: the index is cloned onto it; several: it is sharded over them
    (``IndexShards``, each GPU holds N/len(gpus) rows).  ``use_float16`` stores
    the vectors in half precision on GPU (half the memory, approximate scores).
    Falls back to the CPU, with a log message, when faiss has no GPU support or
    the GPUs lack the memory.
    """
    faiss = faiss_module()
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {embeddings.shape}")
    n, dim = embeddings.shape
    gpus = list(gpus or [])
    if gpus:
        if not faiss_has_gpu():
            logger.warning("GPUs %s asked for faiss, but this faiss build has no GPU support or sees no GPU: "
                           "searching on the CPU", gpus)
            gpus = []
        else:
            ok, why = gpus_fit(gpus, index_bytes(n, dim, use_float16))
            if not ok:
                logger.warning("faiss index does not fit on GPU(s) %s: %s. Searching on the CPU instead "
                               "(add GPUs to shard over, or use --not_faiss_cuda / no --faiss_gpus).", gpus, why)
                gpus = []
    cpu_index = faiss.IndexFlatIP(dim)
    if check_finite:
        chunks = checked_chunks(embeddings, check_finite, ADD_CHUNK_ROWS)
    else:
        chunks = ((start, np.ascontiguousarray(embeddings[start:start + ADD_CHUNK_ROWS], dtype=np.float32))
                  for start in range(0, n, ADD_CHUNK_ROWS))
    for _, chunk in chunks:  # (rows, D)
        cpu_index.add(chunk)
    if not gpus:
        faiss.omp_set_num_threads(int(omp_threads or usable_cpus()))
        logger.info("faiss IndexFlatIP on CPU: %d x %d, %d threads", n, dim, faiss.omp_get_max_threads())
        return cpu_index
    # Clone the filled CPU index: with shard=True faiss copies rows [i*N/G, (i+1)*N/G) to GPU i and the
    # IndexShards maps shard-local ids back to global rows (successive ids).
    co = faiss.GpuMultipleClonerOptions()
    co.shard = len(gpus) > 1
    co.useFloat16 = bool(use_float16)
    gpu_index = faiss.index_cpu_to_gpus_list(cpu_index, co=co, gpus=gpus)
    del cpu_index
    logger.info("faiss IndexFlatIP on GPU(s) %s (%s): %d x %d", gpus, "sharded" if co.shard else "single", n, dim)
    return gpu_index


def search(index, queries: np.ndarray, k: int, batch_size: int = 4096,
           progress: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products of every query: ``(scores (Q, k) float32, ids (Q, k) int64)``.

    Queries go to faiss in batches of ``batch_size`` (large batches keep the
    search a matrix product; the original searched 32 at a time).  Rows with
    fewer than ``k`` results are filled with id -1, as faiss does.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)  # (Q, D)
    if q.ndim != 2 or q.shape[1] != index.d:
        raise ValueError(f"queries must be (Q, {index.d}), got shape {q.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    nq = q.shape[0]
    scores = np.empty((nq, k), dtype=np.float32)
    ids = np.empty((nq, k), dtype=np.int64)
    batch_size = max(1, int(batch_size))
    with tqdm(total=nq, desc="search", unit="q", disable=not progress) as bar:
        for start in range(0, nq, batch_size):
            end = min(nq, start + batch_size)
            scores[start:end], ids[start:end] = index.search(q[start:end], k)
            bar.update(end - start)
    return scores, ids
