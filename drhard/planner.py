"""Resource planner: disk, RAM, GPU memory and wall time of every pipeline stage, and what to do when one
does not fit the machine.

``python -m drhard.planner --passages 8841823 --gpus 4 --gpu_memory 80GB --ram 256GB --gpu_type H100``
prints one table (stage, disk written, peak RAM, peak GPU memory per GPU, time, fits?) and a total;
``plan_stage(name, **facts)`` answers the same for one stage, for a script to call before heavy work.

Everything is a formula over three records: the ``Workload`` (collection size, lengths, dims, dtype,
batch sizes, steps), the ``Machine`` (GPUs and their memory, RAM, cores, free disk) and the ``Rates``
(throughput: measured by ``calibrate`` on the machine it runs on, or the defaults below, each labelled
with where it comes from).  The formulas, with the names used in the code:

Transformer compute (``ModelShape``; h hidden, L layers, ff intermediate, a heads, T tokens in the
sequence).  The matrix products of one layer hold ``4 h^2`` (Q, K, V, output projections) ``+ 2 h ff``
(feed-forward) weights, each used once per token in a multiply-add (2 FLOP), and attention adds
``Q K^T`` and ``A V`` (``2 T h`` FLOP each per token)::

    forward FLOP per token = L * (2 * (4 h^2 + 2 h ff) + 4 T h)        (~2 x non-embedding params)
    forward FLOP per sequence = T * that + 2 h d_out                     (the Linear head, first token)
    backward = 2 x forward;  gradient checkpointing recomputes the forward once more:
    training step = 3 x forward (4 x with checkpointing)

roberta-base (h 768, L 12, ff 3072): 1.71e8 FLOP per token at T = 24, 1.74e8 at T = 120; the paper's
STAR step (256 queries x 24 tokens + 512 documents x 120 tokens) is 1.18e13 FLOP forward, 3.5e13
forward + backward.  Time = FLOP / rate + calls x per-call overhead (both from calibration).

Training memory (per device).  Weights fp32 ``4P``, gradients ``4P``, optimizer state ``8P`` (AdamW and
the paper's LAMB keep two moments), under fp16 autocast a cached fp16 copy ``2P``.  Activations per
token per layer, measured with torch's saved-tensor hooks on the Hugging Face RoBERTa layer (CPU, math
attention): ``50 h + 12 a T`` bytes under 16-bit autocast, ``72 h + 12 a T`` in fp32 (Korthikanti et al.
2022 count ``34 h + 5 a T`` with every activation 16-bit; HF keeps the residual stream, LayerNorms and
the softmax in fp32 under autocast; fused GPU attention kernels store less than the ``a T`` term, so
the figure is an upper bound there).  Without checkpointing every layer keeps them; with it each layer
keeps its fp32 input (``4 h``) and one layer's activations exist at a time (x2: the recomputed ones and
their gradients).  Plus ``CUDA_CONTEXT_BYTES``.

Search.  An exact flat index holds ``n x d x bytes`` (4, or 2 for fp16 storage); on GPUs each of G
shards holds ``n/G`` rows plus ``GPU_MARGIN_BYTES`` (faiss' temporary memory and the CUDA context, the
value ``drhard.index`` checks against), and ``drhard.index.build_index`` first fills a CPU index, so
the host needs the whole index too.  Scoring Q queries is ``2 Q n d`` FLOP; a small query batch (ADORE:
32 per step) is bound by memory bandwidth: ``max(FLOP / rate, n d bytes / bandwidth)``.  The streamed
exact search (``drhard.exact_search.search_memmap``) holds two chunk buffers (``default_chunk_rows``:
a quarter of the available memory, at most 256 MB) whatever n is, and reads the file once per query
set: ``max(FLOP / rate, file bytes / disk read speed)``.  Compressed faiss factory indexes are rows
with their bytes per vector (``factory_bytes_per_vector``).

Disk.  preprocess: per passage ``4 x max_seq_length`` (int32 row) ``+ 4`` (length) ``+ 16`` (id maps),
per kept query ``4 x max_query_length + 4 + 16 + 16`` (its qrels line).  Embeddings ``n x d x 4``.
``hard.json``: one ``"<qoffset>": [...]`` entry per training query, ``digits + 2`` bytes per negative.

Throughput figures that do not come from a measurement on the planned machine are labelled in the
output: vendor datasheet peaks times an assumed utilisation for GPUs (``GPU_PROFILES``,
``ENCODE_UTILISATION``...), figures measured on a 2-core development machine for CPU cores.
``calibrate`` replaces them.  Flags the advice names that the scripts do not have yet are listed in
``PENDING_FLAGS`` and marked "(to come)".
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .device import usable_cpus
from .exact_search import MAX_CHUNK_BYTES
from .index import GPU_MARGIN_BYTES

logger = logging.getLogger(__name__)

KB, MB, GB, TB = 10 ** 3, 10 ** 6, 10 ** 9, 10 ** 12
KiB, MiB, GiB, TiB = 2 ** 10, 2 ** 20, 2 ** 30, 2 ** 40

# --------------------------------------------------------------------------- flags named by the advice
# The spelling of every flag the advice names, in one place.  Those in PENDING_FLAGS are not implemented yet
# (the integration of the streamed search, fp16 embeddings, factory indexes and the global loss scope is to
# come); rename them here when they land.
FLAGS = {
    "exact_search": "--exact_search stream",
    "embedding_dtype": "--embedding_dtype float16",
    "index_factory": "--index_factory",
    "faiss_fp16": "--faiss_fp16",
    "faiss_gpus": "--faiss_gpus",
    "faiss_gpu_index": "--faiss_gpu_index",
    "not_faiss_cuda": "--not_faiss_cuda",
    "gradient_checkpointing": "--gradient_checkpointing",
    "per_device_train_batch_size": "--per_device_train_batch_size",
    "gradient_accumulation_steps": "--gradient_accumulation_steps",
    "per_gpu_batch_size": "--per_gpu_batch_size",
    "fp16": "--fp16",
    "loss_scope": "--loss_scope global",
    "torchrun": "torchrun --nproc_per_node",
    "eval_batch_size": "--eval_batch_size",
}
PENDING_FLAGS = frozenset({"exact_search", "embedding_dtype", "index_factory", "faiss_fp16", "loss_scope"})


def flag(name: str, value: object = None) -> str:
    """The spelling of flag ``name`` (with ``value``), marked "(to come)" while it is not implemented."""
    text = FLAGS[name] + ("" if value is None else f" {value}")
    return text + (" (to come)" if name in PENDING_FLAGS else "")


# --------------------------------------------------------------------------- constants of the formulas
CUDA_CONTEXT_BYTES = 512 * MiB  # a torch process's CUDA context (assumed; 300-600 MB with lazy loading)
GPU_USABLE_FRACTION = 0.95  # allocator fragmentation
RAM_USABLE_FRACTION = 0.9  # the OS, the page cache of the memmaps and other processes need the rest
PROCESS_BASE_RAM = 1 * GB  # python + torch + transformers imported (measured ~0.8 GB here)
STREAM_CHUNK_BYTES = MAX_CHUNK_BYTES  # both chunk buffers of a streamed search (drhard.exact_search)
DICT_ENTRY_BYTES = 106  # a Python dict int -> int, per entry (measured, CPython 3.x): pid2offset
JSON_LIST_ENTRY_BYTES = 36  # hard.json loaded: a 28-byte int object + an 8-byte list slot per negative
TOKENIZER_WORKER_RAM = 150 * MB  # one preprocess worker: the BPE tables and its block buffers
# preprocess beyond the tokenizer: CPU seconds per passage (parsing, pool transfers, padded rows; measured here:
# the whole preprocess.py ran 100k 75-token passages at 55k/s on 2 cores = 36 us of CPU per passage, 17 of them
# in the tokenizer), and the part the main process does alone (id map, writer; assumed) that bounds many cores.
PREPROCESS_CPU_PER_PASSAGE = 19e-6
PREPROCESS_SERIAL_PER_PASSAGE = 5e-6
LENGTH_SORTED_PADDING = 1.04  # encode.py: tokens computed / real tokens with length-sorted batches
DATA_PARALLEL_EFFICIENCY = 0.85  # DataParallel over G > 1 GPUs (scatter/gather through GPU 0; assumed)
OPTIMIZER_BYTES_PER_PARAM_STEP = 40  # memory traffic of one AdamW/LAMB update per parameter (fp32)
SLOW_SECONDS = 7 * 86400  # a stage that takes longer is reported "slow"
PER_ROW_RANK_BYTES = 20  # "qoffset\tpoffset\trank\n"

# GPU utilisation assumed for eager PyTorch (the published anchor: TensorRT BERT-base on an A100-40GB,
# fp16, batch 128, 128 tokens: ~7.9k sequences/s = 177 TFLOP/s = 57 % of the 312 TFLOP/s peak; eager
# PyTorch with short sequences runs well below an engine).  ``calibrate`` on the GPU replaces them.
ENCODE_UTILISATION = 0.35  # encoder forward, fp16 autocast, of the fp16 tensor peak
TRAIN_UTILISATION = 0.30  # forward + backward, fp16 autocast, of the fp16 tensor peak
FP32_UTILISATION = 0.60  # fp32 (no tensor cores: torch's default matmul precision) of the fp32 peak
SEARCH_UTILISATION = 0.70  # faiss GPU flat search (cuBLAS SGEMM + k-selection) of the fp32 peak
GPU_CALL_OVERHEAD = 0.004  # seconds per encoder forward call (kernel launches; assumed)
GPU_STEP_OVERHEAD = 0.02  # seconds per training step beyond the matrix products (assumed)
GPU_SEARCH_CALL = 0.002  # seconds per faiss GPU search call (k-selection, copies; assumed)


@dataclass(frozen=True)
class GpuProfile:
    """Datasheet numbers of a GPU: memory, dense fp16 tensor and fp32 peaks (FLOP/s), memory bandwidth (B/s)."""
    name: str
    memory: int
    fp16_flops: float
    fp32_flops: float
    bandwidth: float


GPU_PROFILES = {p.name: p for p in (
    GpuProfile("V100", 32 * GB, 125e12, 15.7e12, 900e9),
    GpuProfile("T4", 16 * GB, 65e12, 8.1e12, 320e9),
    GpuProfile("A10", 24 * GB, 125e12, 31.2e12, 600e9),
    GpuProfile("L4", 24 * GB, 121e12, 30.3e12, 300e9),
    GpuProfile("RTX3090", 24 * GB, 71e12, 35.6e12, 936e9),
    GpuProfile("RTX4090", 24 * GB, 165e12, 82.6e12, 1008e9),
    GpuProfile("A100-40GB", 40 * GB, 312e12, 19.5e12, 1555e9),
    GpuProfile("A100", 80 * GB, 312e12, 19.5e12, 2039e9),
    GpuProfile("L40S", 48 * GB, 362e12, 91.6e12, 864e9),
    GpuProfile("H100-PCIe", 80 * GB, 756e12, 51e12, 2000e9),
    GpuProfile("H100", 80 * GB, 989e12, 67e12, 3350e9),
    GpuProfile("H200", 141 * GB, 989e12, 67e12, 4800e9),
)}
DEFAULT_GPU_TYPE = "A100"
CORES_PER_GPU = 8  # CPU cores assumed per GPU when a GPU server is planned without --cores

# CPU and I/O defaults when nothing was measured.  Per-core figures measured on a 2-core development machine
# (torch 2.x: roberta-base forward ~200 GFLOP/s and forward+backward ~170 GFLOP/s on 2 threads, faiss flat
# search ~200 GFLOP/s with 512 queries per call, the roberta BPE of preprocess 4.5M tokens/s in one process);
# I/O figures are assumed for an NVMe SSD.
CPU_DEFAULTS = {
    "encode_flops_per_core": 120e9,
    "encode_overhead": 0.003,
    "train_flops_per_core": 70e9,
    "train_overhead": 0.01,
    "search_flops_per_core": 90e9,
    "search_small_flops_per_core": 45e9,
    "stream_flops_per_core": 90e9,
    "tokenize_tokens_per_s": 4.5e6,
    "mem_bandwidth_per_core": 8e9,
}
IO_DEFAULTS = {
    "disk_write": 1.0e9,
    "disk_read": 1.5e9,
    "disk_iops": 100e3,
    "json_entries_per_s": 8e6,
    "pcie": 20e9,
    "interconnect": 100e9,
}
IO_DEFAULT_SOURCES = {
    "disk_write": "default (assumed NVMe SSD)",
    "disk_read": "default (assumed NVMe SSD)",
    "disk_iops": "default (assumed NVMe SSD, 4 KB random reads)",
    "json_entries_per_s": "default (measured on the 2-core dev machine, CPython json)",
    "pcie": "default (assumed PCIe 4.0 x16, host to GPU)",
    "interconnect": "default (assumed NVLink-class GPU-to-GPU all-reduce)",
}
MAX_HOST_BANDWIDTH = 200e9


# --------------------------------------------------------------------------- sizes
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_UNITS = {"b": 1, "kb": KB, "mb": MB, "gb": GB, "tb": TB, "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
          "k": KB, "m": MB, "g": GB, "t": TB}


def parse_size(text: str) -> int:
    """Bytes of ``80GB`` (10^9), ``24GiB`` (2^30), ``512MB``, ``1.5TB``, ``100B``; a unit is required."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 80GB, 24GiB, 512MB)")
    number, unit = float(m.group(1)), m.group(2).lower()
    if not unit:
        raise ValueError(f"{text!r}: give a unit (B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)")
    if unit not in _UNITS:
        raise ValueError(f"{text!r}: unknown unit {m.group(2)!r} (B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)")
    return int(round(number * _UNITS[unit]))


def size_arg(text: str) -> int:
    """argparse ``type=`` for sizes: a bad size is a usage error (exit 2)."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def format_size(nbytes: Optional[float]) -> str:
    """``27.2 GB`` (decimal units, as disk and GPU vendors count)."""
    if nbytes is None:
        return "-"
    n = float(nbytes)
    for unit, scale in (("TB", TB), ("GB", GB), ("MB", MB), ("KB", KB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


# --------------------------------------------------------------------------- model shapes and FLOPs
@dataclass(frozen=True)
class ModelShape:
    """The layer shapes of a RobertaDot encoder (what FLOPs and memory depend on)."""
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    intermediate: int = 3072
    vocab: int = 50265
    max_positions: int = 514
    out_dim: int = 768  # the Linear + LayerNorm head's width

    def layer_params(self) -> int:
        """Weights and biases of one encoder layer (attention, feed-forward, two LayerNorms)."""
        h, ff = self.hidden, self.intermediate
        return 4 * h * h + 4 * h + 2 * h * ff + ff + h + 2 * 2 * h

    def embedding_params(self) -> int:
        """Word, position and token-type embeddings plus their LayerNorm."""
        return (self.vocab + self.max_positions + 1) * self.hidden + 2 * self.hidden

    def head_params(self) -> int:
        return self.hidden * self.out_dim + self.out_dim + 2 * self.out_dim

    def params(self) -> int:
        """Every parameter of the RobertaDot (no pooler): embeddings + layers + head."""
        return self.embedding_params() + self.layers * self.layer_params() + self.head_params()

    def flops_per_token(self, context: float) -> float:
        """Forward FLOP per token in a sequence of ``context`` tokens: ``L (2 (4h^2 + 2h ff) + 4 T h)``."""
        h, ff = self.hidden, self.intermediate
        return self.layers * (2.0 * (4 * h * h + 2 * h * ff) + 4.0 * context * h)

    def sequence_flops(self, length: float) -> float:
        """Forward FLOP of one sequence of ``length`` tokens (its tokens plus the head on the first one)."""
        return length * self.flops_per_token(length) + 2.0 * self.hidden * self.out_dim

    def activation_bytes(self, context: float, fp16: bool) -> float:
        """Activation bytes kept for backward per token per layer: ``50h + 12aT`` under fp16 autocast,
        ``72h + 12aT`` in fp32 (module doc)."""
        h, a = self.hidden, self.heads
        return (50 * h if fp16 else 72 * h) + 12 * a * context

    def describe(self) -> str:
        return f"{self.layers}x{self.hidden}"


ROBERTA_BASE = ModelShape()
TINY = ModelShape(layers=2, hidden=32, heads=2, intermediate=128, vocab=1000, max_positions=514, out_dim=32)
MODEL_SHAPES = {"roberta-base": ROBERTA_BASE, "tiny": TINY}


def parse_model_shape(text: str) -> ModelShape:
    """``roberta-base``, ``tiny`` or ``LAYERSxHIDDEN[xINTERMEDIATE]`` (heads = hidden / 64)."""
    if text in MODEL_SHAPES:
        return MODEL_SHAPES[text]
    m = re.match(r"^(\d+)x(\d+)(?:x(\d+))?$", text)
    if not m:
        raise ValueError(f"{text!r}: a model shape is roberta-base, tiny or LAYERSxHIDDEN[xINTERMEDIATE]")
    layers, hidden = int(m.group(1)), int(m.group(2))
    ff = int(m.group(3)) if m.group(3) else 4 * hidden
    return ModelShape(layers=layers, hidden=hidden, heads=max(1, hidden // 64), intermediate=ff, out_dim=hidden)


def length_sorted_batch_lengths(lengths: np.ndarray, max_len: int, batch_size: int) -> List[Tuple[int, int]]:
    """``(rows, padded length)`` of each batch when rows are cut to ``max_len`` and batched by length, longest
    first (what ``drhard.encode.length_sorted_batches`` does): a batch is padded to its longest row."""
    cut = np.sort(np.minimum(np.asarray(lengths, dtype=np.int64), int(max_len)))[::-1]  # (N,) descending
    out = []
    for start in range(0, len(cut), int(batch_size)):
        rows = min(int(batch_size), len(cut) - start)
        out.append((rows, max(1, int(cut[start]))))
    return out


def encode_flops(shape: ModelShape, n: int, mean_tokens: float, max_len: int, batch_size: int,
                 lengths: Optional[np.ndarray] = None) -> Tuple[float, int, float]:
    """``(forward FLOP, forward calls, tokens computed)`` of encoding ``n`` rows.

    With ``lengths`` (the real per-row token counts) the length-sorted batches are formed exactly; without,
    every row counts ``mean_tokens`` (cut at ``max_len``) times ``LENGTH_SORTED_PADDING``."""
    if lengths is not None:
        flops, tokens, calls = 0.0, 0.0, 0
        for rows, width in length_sorted_batch_lengths(lengths, max_len, batch_size):
            flops += rows * shape.sequence_flops(width)
            tokens += rows * width
            calls += 1
        return flops, calls, tokens
    width = min(float(mean_tokens) * LENGTH_SORTED_PADDING, float(max_len))
    return n * shape.sequence_flops(width), math.ceil(n / max(1, batch_size)) if n else 0, n * width


def training_state_bytes(shape: ModelShape, fp16: bool) -> int:
    """Weights ``4P`` + gradients ``4P`` + two optimizer moments ``8P`` (+ ``2P`` fp16 copies under autocast)."""
    p = shape.params()
    return p * (16 + (2 if fp16 else 0))


def activation_memory(shape: ModelShape, groups: Sequence[Tuple[float, float]], checkpointing: bool,
                      fp16: bool) -> float:
    """Activation bytes of one training step; ``groups`` are ``(tokens, sequence length)`` pairs.

    Without checkpointing: ``tokens x L x act(T)``; with it: ``tokens x L x 4h`` (each layer's fp32 input)
    plus two layers' worth (one recomputed layer and its gradients).  Both add the embedding output and the
    final hidden states (``2 x 4h`` per token)."""
    total = 0.0
    for tokens, length in groups:
        per_layer = shape.activation_bytes(length, fp16)
        if checkpointing:
            total += tokens * (shape.layers * 4 * shape.hidden + 2 * per_layer)
        else:
            total += tokens * shape.layers * per_layer
        total += tokens * 2 * 4 * shape.hidden
    return total


# --------------------------------------------------------------------------- faiss factory indexes
def factory_bytes_per_vector(factory: str, dim: int) -> Tuple[float, float]:
    """``(bytes per vector, fixed bytes)`` of a faiss ``index_factory`` string (common components).

    Flat ``4d``; SQ8 ``d``; SQ4 ``d/2``; SQfp16 ``2d``; PQm[xb] ``m b / 8``; IVFn adds an 8-byte id per
    vector and ``n d 4`` of centroids; HNSWm adds ``2m`` 4-byte links (level 0, +6 % upper levels), Flat
    storage unless another follows; OPQm[_d] / PCA[R]d a ``d_in x d_out`` float matrix (and the width
    becomes d_out); IDMap an 8-byte id; RFlat / Refine(...) a full ``4d`` copy."""
    per_vec, fixed, d = 0.0, 0.0, int(dim)
    storage = None
    parts = [p.strip() for p in factory.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty index factory string")
    for part in parts:
        m = re.match(r"^(OPQ|PCAR?|PCAW?R?)(\d+)(?:_(\d+))?$", part)
        if m:
            out = int(m.group(3) or (m.group(2) if m.group(1).startswith("PCA") else d))
            fixed += d * out * 4
            d = out
            continue
        m = re.match(r"^IVF(\d+)(?:_HNSW(\d+))?$", part)
        if m:
            nlist = int(m.group(1))
            per_vec += 8
            fixed += nlist * d * 4
            if m.group(2):
                fixed += nlist * 2 * int(m.group(2)) * 4
            continue
        m = re.match(r"^HNSW(\d+)(?:_(.*))?$", part)
        if m:
            per_vec += 2 * int(m.group(1)) * 4 * 1.06
            if storage is None:
                storage = 4.0 * d
            if m.group(2):
                storage = factory_bytes_per_vector(m.group(2), d)[0]
            continue
        if part == "IDMap" or part == "IDMap2":
            per_vec += 8
            continue
        if part in ("RFlat",) or part.startswith("Refine"):
            per_vec += 4.0 * dim
            continue
        if part == "Flat":
            storage = 4.0 * d
            continue
        m = re.match(r"^SQ(4|6|8|fp16|bf16)$", part)
        if m:
            bits = {"4": 4, "6": 6, "8": 8, "fp16": 16, "bf16": 16}[m.group(1)]
            storage = d * bits / 8.0
            continue
        m = re.match(r"^PQ(\d+)(?:x(\d+))?(fs|np)?$", part)
        if m:
            storage = int(m.group(1)) * int(m.group(2) or 8) / 8.0
            fixed += int(m.group(1)) * (2 ** int(m.group(2) or 8)) * (d / int(m.group(1))) * 4
            continue
        raise ValueError(f"{factory!r}: component {part!r} is not one the planner knows (Flat, SQ4/6/8/fp16, "
                         "PQm[xb], IVFn[_HNSWm], HNSWm, OPQm[_d], PCAd, IDMap, RFlat)")
    return per_vec + (storage if storage is not None else 4.0 * d), fixed


def factory_build_flops(factory: str, n: int, dim: int) -> float:
    """Rough FLOP to train and fill a factory index (k-means = iterations x points x centroids x d x 2):
    IVFn: 10 iterations over ``min(n, 256 n)`` points and assigning the n vectors (``n x nlist x d x 2``;
    an _HNSW quantizer makes assignment ~``n x 64 x 32 x d x 2``); PQ: 25 iterations over 65536 points x 256
    centroids per sub-space, encoding ``n x 256 x d x 2``; OPQ: 10 x a PQ training; HNSWm: ``n x 40 x m x d x 2``
    (efConstruction 40)."""
    flops = 0.0
    m = re.search(r"IVF(\d+)(_HNSW)?", factory)
    if m:
        nlist = int(m.group(1))
        flops += 10.0 * min(n, 256 * nlist) * nlist * dim * 2
        flops += n * (64 * 32 if m.group(2) else nlist) * dim * 2.0
    if re.search(r"(^|,)PQ\d+", factory):
        pq_train = 25.0 * min(n, 65536) * 256 * dim * 2
        flops += pq_train + n * 256.0 * dim * 2
        if "OPQ" in factory:
            flops += 10 * pq_train
    m = re.search(r"(^|,)HNSW(\d+)", factory)
    if m:
        flops += n * 40.0 * int(m.group(2)) * dim * 2
    return flops


# --------------------------------------------------------------------------- the three records
@dataclass
class Workload:
    """The collection and the recipe (defaults: MS MARCO passage, the paper's flags)."""
    data_type: str = "passage"
    passages: int = 8_841_823
    mean_tokens: float = 77.0  # per passage at the encoding length (roberta tokens with <s> </s>)
    tokenize_tokens: float = 80.0  # tokens the tokenizer processes per passage (before the cut)
    passage_lengths: Optional[np.ndarray] = None  # real per-row lengths: exact length-sorted batches
    raw_bytes: int = 3_060_000_000  # collection file(s) preprocess reads
    store_length: int = 512  # preprocess --max_seq_length
    query_store_length: int = 64  # preprocess --max_query_length
    doc_length: int = 256  # --max_doc_length for encoding
    query_length: int = 32  # --max_query_length for encoding
    query_mean_tokens: float = 9.0
    train_queries: int = 502_939  # with qrels (kept by preprocess)
    raw_train_queries: int = 808_731  # tokenized
    dev_queries: int = 6_980
    test_queries: int = 43
    raw_other_queries: int = 101_293  # dev + test query files tokenized
    dim: int = 768
    embedding_dtype: str = "float32"
    model: ModelShape = ROBERTA_BASE
    encode_batch: int = 128  # per GPU (prepare_hardneg's --eval_batch_size; star/inference: 32)
    encode_fp16: bool = False  # the recipe encodes without --fp16
    hardneg_topk: int = 200
    eval_topk: int = 100
    star_batch: int = 256
    star_query_length: int = 24
    star_doc_length: int = 120
    hard_num: int = 1
    star_steps: int = 50_000
    gradient_checkpointing: bool = True
    star_fp16: bool = True
    adore_batch: int = 32
    adore_query_length: int = 64
    neg_topk: int = 200
    adore_epochs: int = 6
    bm25: bool = False
    warmup: bool = False
    factories: Tuple[str, ...] = ("SQ8", "OPQ96,PQ96")

    @property
    def embedding_bytes(self) -> int:
        return 2 if self.embedding_dtype == "float16" else 4

    def to_json(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "passage_lengths"}
        d["model"] = dataclasses.asdict(self.model)
        d["factories"] = list(self.factories)
        d["passage_lengths"] = None if self.passage_lengths is None else f"{len(self.passage_lengths)} lengths"
        return d


DOC_WORKLOAD = dict(data_type="doc", passages=3_213_835, mean_tokens=480.0, tokenize_tokens=2000.0,
                    raw_bytes=22_000_000_000, doc_length=512, train_queries=367_013, raw_train_queries=367_013,
                    dev_queries=5_193, test_queries=43, raw_other_queries=5_393)


def workload_for(data_type: str = "passage", **overrides) -> Workload:
    """The MS MARCO passage or document workload (``data_type`` passage|doc), with ``overrides``."""
    base = dict(DOC_WORKLOAD) if data_type == "doc" else {"data_type": "passage"}
    base.update(overrides)
    return Workload(**base)


@dataclass
class Machine:
    """What the plan runs on.  ``gpu_memory`` None: the profile's; ``disk`` None: free space not checked."""
    gpus: int = 0
    gpu_memory: Optional[int] = None
    gpu_type: Optional[str] = None
    ram: int = 16 * GB
    cores: int = 1
    disk: Optional[int] = None

    def profile(self) -> GpuProfile:
        return gpu_profile(self.gpu_type or DEFAULT_GPU_TYPE)

    @property
    def gpu_bytes(self) -> int:
        return int(self.gpu_memory if self.gpu_memory is not None else self.profile().memory)

    @property
    def ram_usable(self) -> float:
        return self.ram * RAM_USABLE_FRACTION

    @property
    def gpu_usable(self) -> float:
        return self.gpu_bytes * GPU_USABLE_FRACTION


def gpu_profile(name: str) -> GpuProfile:
    """A profile by name, case-insensitively (``h100``, ``A100-40GB``)."""
    for key, p in GPU_PROFILES.items():
        if key.lower() == str(name).lower().replace(" ", ""):
            return p
    raise ValueError(f"unknown GPU type {name!r} (known: {', '.join(GPU_PROFILES)})")


def this_machine() -> Machine:
    """The machine this process runs on: usable cores, MemTotal, visible GPUs and their memory."""
    cores = usable_cpus()
    ram = 16 * GB
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram = int(line.split()[1]) * 1024
    except OSError:
        pass
    gpus, mem, name = 0, None, None
    try:
        import torch
        if torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            props = torch.cuda.get_device_properties(0)
            mem, name = int(props.total_memory), _match_profile(props.name)
    except Exception as e:  # noqa: BLE001 - no torch / no driver only means "no GPU"
        logger.debug("no GPU information: %s", e)
    return Machine(gpus=gpus, gpu_memory=mem, gpu_type=name, ram=ram, cores=cores)


def _match_profile(device_name: str) -> Optional[str]:
    """The profile of a CUDA device name (``NVIDIA H100 80GB HBM3`` -> H100, ``NVIDIA A100-SXM4-40GB`` ->
    A100-40GB, ``NVIDIA GeForce RTX 4090`` -> RTX4090), or None."""
    upper = device_name.upper()
    words = [w for w in re.split(r"[\s\-_]+", upper) if w]
    names = set(words) | {a + b for a, b in zip(words, words[1:])}
    for key in GPU_PROFILES:
        base, _, variant = key.upper().partition("-")
        if base in names and (variant in upper if variant else not any(
                k.upper().startswith(base + "-") and k.upper().partition("-")[2] in upper for k in GPU_PROFILES)):
            return key
    return None


# --------------------------------------------------------------------------- calibration
@dataclass
class Calibration:
    """Throughput measured on one machine (``calibrate``); None = not measured.

    ``encode_flops`` / ``train_flops`` are FLOP/s of the encoder forward / forward+backward (3 x forward
    FLOP) on ``device`` with ``threads`` CPU threads (or one GPU), ``*_overhead`` the seconds per call on
    top; search figures are FLOP/s of exact scoring on the CPU with ``search_threads`` threads.  Saved
    as JSON (``save``/``load``) and passed back with ``--calibration``."""
    device: str = "cpu"
    gpu_name: Optional[str] = None
    threads: int = 1
    search_threads: int = 1
    shape: str = ""
    encode_flops: Optional[float] = None
    encode_overhead: Optional[float] = None
    encode_tokens_per_s: Optional[float] = None
    encode_batch: Optional[int] = None
    train_flops: Optional[float] = None
    train_overhead: Optional[float] = None
    search_flops: Optional[float] = None
    search_small_flops: Optional[float] = None
    stream_flops: Optional[float] = None
    gpu_search_flops: Optional[float] = None
    tokenize_tokens_per_s: Optional[float] = None
    disk_write: Optional[float] = None
    disk_read: Optional[float] = None
    mem_bandwidth: Optional[float] = None
    json_entries_per_s: Optional[float] = None
    seconds: float = 0.0
    when: str = ""
    notes: List[str] = field(default_factory=list)

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "Calibration":
        from .errors import DataError
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise DataError(f"{path}: calibration file not found (write one with --calibrate "
                            "--save_calibration PATH)") from None
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a calibration file ({e})") from None
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or "device" not in raw:
            raise DataError(f"{path}: not a calibration file (no 'device' field)")
        return cls(**{k: v for k, v in raw.items() if k in known})

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


def _median_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    times = []
    for _ in range(max(1, repeats)):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _fit_linear(points: Sequence[Tuple[float, float]]) -> Tuple[float, float]:
    """``(overhead seconds, seconds per FLOP)`` through two ``(FLOP, seconds)`` points; a negative overhead
    (noise) is clamped to 0 and the slope taken from the largest point."""
    (f1, t1), (f2, t2) = sorted(points)[0], sorted(points)[-1]
    slope = (t2 - t1) / (f2 - f1) if f2 > f1 else 0.0
    overhead = t1 - slope * f1
    if slope <= 0 or overhead < 0:
        return 0.0, t2 / f2
    return overhead, slope


def _build_model(shape: ModelShape, device):
    from transformers import RobertaConfig

    from .model import RobertaDot
    config = RobertaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                           num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                           max_position_embeddings=shape.max_positions, type_vocab_size=1, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2)
    config.output_embedding_size = shape.out_dim
    return RobertaDot(config, pooling="first", head=True).to(device)


def measure_encode(shape: ModelShape, device="cpu", batch_size: int = 32, lengths: Sequence[int] = (16, 128),
                   repeats: int = 3, fp16: Optional[bool] = None, model=None) -> Tuple[float, float, float]:
    """``(FLOP/s, seconds per call, tokens/s at the longest length)`` of the encoder forward on ``device``.

    Each call does what ``drhard.encode.encode_cache`` does per batch: rows gathered from a token matrix in
    row order, the mask and padding built in numpy, ids checked against the vocabulary, moved to the
    device, a forward under inference mode (fp16 autocast on a GPU unless ``fp16`` False), the embeddings
    back to the host, a finiteness check and a scattered write into the output rows.  Timed at two
    lengths (median of ``repeats``) to separate the per-call overhead from the per-FLOP cost."""
    import torch
    device = torch.device(device)
    fp16 = device.type == "cuda" if fp16 is None else fp16
    model = model if model is not None else _build_model(shape, device)
    model.eval()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    pool = 4 * batch_size
    out = np.empty((pool, shape.out_dim), dtype=np.float32)
    rows = rng.permutation(pool)[:batch_size]  # (B,) rows of the token matrix, not in file order
    points = []
    tokens_per_s = 0.0
    for length in lengths:
        tokens = rng.integers(3, shape.vocab, size=(pool, length)).astype(np.int32)  # (4B, T) a token cache
        tokens[:, 0] = 0
        row_lengths = np.full(pool, length, dtype=np.int64)  # (4B,)

        def call():
            order = np.argsort(rows, kind="stable")
            raw = np.empty((batch_size, length), dtype=np.int64)  # (B, T)
            raw[order] = tokens[rows[order], :length]
            cut = np.minimum(row_lengths[rows], length)  # (B,)
            mask_np = np.arange(length)[None, :] < cut[:, None]  # (B, T)
            ids_np = np.where(mask_np, raw, 1)  # (B, T) padded with the pad id
            if int(ids_np.max()) >= shape.vocab:
                raise ValueError("token id beyond the vocabulary")
            ids = torch.from_numpy(ids_np).to(device)  # (B, T)
            mask = torch.from_numpy(mask_np.astype(np.int64)).to(device)  # (B, T)
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
                emb = model.encode(ids, mask).float().cpu().numpy()  # (B, D)
            np.isfinite(emb).all(axis=1)
            out[rows] = emb

        call()  # warm-up
        seconds = _median_time(call, repeats, sync)
        points.append((batch_size * shape.sequence_flops(length), seconds))
        tokens_per_s = batch_size * length / seconds
    overhead, per_flop = _fit_linear(points)
    return 1.0 / per_flop, overhead, tokens_per_s


def measure_train(shape: ModelShape, device="cpu", batch_size: int = 4, lengths: Sequence[int] = (16, 64),
                  repeats: int = 3, fp16: Optional[bool] = None, model=None) -> Tuple[float, float]:
    """``(FLOP/s counting 3 x forward FLOP, seconds per step on top)`` of forward + backward (no optimizer)."""
    import torch
    device = torch.device(device)
    fp16 = device.type == "cuda" if fp16 is None else fp16
    model = model if model is not None else _build_model(shape, device)
    model.train()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    points = []
    for length in lengths:
        ids = torch.randint(3, shape.vocab, (batch_size, length), generator=gen).to(device)  # (B, T)
        mask = torch.ones_like(ids)  # (B, T)

        def step():
            with torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
                emb = model.encode(ids, mask)  # (B, D)
            emb.float().pow(2).mean().backward()
            model.zero_grad(set_to_none=True)

        step()
        seconds = _median_time(step, repeats, sync)
        points.append((3 * batch_size * shape.sequence_flops(length), seconds))
    overhead, per_flop = _fit_linear(points)
    return 1.0 / per_flop, overhead


def measure_search(rows: int, dim: int = 768, queries: int = 512, small: int = 32, k: int = 200,
                   repeats: int = 3) -> Dict[str, float]:
    """Exact-search FLOP/s on the CPU: faiss ``IndexFlatIP`` with ``queries`` and with ``small`` queries per
    call (ADORE's step), and ``exact_search.search_memmap`` (the streamed scorer) with ``queries``."""
    from . import exact_search
    rng = np.random.default_rng(0)
    x = rng.random((rows, dim), dtype=np.float32)  # (N, D)
    q = rng.random((queries, dim), dtype=np.float32)  # (Q, D)
    result = {}
    try:
        import faiss
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        index.search(q[:small], k)
        result["search_flops"] = 2.0 * queries * rows * dim / _median_time(lambda: index.search(q, k), repeats)
        result["search_small_flops"] = 2.0 * small * rows * dim / _median_time(
            lambda: index.search(q[:small], k), repeats)
        result["search_threads"] = faiss.omp_get_max_threads()
    except ImportError:
        pass
    run = lambda: exact_search.search_memmap(x, q, k, progress=False, check_finite=False)  # noqa: E731
    run()
    result["stream_flops"] = 2.0 * queries * rows * dim / _median_time(run, repeats)
    return result


def measure_disk(folder: str, nbytes: int = 64 * MB) -> Tuple[float, float]:
    """``(write B/s with fsync, read B/s after dropping the file's cached pages)`` in ``folder``."""
    block = np.random.default_rng(0).integers(0, 255, size=8 * MB, dtype=np.uint8).tobytes()
    fd, path = tempfile.mkstemp(prefix=".drhard-planner-", dir=folder)
    try:
        t0 = time.perf_counter()
        written = 0
        while written < nbytes:
            written += os.write(fd, block)
        os.fsync(fd)
        write = written / (time.perf_counter() - t0)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        t0 = time.perf_counter()
        read = 0
        while True:
            chunk = os.pread(fd, 8 * MB, read)
            if not chunk:
                break
            read += len(chunk)
        return write, read / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.remove(path)


def measure_mem_bandwidth(nbytes: int = 128 * MB, repeats: int = 3) -> float:
    """Bytes/s moved by one thread copying an array (read + write counted)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return 2.0 * nbytes / _median_time(lambda: np.copyto(dst, src), repeats)


def measure_json(queries: int = 2000, per_query: int = 200, n: int = 8_841_823) -> float:
    """Entries/s of writing hard.json the way ``retrieval.write_hard_json`` does (json.dumps per query)."""
    rows = np.random.default_rng(0).integers(0, n, size=(queries, per_query))

    def write():
        parts = []
        for q in range(queries):
            parts.append(json.dumps(str(q)) + ": " + json.dumps([int(p) for p in rows[q]]))
        return len("".join(parts))

    return queries * per_query / _median_time(write, 3)


def _synthetic_passages(vocab: Dict[str, int], count: int, words: int = 60, seed: int = 0) -> List[str]:
    """Passages of ``words`` words drawn Zipf-like from the vocabulary's whole words (``Ġword`` pieces)."""
    pool = [t[1:] for t in vocab if t.startswith("\u0120") and t[1:].isalpha()][:20000]
    if not pool:  # a vocabulary without byte-level word pieces
        pool = ("the of and to a in is that for it as was with be by on not this are or from at which have an "
                "they were has would when if so will what about more can who time people year way day").split()
    rng = np.random.default_rng(seed)
    ranks = np.minimum(rng.zipf(1.2, size=(count, words)) - 1, len(pool) - 1)
    return [" ".join(pool[r] for r in row) + "." for row in ranks]


def measure_tokenize(tokenizer_path: str, count: int = 1000) -> float:
    """Tokens/s of one process tokenizing synthetic 60-word passages with preprocess's tokenizer."""
    from .tokenization import load_tokenizer, resolve_tokenizer_path
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread, as in a preprocess worker
    folder = resolve_tokenizer_path(tokenizer_path)
    tok = load_tokenizer(folder)
    vocab: Dict[str, int] = {}
    if os.path.isfile(os.path.join(str(folder), "vocab.json")):
        with open(os.path.join(str(folder), "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
    texts = _synthetic_passages(vocab, count)
    tok.encode_batch_flat(texts[:50], 512)
    tokens = [0]

    def run():
        flat, lengths = tok.encode_batch_flat(texts, 512)
        tokens[0] = int(np.asarray(lengths).sum())

    seconds = _median_time(run, 3)
    return tokens[0] / seconds


def calibrate(device="cpu", quick: bool = True, shape: ModelShape = ROBERTA_BASE,
              tokenizer_path: Optional[str] = None, disk_path: Optional[str] = None,
              parts: Sequence[str] = ("encode", "train", "search", "tokenize", "disk", "memory", "json"),
              encode_batch: Optional[int] = None) -> Calibration:
    """Measure this machine's throughput (a few seconds with ``quick``; ``parts`` picks what to measure).

    ``device``: where the encoder runs ("cpu", "cuda", "cuda:1"); the search figures are always the CPU's.
    ``shape``: the encoder's layer shapes (random weights; roberta-base by default, ``TINY`` for the tiny
    test encoder).  Tokenization needs a vocabulary (``tokenizer_path``, a RoBERTa tokenizer folder):
    without one it is skipped and the default stays (said in ``notes``).  ``disk_path``: the folder whose
    disk is timed (default: the system temp folder)."""
    import torch
    t_start = time.perf_counter()
    dev = torch.device(device)
    cal = Calibration(device=str(dev), threads=torch.get_num_threads(), shape=shape.describe(),
                      when=time.strftime("%Y-%m-%d %H:%M:%S"))
    if dev.type == "cuda":
        cal.gpu_name = _match_profile(torch.cuda.get_device_name(dev)) or torch.cuda.get_device_name(dev)
    big = shape.hidden >= 256
    repeats = (3 if quick else 7) if big else (5 if quick else 15)
    model = None
    if "encode" in parts or "train" in parts:
        model = _build_model(shape, dev)
    if "encode" in parts:
        batch = encode_batch or ((4 if quick else 16) if big and dev.type == "cpu" else 32 if big else 64)
        lengths = (32, 128) if big else (16, 128)
        cal.encode_flops, cal.encode_overhead, cal.encode_tokens_per_s = measure_encode(
            shape, dev, batch, lengths, repeats, model=model)
        cal.encode_batch = batch
    if "train" in parts:
        batch = (2 if quick else 8) if big and dev.type == "cpu" else 32
        cal.train_flops, cal.train_overhead = measure_train(shape, dev, batch, (16, 64), repeats, model=model)
    del model
    if "search" in parts:
        rows = 65536 if quick else 262144
        found = measure_search(rows, 768, queries=1024 if quick else 4096, repeats=repeats)
        cal.search_flops = found.get("search_flops")
        cal.search_small_flops = found.get("search_small_flops")
        cal.stream_flops = found.get("stream_flops")
        cal.search_threads = int(found.get("search_threads", cal.threads))
        if cal.search_flops is None:
            cal.notes.append("faiss not installed: in-RAM faiss search rates are defaults")
        if dev.type == "cuda":
            cal.gpu_search_flops = _measure_gpu_matmul(dev, repeats)
    if "tokenize" in parts:
        if tokenizer_path:
            cal.tokenize_tokens_per_s = measure_tokenize(tokenizer_path, 1000 if quick else 5000)
        else:
            cal.notes.append("tokenization not measured (no vocabulary given: --tokenizer PATH); default used")
    if "disk" in parts:
        cal.disk_write, cal.disk_read = measure_disk(disk_path or tempfile.gettempdir(),
                                                     64 * MB if quick else 512 * MB)
    if "memory" in parts:
        cal.mem_bandwidth = measure_mem_bandwidth(128 * MB if quick else 512 * MB)
    if "json" in parts:
        cal.json_entries_per_s = measure_json(1000 if quick else 5000)
    cal.seconds = time.perf_counter() - t_start
    return cal


def _measure_gpu_matmul(device, repeats: int) -> float:
    """fp32 FLOP/s of a flat-search-shaped product on one GPU ((4096, 768) x (768, 262144))."""
    import torch
    q = torch.rand(4096, 768, device=device)
    x = torch.rand(262144, 768, device=device)
    sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    torch.mm(q, x.t())
    seconds = _median_time(lambda: torch.mm(q, x.t()), repeats, sync)
    return 2.0 * 4096 * 262144 * 768 / seconds


# --------------------------------------------------------------------------- rates for a machine
@dataclass
class Rates:
    """Every throughput the formulas use, for one planned machine, with where each comes from."""
    cpu_encode_flops: float
    cpu_encode_overhead: float
    cpu_train_flops: float
    cpu_train_overhead: float
    gpu_encode_flops: float  # per GPU, at the workload's encode precision
    gpu_encode_overhead: float
    gpu_train_flops: float  # per GPU, fp16 autocast
    gpu_train_overhead: float
    gpu_fp32_train_flops: float
    search_flops: float  # CPU, in-RAM faiss, large query batches
    search_small_flops: float  # CPU, 32 queries per call
    stream_flops: float  # CPU, streamed exact search scoring
    gpu_search_flops: float  # per GPU, fp32 flat
    gpu_bandwidth: float
    tokenize_tokens_per_s: float  # all cores
    disk_write: float
    disk_read: float
    disk_iops: float
    mem_bandwidth: float
    json_entries_per_s: float
    pcie: float
    interconnect: float
    sources: Dict[str, str] = field(default_factory=dict)


def resolve_rates(machine: Machine, calibration: Optional[Calibration] = None, encode_fp16: bool = False,
                  shape: Optional[ModelShape] = None) -> Rates:
    """The rates of ``machine``: measured ones where ``calibration`` has them (CPU figures scaled linearly
    from the threads measured to ``machine.cores``), else the labelled defaults."""
    cal = calibration or Calibration(device="none")
    src: Dict[str, str] = {}
    cores = max(1, int(machine.cores))

    def cpu(name: str, measured: Optional[float], threads: int, default_per_core: float, what: str = "") -> float:
        if measured:
            src[name] = f"measured ({threads} threads{what}) x {cores}/{threads} cores"
            return float(measured) / max(1, threads) * cores
        src[name] = f"default {default_per_core / 1e9:.0f} GFLOP/s per core (2-core dev machine) x {cores} cores"
        return default_per_core * cores

    shape_text = f", encoder {cal.shape}" if cal.shape else ""

    cpu_cal = not cal.on_gpu
    r = {}
    r["cpu_encode_flops"] = cpu("cpu_encode_flops", cal.encode_flops if cpu_cal else None, cal.threads,
                                CPU_DEFAULTS["encode_flops_per_core"], shape_text)
    r["cpu_encode_overhead"] = cal.encode_overhead if cpu_cal and cal.encode_flops else CPU_DEFAULTS["encode_overhead"]
    r["cpu_train_flops"] = cpu("cpu_train_flops", cal.train_flops if cpu_cal else None, cal.threads,
                               CPU_DEFAULTS["train_flops_per_core"], shape_text)
    r["cpu_train_overhead"] = cal.train_overhead if cpu_cal and cal.train_flops else CPU_DEFAULTS["train_overhead"]
    r["search_flops"] = cpu("search_flops", cal.search_flops, cal.search_threads,
                            CPU_DEFAULTS["search_flops_per_core"])
    r["search_small_flops"] = cpu("search_small_flops", cal.search_small_flops, cal.search_threads,
                                  CPU_DEFAULTS["search_small_flops_per_core"])
    r["stream_flops"] = cpu("stream_flops", cal.stream_flops, cal.search_threads,
                            CPU_DEFAULTS["stream_flops_per_core"])
    if cal.tokenize_tokens_per_s:
        r["tokenize_tokens_per_s"] = cal.tokenize_tokens_per_s * cores
        src["tokenize_tokens_per_s"] = f"measured (1 process) x {cores} cores"
    else:
        r["tokenize_tokens_per_s"] = CPU_DEFAULTS["tokenize_tokens_per_s"] * cores
        src["tokenize_tokens_per_s"] = (f"default {CPU_DEFAULTS['tokenize_tokens_per_s'] / 1e6:.1f}M tokens/s "
                                        f"per core (2-core dev machine) x {cores}")
    if cal.mem_bandwidth:
        r["mem_bandwidth"] = min(cal.mem_bandwidth * cores, MAX_HOST_BANDWIDTH)
        src["mem_bandwidth"] = f"measured (1 thread) x {cores} cores, at most {MAX_HOST_BANDWIDTH / 1e9:.0f} GB/s"
    else:
        r["mem_bandwidth"] = min(CPU_DEFAULTS["mem_bandwidth_per_core"] * cores, MAX_HOST_BANDWIDTH)
        src["mem_bandwidth"] = f"default 8 GB/s per core x {cores}, at most {MAX_HOST_BANDWIDTH / 1e9:.0f} GB/s"
    for name in ("disk_write", "disk_read", "json_entries_per_s"):
        measured = getattr(cal, name)
        r[name] = float(measured) if measured else IO_DEFAULTS[name]
        src[name] = "measured" if measured else IO_DEFAULT_SOURCES[name]
    for name in ("disk_iops", "pcie", "interconnect"):
        r[name] = IO_DEFAULTS[name]
        src[name] = IO_DEFAULT_SOURCES[name]
    prof = machine.profile()
    gpu_measured = cal.on_gpu and cal.encode_flops and (machine.gpu_type is None or
                                                        str(cal.gpu_name).lower() == machine.gpu_type.lower())
    label = f"{prof.name} datasheet" + ("" if machine.gpu_type else f" (no --gpu_type: planning for an {prof.name})")
    if gpu_measured:
        r["gpu_encode_flops"], r["gpu_encode_overhead"] = float(cal.encode_flops), float(cal.encode_overhead or 0)
        src["gpu_encode_flops"] = f"measured on {cal.gpu_name} (fp16)"
        if not encode_fp16:
            r["gpu_encode_flops"] = prof.fp32_flops * FP32_UTILISATION
            src["gpu_encode_flops"] = f"{label} fp32 x {FP32_UTILISATION} (encoding without --fp16)"
    else:
        if encode_fp16:
            r["gpu_encode_flops"] = prof.fp16_flops * ENCODE_UTILISATION
            src["gpu_encode_flops"] = f"{label} fp16 x {ENCODE_UTILISATION} (assumed utilisation)"
        else:
            r["gpu_encode_flops"] = prof.fp32_flops * FP32_UTILISATION
            src["gpu_encode_flops"] = f"{label} fp32 x {FP32_UTILISATION} (encoding without --fp16)"
        r["gpu_encode_overhead"] = GPU_CALL_OVERHEAD
    if gpu_measured and cal.train_flops:
        r["gpu_train_flops"], r["gpu_train_overhead"] = float(cal.train_flops), float(cal.train_overhead or 0)
        src["gpu_train_flops"] = f"measured on {cal.gpu_name} (fp16)"
    else:
        r["gpu_train_flops"] = prof.fp16_flops * TRAIN_UTILISATION
        r["gpu_train_overhead"] = GPU_STEP_OVERHEAD
        src["gpu_train_flops"] = f"{label} fp16 x {TRAIN_UTILISATION} (assumed utilisation)"
    r["gpu_fp32_train_flops"] = prof.fp32_flops * FP32_UTILISATION
    src["gpu_fp32_train_flops"] = f"{label} fp32 x {FP32_UTILISATION}"
    if gpu_measured and cal.gpu_search_flops:
        r["gpu_search_flops"] = float(cal.gpu_search_flops)
        src["gpu_search_flops"] = f"measured on {cal.gpu_name} (torch fp32 matmul)"
    else:
        r["gpu_search_flops"] = prof.fp32_flops * SEARCH_UTILISATION
        src["gpu_search_flops"] = f"{label} fp32 x {SEARCH_UTILISATION} (assumed)"
    r["gpu_bandwidth"] = prof.bandwidth
    src["gpu_bandwidth"] = f"{label}"
    return Rates(sources=src, **r)


# --------------------------------------------------------------------------- stage plans
@dataclass
class StagePlan:
    """One stage's resources: ``disk_bytes`` written, ``ram_bytes`` peak host memory, ``gpu_bytes`` peak
    memory of the busiest GPU, ``seconds`` wall time; ``fits`` and what to do when it does not."""
    name: str
    title: str
    disk_bytes: float = 0.0
    ram_bytes: float = 0.0
    gpu_bytes: float = 0.0
    seconds: float = 0.0
    fits: bool = True
    advice: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    chosen: bool = True  # counts in the total (False: an alternative shown beside the chosen one)
    details: Dict[str, object] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if not self.fits:
            return "NO"
        return "slow" if self.seconds > SLOW_SECONDS else "yes"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["status"] = self.status
        return d


@dataclass
class Context:
    workload: Workload
    machine: Machine
    rates: Rates


def _check_ram(plan: StagePlan, machine: Machine, advice: str) -> None:
    if plan.ram_bytes > machine.ram_usable:
        plan.fits = False
        plan.advice.append(f"needs {format_size(plan.ram_bytes)} RAM > {format_size(machine.ram_usable)} usable "
                           f"({RAM_USABLE_FRACTION:.0%} of {format_size(machine.ram)}): {advice}")


def _check_disk(plan: StagePlan, machine: Machine) -> None:
    if machine.disk is not None and plan.disk_bytes > machine.disk:
        plan.fits = False
        plan.advice.append(f"writes {format_size(plan.disk_bytes)} > {format_size(machine.disk)} free disk")


def stage_preprocess(ctx: Context) -> StagePlan:
    """preprocess.py: tokenize the collection and the queries into int32 memmaps.

    disk = n (4 max_seq_length + 4 + 16) + kept queries (4 max_query_length + 4 + 16 + 16);
    RAM = pid2offset dict (``DICT_ENTRY_BYTES`` per passage) + lengths and ids (12 B per passage) + one
    tokenizer worker per core; time = max(texts (tokens / tokenize rate per core +
    ``PREPROCESS_CPU_PER_PASSAGE``) / cores, texts ``PREPROCESS_SERIAL_PER_PASSAGE``, bytes / disk write)
    + raw bytes / disk read."""
    w, m, r = ctx.workload, ctx.machine, ctx.rates
    kept_q = w.train_queries + w.dev_queries + w.test_queries
    disk = w.passages * (4 * w.store_length + 4 + 16) + kept_q * (4 * w.query_store_length + 4 + 16 + 16)
    ram = PROCESS_BASE_RAM + w.passages * (DICT_ENTRY_BYTES + 12) + m.cores * TOKENIZER_WORKER_RAM
    texts = w.passages + w.raw_train_queries + w.raw_other_queries
    tokens = w.passages * w.tokenize_tokens + (w.raw_train_queries + w.raw_other_queries) * w.query_mean_tokens
    cpu_s = (tokens / (r.tokenize_tokens_per_s / m.cores) + texts * PREPROCESS_CPU_PER_PASSAGE) / m.cores
    serial_s = texts * PREPROCESS_SERIAL_PER_PASSAGE
    write_s = disk / r.disk_write
    seconds = max(cpu_s, serial_s, write_s) + w.raw_bytes / r.disk_read
    plan = StagePlan("preprocess", "preprocess.py: token memmaps", disk, ram, 0.0, seconds,
                     details={"tokens": tokens, "cpu_s": cpu_s, "serial_s": serial_s, "write_s": write_s})
    _check_ram(plan, m, "the pid2offset dict and the workers: fewer --threads, or more RAM")
    _check_disk(plan, m)
    return plan


def stage_bm25(ctx: Context) -> StagePlan:
    """star/bm25_hardneg.py (optional): a BM25 index over the collection, top-k for the training queries.

    RAM = postings (~``0.6 x tokens`` unique terms per passage x 8 B: doc id + score) + the tokenized
    corpus as Python lists during indexing (~36 B per token); time from assumed rates (bm25s: ~2M tokens/s
    per core indexing, ~50 queries/s per core at MS MARCO scale): an estimate, not measured here."""
    w, m = ctx.workload, ctx.machine
    tokens = w.passages * w.tokenize_tokens
    ram = PROCESS_BASE_RAM + tokens * 0.6 * 8 + tokens * JSON_LIST_ENTRY_BYTES
    seconds = tokens / (2e6 * m.cores) + w.train_queries / (50.0 * m.cores) * (w.passages / 8_841_823)
    disk = w.train_queries * w.hardneg_topk * (len(str(w.passages)) + 2)
    plan = StagePlan("bm25", "bm25_hardneg.py: BM25 negatives (estimate)", disk, ram, 0.0, seconds,
                     notes=["assumed bm25s rates (not calibrated)"])
    _check_ram(plan, m, "use the ANCE warmup checkpoint instead of the BM25 warmup")
    _check_disk(plan, m)
    return plan


def _encode_plan(ctx: Context, name: str, title: str, rows: int, mean_tokens: float, max_len: int,
                 lengths: Optional[np.ndarray], batch: int, gpus: int, write_bytes: float) -> StagePlan:
    w, m, r = ctx.workload, ctx.machine, ctx.rates
    on_gpu = gpus > 0
    per_call_batch = batch * max(1, gpus)  # DataParallel: --eval_batch_size per GPU
    flops, calls, tokens = encode_flops(w.model, rows, mean_tokens, max_len, per_call_batch, lengths)
    if on_gpu:
        rate = r.gpu_encode_flops * gpus * (DATA_PARALLEL_EFFICIENCY if gpus > 1 else 1.0)
        overhead = r.gpu_encode_overhead
    else:
        rate, overhead = r.cpu_encode_flops, r.cpu_encode_overhead
    compute = flops / rate + calls * overhead
    seconds = max(compute, write_bytes / r.disk_write)
    p = w.model.params()
    act = batch * max_len * (w.model.intermediate * 4 + w.model.heads * max_len * 4 + 6 * w.model.hidden * 4)
    gpu = (p * 4 + (p * 2 if w.encode_fp16 else 0) + act + CUDA_CONTEXT_BYTES) if on_gpu else 0.0
    ram = PROCESS_BASE_RAM + p * 4 + (0 if on_gpu else act)
    plan = StagePlan(name, title, write_bytes, ram, gpu, seconds,
                     details={"flops": flops, "calls": calls, "tokens_computed": tokens,
                              "tokens_per_s": tokens / compute if compute else 0.0})
    if on_gpu and gpu > m.gpu_usable:
        plan.fits = False
        plan.advice.append(f"{format_size(gpu)} per GPU > {format_size(m.gpu_usable)}: a smaller "
                           f"{flag('eval_batch_size')}")
    prof = m.profile()
    gain = prof.fp16_flops * ENCODE_UTILISATION / (prof.fp32_flops * FP32_UTILISATION)
    if on_gpu and not w.encode_fp16 and seconds > 60 and gain >= 1.5:
        plan.notes.append(f"{flag('fp16')} for encoding: fp16 tensor cores, ~{gain:.0f}x faster (embeddings "
                          "differ in the last bits)")
    if not on_gpu and seconds > 86400:
        plan.advice.append(f"{format_seconds(seconds)} on {m.cores} cores: encode on GPUs")
    _check_ram(plan, m, "more RAM")
    _check_disk(plan, m)
    return plan


def stage_encode_passages(ctx: Context, gpus: Optional[int] = None, batch: Optional[int] = None) -> StagePlan:
    """Encoding the collection (star/inference.py, prepare_hardneg.py): FLOP from ``encode_flops``
    (length-sorted batches), time = FLOP / rate + calls x overhead, at least the file's write time;
    disk = n x d x 4 (float32 embeddings; 2 with fp16 storage)."""
    w, m = ctx.workload, ctx.machine
    gpus = m.gpus if gpus is None else gpus
    return _encode_plan(ctx, "encode_passages", f"encode {w.passages:,} passages (max {w.doc_length})",
                        w.passages, w.mean_tokens, w.doc_length, w.passage_lengths, batch or w.encode_batch, gpus,
                        w.passages * w.dim * w.embedding_bytes)


def stage_encode_queries(ctx: Context, queries: Optional[int] = None, gpus: Optional[int] = None,
                         batch: Optional[int] = None) -> StagePlan:
    """Encoding queries (train + dev for hard negatives; dev/test for evaluation)."""
    w, m = ctx.workload, ctx.machine
    q = w.train_queries + w.dev_queries if queries is None else queries
    gpus = m.gpus if gpus is None else gpus
    return _encode_plan(ctx, "encode_queries", f"encode {q:,} queries (max {w.query_length})", q,
                        w.query_mean_tokens, w.query_length, None, batch or w.encode_batch, gpus, q * w.dim * 4)


def _search_common(ctx: Context, queries: int, k: int) -> Tuple[float, float, float]:
    """(FLOP, index bytes fp32, result bytes) of searching ``queries`` exactly."""
    w = ctx.workload
    flops = 2.0 * queries * w.passages * w.dim
    return flops, float(w.passages * w.dim * 4), float(queries * k * 12 + queries * w.dim * 4)


def stage_search_faiss_cpu(ctx: Context, queries: Optional[int] = None, k: Optional[int] = None) -> StagePlan:
    """In-RAM ``faiss.IndexFlatIP`` (drhard.index.build_index on the CPU): RAM = n d 4 + queries + results;
    time = read the embeddings (disk, or page cache when they fit in RAM twice) + 2 Q n d / rate."""
    w, m, r = ctx.workload, ctx.machine, ctx.rates
    q = w.train_queries + w.dev_queries if queries is None else queries
    k = w.hardneg_topk if k is None else k
    flops, index, results = _search_common(ctx, q, k)
    file_bytes = w.passages * w.dim * w.embedding_bytes
    read = file_bytes / (r.mem_bandwidth if file_bytes + index < m.ram_usable else r.disk_read)
    ram = PROCESS_BASE_RAM + index + results
    plan = StagePlan("search_faiss_cpu", f"exact search, faiss flat in RAM ({q:,} q, k {k})", 0.0, ram, 0.0,
                     read + flops / r.search_flops, details={"flops": flops, "index_bytes": index})
    _check_ram(plan, m, f"streamed exact search ({flag('exact_search')}; the default when it does not fit, "
               f"RSS ~{format_size(STREAM_CHUNK_BYTES + results + PROCESS_BASE_RAM)}) or "
               f"{flag('embedding_dtype')} ({format_size(index / 2)} file) or {flag('index_factory')} "
               f"{w.factories[-1] if w.factories else 'OPQ96,PQ96'} (approximate)")
    return plan


def stage_search_streamed(ctx: Context, queries: Optional[int] = None, k: Optional[int] = None) -> StagePlan:
    """Streamed exact search (``exact_search.search_memmap``): RSS = two chunk buffers (at most
    ``STREAM_CHUNK_BYTES``) + queries + results, whatever n; the file is read once per query set:
    time = max(2 Q n d / rate, file / read speed) (page-cache speed when the file fits in RAM)."""
    w, m, r = ctx.workload, ctx.machine, ctx.rates
    q = w.train_queries + w.dev_queries if queries is None else queries
    k = w.hardneg_topk if k is None else k
    flops, _, results = _search_common(ctx, q, k)
    file_bytes = float(w.passages * w.dim * w.embedding_bytes)
    chunk = min(STREAM_CHUNK_BYTES, max(1.0, m.ram * 0.25))
    read_rate = r.mem_bandwidth if file_bytes < m.ram_usable * 0.5 else r.disk_read
    seconds = max(flops / r.stream_flops, file_bytes / read_rate)
    dtype = "fp16 file" if w.embedding_bytes == 2 else "fp32 file"
    plan = StagePlan("search_streamed", f"exact search, streamed from the {dtype} ({q:,} q, k {k})", 0.0,
                     PROCESS_BASE_RAM + chunk + results, 0.0, seconds,
                     details={"flops": flops, "file_bytes": file_bytes, "chunk_bytes": chunk})
    _check_ram(plan, m, "search the queries in parts (the results alone are too large)")
    return plan


def stage_search_gpu(ctx: Context, queries: Optional[int] = None, k: Optional[int] = None,
                     gpus: Optional[int] = None, fp16_storage: bool = False,
                     shared_bytes: float = 0.0) -> StagePlan:
    """faiss flat index on G GPUs (one clone, or sharded): per GPU n d bytes / G + ``GPU_MARGIN_BYTES``
    (+ ``shared_bytes`` of a model on the same GPU); the host first builds the whole CPU index (n d 4).
    time = read + copy over PCIe + max(2 Q n d / (G rate), n d bytes / (G bandwidth)) + calls x overhead."""
    w, m, r = ctx.workload, ctx.machine, ctx.rates
    q = w.train_queries + w.dev_queries if queries is None else queries
    k = w.hardneg_topk if k is None else k
    g = m.gpus if gpus is None else gpus
    flops, index, results = _search_common(ctx, q, k)
    width = 2 if fp16_storage else 4
    per_gpu = w.passages * w.dim * width / max(1, g) + GPU_MARGIN_BYTES + shared_bytes
    file_bytes = w.passages * w.dim * w.embedding_bytes
    read = file_bytes / (r.mem_bandwidth if file_bytes + index < m.ram_usable else r.disk_read)
    calls = math.ceil(q / 4096)
    compute = max(flops / (max(1, g) * r.gpu_search_flops * (2 if fp16_storage else 1)),
                  q / 4096 * w.passages * w.dim * width / (max(1, g) * r.gpu_bandwidth))
    seconds = read + index / r.pcie + compute + calls * GPU_SEARCH_CALL
    name = "search_gpu_fp16" if fp16_storage else "search_gpu"
    how = "sharded over" if g > 1 else "on"
    title = f"exact search, faiss flat{' fp16' if fp16_storage else ''} {how} {g} GPU{'s' if g > 1 else ''}"
    plan = StagePlan(name, title, 0.0, PROCESS_BASE_RAM + index + results, per_gpu, seconds,
                     details={"flops": flops, "per_gpu_bytes": per_gpu})
    if g < 1:
        plan.fits = False
        plan.advice.append("no GPU")
        return plan
    if per_gpu > m.gpu_usable:
        plan.fits = False
        need = math.ceil(w.passages * w.dim * width / max(1.0, m.gpu_usable - GPU_MARGIN_BYTES - shared_bytes))
        alt = [f"shard over more GPUs ({flag('faiss_gpus')} over >= {need} GPUs)"]
        if not fp16_storage:
            alt.append(f"fp16 storage ({flag('faiss_fp16')}: "
                       f"{format_size(w.passages * w.dim * 2 / g + GPU_MARGIN_BYTES + shared_bytes)} per GPU)")
        alt.append(f"the CPU ({flag('not_faiss_cuda')} / no {flag('faiss_gpus')})")
        plan.advice.append(f"{format_size(per_gpu)} per GPU (shard + {format_size(GPU_MARGIN_BYTES)} head room) > "
                           f"{format_size(m.gpu_usable)}: " + " or ".join(alt))
    _check_ram(plan, m, "the GPU build goes through a full CPU index (drhard.index.build_index): more RAM, "
               "or the streamed search on the CPU")
    return plan


def stage_search_factory(ctx: Context, factory: Optional[str] = None, queries: Optional[int] = None,
                         k: Optional[int] = None) -> StagePlan:
    """A compressed faiss index (``--index_factory``): memory = n x bytes per vector + fixed; time = its
    training and filling (``factory_build_flops``) at the CPU search rate; the search itself depends on
    nprobe/efSearch (approximate, not the paper's exact search) and is not modelled."""
    w, m, r = ctx.workload, ctx.machine, ctx.rates
    factory = factory or (w.factories[0] if w.factories else "SQ8")
    per_vec, fixed = factory_bytes_per_vector(factory, w.dim)
    mem = w.passages * per_vec + fixed
    build = factory_build_flops(factory, w.passages, w.dim)
    read = w.passages * w.dim * w.embedding_bytes / r.disk_read
    plan = StagePlan("search_factory", f"index {factory} ({per_vec:.0f} B/vector, approximate)", 0.0,
                     PROCESS_BASE_RAM + mem, 0.0, read + build / r.search_flops, chosen=False,
                     notes=["time: training + adding on the CPU only; search speed depends on nprobe/efSearch"],
                     details={"bytes_per_vector": per_vec, "fixed_bytes": fixed, "factory": factory,
                              "build_flops": build})
    _check_ram(plan, m, "a smaller code (fewer PQ bytes)")
    return plan


def choose_search(ctx: Context, queries: int, k: int, gpus: int, shared_bytes: float = 0.0,
                  alternatives: bool = True) -> List[StagePlan]:
    """The search the tools would run, first (GPU flat when the shards fit, fp16 GPU storage next, the
    in-RAM faiss index, the streamed search when RAM is short), then the alternatives (``chosen`` False)."""
    options: List[StagePlan] = []
    if gpus > 0:
        options.append(stage_search_gpu(ctx, queries, k, gpus, False, shared_bytes))
        options.append(stage_search_gpu(ctx, queries, k, gpus, True, shared_bytes))
    options.append(stage_search_faiss_cpu(ctx, queries, k))
    options.append(stage_search_streamed(ctx, queries, k))
    chosen = next((p for p in options if p.fits), options[-1])
    for p in options:
        p.chosen = p is chosen
    if chosen.name == "search_gpu_fp16":
        chosen.notes.append(f"fp32 shards do not fit: {flag('faiss_fp16')} (scores from fp16 vectors)")
    if chosen.name == "search_streamed" and gpus == 0:
        chosen.notes.append(f"the index does not fit in RAM: streamed ({flag('exact_search')})")
    rest = [p for p in options if p is not chosen]
    if alternatives:
        for factory in ctx.workload.factories:
            rest.append(stage_search_factory(ctx, factory, queries, k))
    return [chosen] + (rest if alternatives else [])


def stage_search(ctx: Context, queries: Optional[int] = None, k: Optional[int] = None,
                 gpus: Optional[int] = None) -> StagePlan:
    """The exact search the tools would choose on this machine (``choose_search``); alternatives in notes."""
    w, m = ctx.workload, ctx.machine
    q = w.train_queries + w.dev_queries if queries is None else queries
    plans = choose_search(ctx, q, w.hardneg_topk if k is None else k, m.gpus if gpus is None else gpus)
    chosen = plans[0]
    for p in plans[1:]:
        if p.name.startswith("search_") and p.name != "search_factory":
            chosen.notes.append(f"alternative {p.name}: {format_seconds(p.seconds)}, RAM {format_size(p.ram_bytes)}"
                                + (f", GPU {format_size(p.gpu_bytes)}" if p.gpu_bytes else "")
                                + ("" if p.fits else " (does not fit)"))
    return chosen


def stage_hard_json(ctx: Context, queries: Optional[int] = None, k: Optional[int] = None) -> StagePlan:
    """hard.json: disk = Q (topk (digits + 2) + 16); RAM = the (Q, topk+10) results (12 B each) + the
    hard_negatives mask/sort/take (~17 B per entry); time = entries / json rate."""
    w, m, r = ctx.workload, ctx.machine, ctx.rates
    q = w.train_queries if queries is None else queries
    k = w.hardneg_topk if k is None else k
    digits = len(str(max(1, w.passages - 1)))
    entries = q * k
    disk = entries * (digits + 2) + q * 16
    ram = PROCESS_BASE_RAM + q * (k + 10) * (12 + 17)
    plan = StagePlan("hard_json", f"hard.json ({q:,} queries x {k})", disk, ram, 0.0,
                     entries / r.json_entries_per_s)
    _check_ram(plan, m, "more RAM")
    _check_disk(plan, m)
    return plan


def star_memory(w: Workload, per_device_batch: int, checkpointing: bool, fp16: bool) -> float:
    """GPU bytes of one STAR training process with ``per_device_batch`` queries (formulas in the module doc)."""
    groups = [(per_device_batch * w.star_query_length, w.star_query_length),
              (per_device_batch * (1 + w.hard_num) * w.star_doc_length, w.star_doc_length)]
    return (training_state_bytes(w.model, fp16) + activation_memory(w.model, groups, checkpointing, fp16)
            + CUDA_CONTEXT_BYTES)


def star_step_flops(w: Workload, batch: Optional[int] = None, checkpointing: Optional[bool] = None) -> float:
    """FLOP of one STAR step: (3 or 4 with checkpointing) x forward of B queries + B (1 + hard_num) documents."""
    b = w.star_batch if batch is None else batch
    ckpt = w.gradient_checkpointing if checkpointing is None else checkpointing
    fwd = b * w.model.sequence_flops(w.star_query_length) + b * (1 + w.hard_num) * w.model.sequence_flops(
        w.star_doc_length)
    return fwd * (4 if ckpt else 3)


def stage_star_train(ctx: Context, gpus: int = 1, steps: Optional[int] = None) -> StagePlan:
    """star/train.py: ``steps`` x (step FLOP / (G x rate) + overhead + optimizer update + gradient all-reduce).

    GPU memory per device from ``star_memory`` at batch/G (torchrun in the global scope); on the CPU the
    same memory is host RAM (fp32).  Host RAM: hard.json loaded (text + ``JSON_LIST_ENTRY_BYTES`` per
    negative).  Disk: checkpoint-<stop> (weights + optimizer + scheduler) and the final model."""
    w, m, r = ctx.workload, ctx.machine, ctx.rates
    steps = w.star_steps if steps is None else steps
    g = min(gpus, m.gpus) if m.gpus else 0
    fp16 = w.star_fp16 and g > 0
    p = w.model.params()
    per_dev_batch = math.ceil(w.star_batch / max(1, g))
    flops = star_step_flops(w)
    if g > 0:
        rate = (r.gpu_train_flops if fp16 else r.gpu_fp32_train_flops) * g
        step = flops / rate + r.gpu_train_overhead + p * OPTIMIZER_BYTES_PER_PARAM_STEP / r.gpu_bandwidth
        if g > 1:
            step += 2.0 * p * 4 * (g - 1) / g / r.interconnect
    else:
        step = flops / r.cpu_train_flops + r.cpu_train_overhead + p * OPTIMIZER_BYTES_PER_PARAM_STEP / r.mem_bandwidth
    mem = star_memory(w, per_dev_batch, w.gradient_checkpointing, fp16)
    hard_text = w.train_queries * w.hardneg_topk * (len(str(w.passages)) + 2)
    ram = PROCESS_BASE_RAM + hard_text + w.train_queries * w.hardneg_topk * JSON_LIST_ENTRY_BYTES
    if g == 0:
        ram += mem - CUDA_CONTEXT_BYTES
    disk = 2 * p * 4 + p * 8
    where = f"{g} GPU{'s' if g > 1 else ''}" if g else "CPU"
    plan = StagePlan("star_train", f"STAR training, {steps:,} steps on {where}", disk, ram, mem if g else 0.0,
                     steps * step, details={"step_flops": flops, "step_seconds": step,
                                            "per_device_batch": per_dev_batch, "gpu_bytes_per_device": mem})
    if g > 0 and mem > m.gpu_usable:
        plan.fits = False
        alt = []
        if not w.gradient_checkpointing:
            ck = star_memory(w, per_dev_batch, True, fp16)
            alt.append(f"{flag('gradient_checkpointing')} ({format_size(ck)}, +1/3 compute)")
        for n in range(max(2, g + 1), 65):
            shard = star_memory(w, math.ceil(w.star_batch / n), True, fp16)
            if shard <= m.gpu_usable:
                alt.append(f"{flag('torchrun', n)} star/train.py ... {flag('loss_scope')} with "
                           f"{flag('gradient_checkpointing')} ({format_size(shard)} per GPU, the paper's loss)")
                break
        for acc in (2, 4, 8, 16, 32):
            b = math.ceil(w.star_batch / acc)
            if star_memory(w, b, True, fp16) <= m.gpu_usable:
                alt.append(f"{flag('per_device_train_batch_size', b)} {flag('gradient_accumulation_steps', acc)} "
                           "(fits; in-batch negatives per micro-batch: not the paper's loss)")
                break
        if not fp16 and g > 0:
            alt.append(f"{flag('fp16')}")
        plan.advice.append(f"{format_size(mem)} per GPU > {format_size(m.gpu_usable)}: " + " / ".join(alt))
    if g == 0:
        plan.advice.append(f"{format_seconds(steps * step)} on {m.cores} CPU cores: STAR needs a GPU")
    _check_ram(plan, m, "more RAM (hard.json is loaded as Python lists)")
    _check_disk(plan, m)
    if g == 1 and m.gpus > 1:
        multi = dataclasses.replace(m)
        alt_plan = stage_star_train(Context(w, multi, r), gpus=m.gpus, steps=steps)
        plan.notes.append(f"{flag('torchrun', m.gpus)} {flag('loss_scope')}: {format_seconds(alt_plan.seconds)}, "
                          f"{format_size(alt_plan.gpu_bytes)} per GPU (the paper's loss, same batch)")
    return plan


def stage_adore_train(ctx: Context) -> StagePlan:
    """adore/train.py: per step the query encoder's forward + backward (fp32, B x 64 tokens), one exact
    search of B queries over the frozen index (``max(2 B n d / rate, n d bytes / bandwidth)``: a small
    batch reads the whole index), and the gather of B (neg_topk + 1) candidate rows from the memmap
    (memory speed when the page cache holds the file, else ``disk_iops`` random reads).  Steps =
    epochs x ceil(train queries / B).  Model on GPU 0 and the index on the other GPUs (both on GPU 0 with
    one GPU), else the CPU; an index that does not fit anywhere in memory is searched streamed per step."""
    w, m, r = ctx.workload, ctx.machine, ctx.rates
    steps_per_epoch = math.ceil(w.train_queries / w.adore_batch)
    steps = w.adore_epochs * steps_per_epoch
    p = w.model.params()
    tokens = w.adore_batch * w.adore_query_length
    fwd = w.adore_batch * w.model.sequence_flops(w.adore_query_length)
    model_gpu = m.gpus > 0
    act = activation_memory(w.model, [(tokens, w.adore_query_length)], False, False)
    model_mem = training_state_bytes(w.model, False) + act + CUDA_CONTEXT_BYTES
    update = p * OPTIMIZER_BYTES_PER_PARAM_STEP
    if model_gpu:
        enc = 3 * fwd / r.gpu_fp32_train_flops + r.gpu_train_overhead + update / r.gpu_bandwidth
    else:
        enc = 3 * fwd / r.cpu_train_flops + r.cpu_train_overhead + update / r.mem_bandwidth
    search_gpus = m.gpus - 1 if m.gpus > 1 else m.gpus
    shared = model_mem if m.gpus == 1 else 0.0
    index = float(w.passages * w.dim * 4)
    file_bytes = float(w.passages * w.dim * w.embedding_bytes)
    step_flops = 2.0 * w.adore_batch * w.passages * w.dim
    options = []
    if search_gpus > 0:
        for width in (4, 2):
            per_gpu = w.passages * w.dim * width / search_gpus + GPU_MARGIN_BYTES + shared
            s = max(step_flops / (search_gpus * r.gpu_search_flops * (4 / width)),
                    w.passages * w.dim * width / (search_gpus * r.gpu_bandwidth)) + GPU_SEARCH_CALL
            ok = per_gpu <= m.gpu_usable and PROCESS_BASE_RAM + index <= m.ram_usable
            options.append((f"faiss flat{' fp16' if width == 2 else ''} on {search_gpus} GPU(s)", s, per_gpu,
                            PROCESS_BASE_RAM + index, ok))
    s_cpu = max(step_flops / r.search_small_flops, index / r.mem_bandwidth)
    in_ram = PROCESS_BASE_RAM + index
    options.append(("faiss flat in RAM", s_cpu, 0.0, in_ram, in_ram <= m.ram_usable))
    s_stream = max(step_flops / r.stream_flops, file_bytes / r.disk_read)
    options.append(("streamed per step", s_stream, 0.0, PROCESS_BASE_RAM + STREAM_CHUNK_BYTES, True))
    how, search_s, index_gpu, ram, _ = next(o for o in options if o[4])
    gather_rows = w.adore_batch * (w.neg_topk + 1)
    cached = (ram + file_bytes) <= m.ram_usable
    gather = gather_rows * w.dim * 4 / (r.mem_bandwidth / max(1, m.cores)) if cached else gather_rows / r.disk_iops
    step = enc + search_s + gather
    gpu = max(model_mem if model_gpu else 0.0, index_gpu)
    ram_total = ram + (0 if model_gpu else model_mem - CUDA_CONTEXT_BYTES)
    disk = w.adore_epochs * p * (4 + 8)
    plan = StagePlan("adore_train", f"ADORE training, {steps:,} steps, index: {how}", disk, ram_total, gpu,
                     steps * step, details={"step_seconds": step, "search_seconds": search_s,
                                            "encoder_seconds": enc, "gather_seconds": gather,
                                            "steps": steps, "index": how})
    if how == "streamed per step":
        plan.advice.append(f"the index fits neither GPU memory nor RAM: each step reads {format_size(file_bytes)} "
                           f"({format_seconds(s_stream)}/step); {flag('embedding_dtype')} / "
                           f"{flag('faiss_gpu_index')} on more GPUs / more RAM")
    if not cached:
        plan.notes.append(f"the passage memmap is not page-cached: {gather_rows} random row reads per step")
    if model_gpu and model_mem > m.gpu_usable:
        plan.fits = False
        plan.advice.append(f"query encoder {format_size(model_mem)} > GPU memory: a smaller "
                           f"{flag('per_gpu_batch_size')}")
    elif step * steps > SLOW_SECONDS:
        plan.advice.append(f"{format_seconds(step)} per step ({format_seconds(search_s)} search): "
                           f"{flag('faiss_gpu_index')} on GPUs")
    _check_disk(plan, m)
    return plan


def stage_evaluate(ctx: Context, queries: Optional[int] = None, k: Optional[int] = None) -> StagePlan:
    """Rank files + msmarco_eval + cvt_back: disk = Q k ``PER_ROW_RANK_BYTES`` x 2 (offset and official run)."""
    w = ctx.workload
    q = w.dev_queries + w.test_queries if queries is None else queries
    k = w.eval_topk if k is None else k
    rows = q * k
    return StagePlan("evaluate", f"rank files, msmarco_eval, cvt_back ({q:,} q)", 2 * rows * PER_ROW_RANK_BYTES,
                     PROCESS_BASE_RAM + rows * 100, 0.0, 5.0 + rows / 2e5)


STAGES: Dict[str, Callable[..., StagePlan]] = {
    "preprocess": stage_preprocess,
    "bm25": stage_bm25,
    "encode_passages": stage_encode_passages,
    "encode_queries": stage_encode_queries,
    "search": stage_search,
    "search_faiss_cpu": stage_search_faiss_cpu,
    "search_streamed": stage_search_streamed,
    "search_gpu": stage_search_gpu,
    "search_gpu_fp16": lambda ctx, **kw: stage_search_gpu(ctx, fp16_storage=True, **kw),
    "search_factory": stage_search_factory,
    "hard_json": stage_hard_json,
    "star_train": stage_star_train,
    "adore_train": stage_adore_train,
    "evaluate": stage_evaluate,
}

_WORKLOAD_FIELDS = {f.name for f in dataclasses.fields(Workload)}
_MACHINE_FIELDS = {f.name for f in dataclasses.fields(Machine)}
_SIZE_FIELDS = {"ram", "gpu_memory", "disk"}


def _split_facts(facts: dict, workload: Optional[Workload], machine: Optional[Machine]
                 ) -> Tuple[Workload, Machine, dict]:
    wf = {k: v for k, v in facts.items() if k in _WORKLOAD_FIELDS}
    mf = {k: (parse_size(v) if k in _SIZE_FIELDS and isinstance(v, str) else v)
          for k, v in facts.items() if k in _MACHINE_FIELDS}
    rest = {k: v for k, v in facts.items() if k not in _WORKLOAD_FIELDS and k not in _MACHINE_FIELDS}
    if workload is None:
        workload = workload_for(wf.pop("data_type", "passage"), **wf)
    elif wf:
        workload = dataclasses.replace(workload, **wf)
    if machine is None:
        base = this_machine()
        machine = dataclasses.replace(base, **mf) if mf else base
    elif mf:
        machine = dataclasses.replace(machine, **mf)
    return workload, machine, rest


def plan_stage(stage_name: str, workload: Optional[Workload] = None, machine: Optional[Machine] = None,
               calibration: Optional[Calibration] = None, **facts) -> StagePlan:
    """The plan of one stage (``STAGES``): ``facts`` are ``Workload``/``Machine`` fields (sizes as bytes or
    "80GB" strings) and the stage's own parameters (``queries``, ``k``, ``gpus``, ``factory``...); missing
    machine facts are this machine's.  ``calibration``: measured rates (else the defaults)."""
    if stage_name not in STAGES:
        raise ValueError(f"unknown stage {stage_name!r} (one of {', '.join(STAGES)})")
    workload, machine, params = _split_facts(facts, workload, machine)
    rates = resolve_rates(machine, calibration, workload.encode_fp16, workload.model)
    return STAGES[stage_name](Context(workload, machine, rates), **params)


# --------------------------------------------------------------------------- the whole pipeline
@dataclass
class Plan:
    workload: Workload
    machine: Machine
    rates: Rates
    stages: List[StagePlan]
    assumptions: List[str] = field(default_factory=list)

    @property
    def chosen(self) -> List[StagePlan]:
        return [s for s in self.stages if s.chosen]

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.chosen)

    @property
    def total_disk(self) -> float:
        return sum(s.disk_bytes for s in self.chosen)

    @property
    def peak_ram(self) -> float:
        return max((s.ram_bytes for s in self.chosen), default=0.0)

    @property
    def peak_gpu(self) -> float:
        return max((s.gpu_bytes for s in self.chosen), default=0.0)

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.chosen)

    def table(self) -> str:
        return format_table(self)

    def to_json(self) -> dict:
        return {"machine": dataclasses.asdict(self.machine), "workload": self.workload.to_json(),
                "rates": dataclasses.asdict(self.rates), "stages": [s.to_json() for s in self.stages],
                "assumptions": self.assumptions,
                "total": {"seconds": self.total_seconds, "disk_bytes": self.total_disk,
                          "peak_ram_bytes": self.peak_ram, "peak_gpu_bytes": self.peak_gpu, "fits": self.fits}}


def _label(prefix: str, plan: StagePlan) -> StagePlan:
    plan.title = f"{prefix}: {plan.title}"
    return plan


def plan_pipeline(workload: Workload, machine: Machine, calibration: Optional[Calibration] = None) -> Plan:
    """Every stage of the recipe (README "Reproducing the paper at full scale") for the STAR and ADORE(STAR)
    rows, with the GPU layout of ``reproduce.py --gpus N``: encoding on every GPU, STAR on GPU 0, the
    index for inference and ADORE on GPUs 1.. (GPU 0 with one GPU), hard negatives searched on all GPUs."""
    rates = resolve_rates(machine, calibration, workload.encode_fp16, workload.model)
    ctx = Context(workload, machine, rates)
    w, g = workload, machine.gpus
    serve_gpus = g - 1 if g > 1 else g
    stages = [stage_preprocess(ctx)]
    if w.bm25:
        stages.append(stage_bm25(ctx))
    if w.warmup:
        stages.append(_label("warmup", stage_star_train(ctx, gpus=1)))
    stages.append(_label("hardneg", stage_encode_passages(ctx)))
    stages.append(_label("hardneg", stage_encode_queries(ctx, w.train_queries + w.dev_queries)))
    searches = choose_search(ctx, w.train_queries + w.dev_queries, w.hardneg_topk + 10, g)
    stages += [_label("hardneg", s) for s in searches]
    stages.append(_label("hardneg", stage_hard_json(ctx)))
    stages.append(_label("star", stage_star_train(ctx, gpus=1)))
    stages.append(_label("star", stage_encode_passages(ctx, batch=32)))
    stages.append(_label("star", stage_encode_queries(ctx, w.dev_queries + w.test_queries, batch=32)))
    stages += [_label("star", s) for s in choose_search(ctx, w.dev_queries + w.test_queries, w.eval_topk,
                                                        serve_gpus, alternatives=False)]
    stages.append(_label("adore", stage_adore_train(ctx)))
    stages.append(_label("adore", stage_encode_queries(ctx, w.dev_queries + w.test_queries, batch=32)))
    stages += [_label("adore", s) for s in choose_search(ctx, w.dev_queries + w.test_queries, w.eval_topk,
                                                         serve_gpus, alternatives=False)]
    stages.append(stage_evaluate(ctx))
    if machine.disk is not None:
        written = 0.0
        for s in stages:
            if s.chosen:
                written += s.disk_bytes
                if written > machine.disk and s.fits and not any("free disk" in a for a in s.advice):
                    s.fits = False
                    s.advice.append(f"the outputs so far ({format_size(written)}) exceed the free disk "
                                    f"{format_size(machine.disk)}")
    return Plan(workload, machine, rates, stages)


def format_table(plan: Plan) -> str:
    """One row per stage (alternatives marked ``alt``), a total, then the notes and the rates' sources."""
    head = ("stage", "disk", "RAM", "GPU mem", "time", "fits")
    rows, notes = [], []
    for s in plan.stages:
        mark = ""
        lines = [a for a in s.advice] + [n for n in s.notes if s.chosen]
        if lines:
            notes.append((len(notes) + 1, s.title, lines))
            mark = f" [{len(notes)}]"
        rows.append((("  " if s.chosen else "  alt ") + s.title, format_size(s.disk_bytes),
                     format_size(s.ram_bytes), format_size(s.gpu_bytes) if s.gpu_bytes else "-",
                     format_seconds(s.seconds), s.status + mark))
    rows.append(("total (chosen rows)", format_size(plan.total_disk), format_size(plan.peak_ram) + " peak",
                 (format_size(plan.peak_gpu) + " peak") if plan.peak_gpu else "-", format_seconds(plan.total_seconds),
                 "yes" if plan.fits else "NO"))
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    m = plan.machine
    gpu = (f"{m.gpus} x {m.profile().name if m.gpu_type else m.profile().name + '?'} "
           f"{format_size(m.gpu_bytes)}" if m.gpus else "no GPU")
    out = [f"machine: {gpu}, {format_size(m.ram)} RAM, {m.cores} cores"
           + (f", {format_size(m.disk)} free disk" if m.disk is not None else "")
           + (f" ({'; '.join(plan.assumptions)})" if plan.assumptions else ""),
           f"workload: {plan.workload.data_type}, {plan.workload.passages:,} passages x {plan.workload.dim} "
           f"{plan.workload.embedding_dtype}, model {plan.workload.model.describe()}", ""]
    fmt = lambda r: "  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])  # noqa: E731
                              for i, c in enumerate(r))
    out.append(fmt(head))
    out.append("  ".join("-" * x for x in widths))
    out += [fmt(r) for r in rows[:-1]]
    out.append("  ".join("-" * x for x in widths))
    out.append(fmt(rows[-1]))
    if notes:
        out.append("")
        for i, title, lines in notes:
            out.append(f"[{i}] {title.strip()}:")
            out += [f"    - {ln}" for ln in lines]
    out.append("")
    out.append("rates:")
    out += [f"  {k:22s} {_rate_text(k, getattr(plan.rates, k)):>14s}  {v}" for k, v in plan.rates.sources.items()
            if plan.machine.gpus or not (k.startswith("gpu_") or k in ("pcie", "interconnect"))]
    return "\n".join(out)


def _rate_text(name: str, value: float) -> str:
    if "flops" in name:
        return f"{value / 1e12:.2f} TFLOP/s"
    if name in ("disk_write", "disk_read", "mem_bandwidth", "pcie", "interconnect", "gpu_bandwidth"):
        return f"{value / 1e9:.1f} GB/s"
    return f"{value:.3g}/s"


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    from .cli import int_at_least
    p = argparse.ArgumentParser(prog="python -m drhard.planner", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_type", choices=["passage", "doc"], default="passage")
    p.add_argument("--passages", type=int_at_least(1), default=None, help="collection size (default: MS MARCO's)")
    p.add_argument("--gpus", type=int_at_least(0), default=None, help="GPUs (default: this machine's)")
    p.add_argument("--gpu_memory", type=size_arg, default=None, help="per GPU, e.g. 80GB or 24GiB")
    p.add_argument("--gpu_type", default=None, help=f"one of {', '.join(GPU_PROFILES)}")
    p.add_argument("--ram", type=size_arg, default=None, help="e.g. 256GB (default: this machine's)")
    p.add_argument("--cores", type=int_at_least(1), default=None, help="default: this machine's")
    p.add_argument("--disk", type=size_arg, default=None, help="free disk for the outputs (not checked if unset)")
    p.add_argument("--dim", type=int_at_least(1), default=None)
    p.add_argument("--embedding_dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--model", default="roberta-base", help="roberta-base, tiny or LAYERSxHIDDEN[xINTERMEDIATE]")
    p.add_argument("--mean_tokens", type=float, default=None, help="mean tokens per passage at the encoding length")
    p.add_argument("--max_doc_length", type=int_at_least(2), default=None, help="encoding length of passages")
    p.add_argument("--train_queries", type=int_at_least(0), default=None)
    p.add_argument("--dev_queries", type=int_at_least(0), default=None)
    p.add_argument("--eval_batch_size", type=int_at_least(1), default=None, help="encoding batch per GPU")
    p.add_argument("--encode_fp16", action="store_true", help="plan encoding with --fp16")
    p.add_argument("--star_batch", type=int_at_least(1), default=None)
    p.add_argument("--star_steps", type=int_at_least(1), default=None)
    p.add_argument("--no_gradient_checkpointing", action="store_true")
    p.add_argument("--adore_batch", type=int_at_least(1), default=None)
    p.add_argument("--adore_epochs", type=int_at_least(1), default=None)
    p.add_argument("--bm25", action="store_true", help="include BM25 negatives and the BM25 warmup")
    p.add_argument("--index_factory", action="append", default=None,
                   help="compressed faiss index rows to show (repeat; default SQ8 and OPQ96,PQ96)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--calibrate", action="store_true", help="measure this machine first (seconds)")
    src.add_argument("--calibration", default=None, help="a calibration JSON written by --save_calibration")
    p.add_argument("--full", action="store_true", help="a longer, steadier calibration")
    p.add_argument("--calibrate_device", default="cpu", help="where to time the encoder (cpu, cuda, cuda:1)")
    p.add_argument("--tokenizer", default=None, help="vocabulary folder for timing tokenization")
    p.add_argument("--disk_path", default=None, help="folder whose disk speed is timed")
    p.add_argument("--save_calibration", default=None, help="write the measured calibration here (JSON)")
    p.add_argument("--json", default=None, help="write the plan as JSON to this file ('-': stdout, no table)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.gpu_type is not None:
        try:
            args.gpu_type = gpu_profile(args.gpu_type).name
        except ValueError as e:
            parser.error(f"argument --gpu_type: {e}")
    try:
        args.model = parse_model_shape(args.model)
        for f in args.index_factory or []:
            factory_bytes_per_vector(f, 768)
    except ValueError as e:
        parser.error(str(e))
    if args.save_calibration and not args.calibrate:
        parser.error("--save_calibration needs --calibrate")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    here = this_machine()
    machine = Machine(gpus=here.gpus if args.gpus is None else args.gpus,
                      gpu_memory=args.gpu_memory if args.gpu_memory is not None
                      else (here.gpu_memory if args.gpus is None and args.gpu_type is None else None),
                      gpu_type=args.gpu_type if args.gpu_type is not None
                      else (here.gpu_type if args.gpus is None else None),
                      ram=args.ram if args.ram is not None else here.ram, cores=here.cores, disk=args.disk)
    assumed = []
    if args.cores is not None:
        machine.cores = args.cores
    elif machine.gpus > here.gpus:  # planning a GPU server this machine is not: its cores are not ours
        machine.cores = CORES_PER_GPU * machine.gpus
        assumed.append(f"--cores not given: {CORES_PER_GPU} per GPU assumed")
    if args.ram is None:
        assumed.append("--ram not given: this machine's")
    overrides = {k: v for k, v in dict(passages=args.passages, dim=args.dim, mean_tokens=args.mean_tokens,
                                       doc_length=args.max_doc_length, train_queries=args.train_queries,
                                       dev_queries=args.dev_queries, encode_batch=args.eval_batch_size,
                                       star_batch=args.star_batch, star_steps=args.star_steps,
                                       adore_batch=args.adore_batch, adore_epochs=args.adore_epochs).items()
                 if v is not None}
    if args.index_factory:
        overrides["factories"] = tuple(args.index_factory)
    workload = workload_for(args.data_type, embedding_dtype=args.embedding_dtype, model=args.model,
                            encode_fp16=args.encode_fp16, gradient_checkpointing=not args.no_gradient_checkpointing,
                            bm25=args.bm25, warmup=args.bm25, **overrides)
    if args.passages is not None and args.data_type == "passage":
        workload.raw_bytes = int(workload.raw_bytes * args.passages / 8_841_823)
    calibration = None
    if args.calibration:
        calibration = Calibration.load(args.calibration)
    elif args.calibrate:
        print(f"calibrating on {args.calibrate_device} ({'full' if args.full else 'quick'})...", file=sys.stderr)
        calibration = calibrate(args.calibrate_device, quick=not args.full, tokenizer_path=args.tokenizer,
                                disk_path=args.disk_path)
        print(f"calibrated in {calibration.seconds:.1f} s" + "".join(f"; {n}" for n in calibration.notes),
              file=sys.stderr)
        if args.save_calibration:
            calibration.save(args.save_calibration)
    plan = plan_pipeline(workload, machine, calibration)
    plan.assumptions = assumed
    if args.json:
        text = json.dumps(plan.to_json(), indent=1, default=str)
        if args.json == "-":
            print(text)
            return 0
        tmp = f"{args.json}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.json)
    print(plan.table())
    return 0


def console() -> int:
    from .cli import run
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
