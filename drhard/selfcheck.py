"""Self-check of a machine: every CPU and GPU path of DRhard on tiny random data, as one pass/fail/skip table.

    python -m drhard.selfcheck                      # all checks + encode throughput of a tiny RoBERTa
    python -m drhard.selfcheck --roberta_base       # + throughput of a roberta-base-shaped random model
    python -m drhard.selfcheck --json selfcheck.json
    python -m drhard.selfcheck --only faiss_gpu_single,faiss_gpu_sharded

Run it first on a new cluster node; it is sized to finish within three minutes
on a GPU node, ``--roberta_base`` included (``--quick`` on a 2-core machine
without GPU: about 15 s of CPU time, most of it starting three Python
processes).  It prints the versions (python, torch, CUDA,
transformers, faiss and whether that faiss can use GPUs), the devices, one row
per check and the measured encode throughput.  A check that cannot run here
(no GPU, one GPU where two are needed, a faiss without GPU support) is
``skip`` with the reason; a check that ran and got a wrong answer or raised is
``fail`` with the reason.  Exit status 0 when nothing failed (skips are fine),
1 otherwise.

Each check compares a fast path against a slow obvious one (batched encode
against one row at a time, faiss against a brute-force sort, W processes
against one, GPU against CPU, mixed precision against fp32) with the library's
stable functions only: ``drhard.model``, ``drhard.losses``, ``drhard.optim``,
``drhard.index``, ``drhard.encode``, ``drhard.distributed``,
``drhard.exact_search``.  ``docs/distributed.md`` describes the checks.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from . import distributed as dd
from . import losses
from .cli import run
from .io import atomic_write, cut_ids

logger = logging.getLogger(__name__)

PASS, FAIL, SKIP = "pass", "fail", "skip"
VOCAB = 1000
HARD_NUM = 2
N_PASSAGES = 16
DDP_BATCH = 7  # shares of 4 and 3 rows on 2 ranks: the gathers see unequal shares
SPAWN_TIMEOUT_S = 240.0  # two fresh processes import torch and transformers, then one step
COLLECTIVE_TIMEOUT_S = 60.0


class Skip(Exception):
    """The check cannot run on this machine; the message says why."""


class CheckFailed(AssertionError):
    """The check ran and got a wrong answer; the message says which."""


@dataclass
class Result:
    name: str
    status: str
    seconds: float
    detail: str


@dataclass
class Options:
    quick: bool = False
    roberta_base: bool = False
    throughput: bool = True
    only: Optional[List[str]] = None


# --------------------------------------------------------------------------- what this machine has
def require(skip_reason: Optional[str]) -> None:
    """Skip the running check when ``skip_reason`` (one of the ``*_skip_reason`` below) says it cannot run here."""
    if skip_reason:
        raise Skip(skip_reason)


def cuda_skip_reason() -> Optional[str]:
    """None when a CUDA GPU is usable, else why not."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"no CUDA: torch {torch.__version__} is a CPU-only build"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return "no CUDA GPU visible: CUDA_VISIBLE_DEVICES is empty"
    return "no CUDA GPU visible (torch.cuda.is_available() is False: no GPU, or no driver)"


def gpus_skip_reason(n: int) -> Optional[str]:
    why = cuda_skip_reason()
    if why:
        return why
    have = torch.cuda.device_count()
    return None if have >= n else f"needs {n} GPUs, {have} visible"


def faiss_gpu_skip_reason(n: int = 1) -> Optional[str]:
    why = gpus_skip_reason(n)
    if why:
        return why
    try:
        import faiss
    except ImportError as e:
        return f"faiss is not importable ({e})"
    if not hasattr(faiss, "StandardGpuResources"):
        return f"faiss {getattr(faiss, '__version__', '?')} has no GPU support (install the gpu extra: faiss-gpu)"
    have = faiss.get_num_gpus()
    return None if have >= n else f"faiss sees {have} GPU(s), needs {n}"


def versions() -> Dict[str, object]:
    import transformers
    out: Dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": None,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "faiss": None,
        "faiss_gpu": False,
        "faiss_num_gpus": 0,
    }
    if torch.distributed.is_available() and torch.distributed.is_nccl_available() and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            out["nccl"] = ".".join(str(x) for x in torch.cuda.nccl.version())
    try:
        import faiss
        out["faiss"] = getattr(faiss, "__version__", "?")
        out["faiss_gpu"] = hasattr(faiss, "StandardGpuResources")
        out["faiss_num_gpus"] = int(faiss.get_num_gpus()) if out["faiss_gpu"] else 0
    except ImportError as e:
        out["faiss"] = f"not importable ({e})"
    return out


def devices() -> Dict[str, object]:
    from .device import usable_cpus
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2 ** 30, 1),
                         "capability": f"{p.major}.{p.minor}", "bf16": bool(torch.cuda.is_bf16_supported())})
    return {"cpu_cores": usable_cpus(), "cpu": platform.processor() or platform.machine(), "gpus": gpus,
            "cuda_skip_reason": cuda_skip_reason()}


# --------------------------------------------------------------------------- tiny inputs
def tiny_model(seed: int = 0):
    """A small random RobertaDot without dropout (a step is a deterministic function of its inputs).

    Initialised with std 0.2 rather than 0.02, so that different inputs give
    clearly different embeddings and gradients well above rounding.
    """
    from transformers import RobertaConfig

    from .model import RobertaDot
    config = RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=514, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, initializer_range=0.2)
    config.output_embedding_size = 32
    torch.manual_seed(seed)
    return RobertaDot(config, pooling="first", head=True)


def roberta_base_model(seed: int = 0):
    """A randomly initialised model of roberta-base's shape (125 M parameters, 768-d embeddings)."""
    from transformers import RobertaConfig

    from .model import RobertaDot
    config = RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                           intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    config.output_embedding_size = 768
    torch.manual_seed(seed)
    return RobertaDot(config, pooling="first", head=True)


class RandomTokens:
    """An in-memory stand-in for ``drhard.io.TokenCache``: rows ``<s> w ... w </s>`` of random lengths."""

    def __init__(self, n: int, min_len: int, max_len: int, vocab: int = VOCAB, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.prefix = f"random tokens (seed {seed})"
        self.lengths = rng.integers(min_len, max_len + 1, size=n).astype(np.int64)  # (N,)
        ids = rng.integers(3, vocab, size=(n, max_len)).astype(np.int32)  # (N, W)
        ids[np.arange(max_len)[None, :] >= self.lengths[:, None]] = 1  # padding
        ids[:, 0] = 0
        ids[np.arange(n), self.lengths - 1] = 2
        self.ids = ids

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def row(self, i: int) -> List[int]:
        return self.ids[i, : int(self.lengths[i])].tolist()


def star_batch(B: int, seed: int, hard_num: int = HARD_NUM, vocab: int = VOCAB, n_passages: int = N_PASSAGES,
               query_words: Sequence[int] = (2, 6), passage_words: Sequence[int] = (4, 12)) -> dict:
    """A global STAR batch of B queries over ``n_passages`` passages: each query has one or two relevant
    passages, one of them its positive, and ``hard_num`` hard negatives among the others.  Queries and passages
    are ``<s>``, a random number of words in the given (min, max) range, ``</s>``."""
    g = random.Random(seed)
    passages = [[0] + [g.randrange(3, vocab) for _ in range(g.randint(*passage_words))] + [2]
                for _ in range(n_passages)]
    queries = [[0] + [g.randrange(3, vocab) for _ in range(g.randint(*query_words))] + [2] for _ in range(B)]
    rels = [g.sample(range(n_passages), g.randint(1, 2)) for _ in range(B)]
    pos = [g.choice(r) for r in rels]
    negs = [g.sample([p for p in range(n_passages) if p not in r], hard_num) for r in rels]
    return {"passages": passages, "queries": queries, "rels": rels, "pos": pos, "negs": negs}


def _pad(rows: Sequence[Sequence[int]]):
    """Token ids and attention mask (n, L), padded with RoBERTa's pad id 1 (``dataset.pad_batch``)."""
    from .dataset import pad_batch
    return pad_batch(rows, 1)


def share_tensors(batch: dict, rows: slice, device: torch.device = torch.device("cpu")) -> dict:
    """Rows ``rows`` of a global batch, collated: token tensors, position masks (device scope), offsets (global)."""
    rels, pos = batch["rels"][rows], batch["pos"][rows]
    negs = [p for n in batch["negs"][rows] for p in n]
    out = {}
    out["query_ids"], out["query_mask"] = _pad(batch["queries"][rows])
    out["doc_ids"], out["doc_mask"] = _pad([batch["passages"][p] for p in pos])
    out["neg_ids"], out["neg_mask"] = _pad([batch["passages"][p] for p in negs])
    out["rel_offsets"] = losses.relevant_offsets(rels)  # (b, R)
    out["pos_offsets"] = torch.tensor(pos, dtype=torch.long)  # (b,)
    out["neg_offsets"] = torch.tensor(negs, dtype=torch.long)  # (b*h,)
    out["rel_pair_mask"] = losses.offset_pair_mask(out["rel_offsets"], out["pos_offsets"])  # (b, b)
    out["neg_pair_mask"] = losses.offset_pair_mask(out["rel_offsets"], out["neg_offsets"])  # (b, b*h)
    return {k: v.to(device) for k, v in out.items()}


def star_forward_loss(model, t: dict, scope: str = "device") -> torch.Tensor:
    """The STAR loss of a collated batch, three forward calls as the trainer makes them."""
    q = model(t["query_ids"], t["query_mask"])  # (b, D)
    d = model(t["doc_ids"], t["doc_mask"])  # (b, D)
    n = model(t["neg_ids"], t["neg_mask"])  # (b*h, D)
    return losses.training_loss("star", q, d, n, t, scope=scope)


def _grads(model) -> Dict[str, np.ndarray]:
    return {n: p.grad.detach().double().cpu().numpy() for n, p in model.named_parameters() if p.grad is not None}


def compare_grads(got: Dict[str, np.ndarray], ref: Dict[str, np.ndarray], tol: float, what: str) -> float:
    """Worst error of ``got`` against ``ref``, each parameter relative to its largest reference gradient.

    A parameter whose gradient is (near) zero in exact arithmetic (attention key
    biases: softmax ignores a common shift) is measured against 1e-2 of the
    largest gradient of the model instead, so rounding noise there is not an error.
    Raises :class:`CheckFailed` naming the parameter when the error exceeds ``tol``.
    """
    if sorted(got) != sorted(ref):
        raise CheckFailed(f"{what}: gradients of {sorted(set(ref) ^ set(got))[:3]} missing on one side")
    top = max(float(np.abs(g).max()) for g in ref.values())
    if top < 1e-4:
        raise CheckFailed(f"{what}: reference gradients are all below 1e-4: the comparison would prove nothing")
    worst = 0.0
    for name, r in ref.items():
        err = float(np.abs(got[name] - r).max()) / max(float(np.abs(r).max()), 1e-2 * top)
        if not np.isfinite(err) or err > tol:
            raise CheckFailed(f"{what}: gradient of {name} differs from one process by {err:.2e} (relative; "
                              f"tolerance {tol:.0e})")
        worst = max(worst, err)
    return worst


def same_topk(ref_scores: np.ndarray, ref_ids: np.ndarray, scores: np.ndarray, ids: np.ndarray, atol: float,
              what: str) -> None:
    """Scores equal within ``atol``; ids equal at every place whose reference score is not within ``atol``
    of a neighbour's (near-ties may swap).  Raises :class:`CheckFailed`."""
    if scores.shape != ref_scores.shape or ids.shape != ref_ids.shape:
        raise CheckFailed(f"{what}: result shape {ids.shape}, expected {ref_ids.shape}")
    diff = float(np.abs(scores.astype(np.float64) - ref_scores).max()) if scores.size else 0.0
    if not diff <= atol:
        raise CheckFailed(f"{what}: scores differ by {diff:.2e} (tolerance {atol:.0e})")
    gaps = np.full(ref_scores.shape, np.inf)
    step = np.abs(np.diff(ref_scores.astype(np.float64), axis=1))  # (Q, k-1)
    gaps[:, 1:] = step
    gaps[:, :-1] = np.minimum(gaps[:, :-1], step)
    clear = gaps > atol
    wrong = int(((ids != ref_ids) & clear).sum())
    if wrong:
        raise CheckFailed(f"{what}: {wrong} of {int(clear.sum())} untied result ids differ")


def brute_force_topk(x: np.ndarray, q: np.ndarray, k: int):
    """Exact top-k inner products in float64 by a full sort (ties: lower row first)."""
    s = q.astype(np.float64) @ x.astype(np.float64).T  # (Q, N)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]  # (Q, k)
    return np.take_along_axis(s, order, 1), order.astype(np.int64)


def _rng_matrix(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


# --------------------------------------------------------------------------- checks
def check_cpu_encode(opts: Options) -> str:
    from .encode import encode_cache
    model = tiny_model().eval()
    cache = RandomTokens(48, 3, 60, seed=1)
    max_len = 40
    got = encode_cache(model, cache, max_len, batch_size=16, device=torch.device("cpu"), progress=False,
                       multi_gpu=False)  # (N, D) length-sorted batches
    with torch.inference_mode():
        ref = np.stack([model.encode(torch.tensor([cut_ids(cache.row(i), max_len)]),
                                     torch.ones(1, len(cut_ids(cache.row(i), max_len)), dtype=torch.long))[0].numpy()
                        for i in range(len(cache))])  # (N, D) one row at a time, no padding
    diff = float(np.abs(got - ref).max())
    if not diff <= 1e-4:
        raise CheckFailed(f"batched encode differs from one row at a time by {diff:.2e}")
    if float(np.abs(ref - ref[0]).max()) < 1e-2:
        raise CheckFailed("every row encodes to the same vector: the comparison would prove nothing")
    return f"{len(cache)} rows, batched (padded, length-sorted) == one row at a time: max |diff| {diff:.1e}"


def check_cpu_faiss(opts: Options) -> str:
    from .index import build_index, search
    x, q, k = _rng_matrix(3001, 64, 2), _rng_matrix(40, 64, 3), 50
    index = build_index(x)
    s, i = search(index, q, k, progress=False)
    ref_s, ref_i = brute_force_topk(x, q, k)
    same_topk(ref_s, ref_i, s, i, 1e-3, "faiss IndexFlatIP on CPU")
    # fewer rows than k: faiss fills with id -1
    s2, i2 = search(build_index(x[:5]), q[:3], 8, progress=False)
    if not ((i2[:, 5:] == -1).all() and sorted(i2[0, :5].tolist()) == list(range(5))):
        raise CheckFailed(f"an index of 5 rows searched for 8 gave ids {i2[0].tolist()}")
    return f"{x.shape[0]} x {x.shape[1]}, {q.shape[0]} queries, top {k}: == brute-force sort"


def _ddp_star_worker(B: int, seed: int) -> dict:
    """One rank of the DDP equivalence checks: global-scope STAR loss and gradients of this rank's share."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    device = dd.init_distributed()  # already joined by run_local_ranks: this rank's device
    if device.type == "cpu":
        torch.set_num_threads(1)
    model = tiny_model().to(device).train()
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    rows = dd.shard_range(B, dd.rank(), dd.world_size())
    t = share_tensors(star_batch(B, seed), rows, device)
    loss = star_forward_loss(ddp, t, scope="global")
    loss.backward()
    return {"loss": float(loss.item()), "grads": _grads(model), "rows": (rows.start, rows.stop),
            "backend": torch.distributed.get_backend(), "device": str(device)}


def _ddp_equivalence(device_preference: str, tol: float) -> str:
    B, seed = DDP_BATCH, 5
    ranks = dd.run_local_ranks(_ddp_star_worker, 2, (B, seed), device_preference=device_preference,
                               timeout_s=SPAWN_TIMEOUT_S, collective_timeout_s=COLLECTIVE_TIMEOUT_S)
    ref_model = tiny_model().train()
    ref_loss = star_forward_loss(ref_model, share_tensors(star_batch(B, seed), slice(0, B)), scope="device")
    ref_loss.backward()
    ref = _grads(ref_model)
    mean = float(np.mean([r["loss"] for r in ranks]))
    if not abs(mean - ref_loss.item()) <= tol * max(1.0, abs(ref_loss.item())):
        raise CheckFailed(f"mean of the ranks' losses {mean:.6f} != one process {ref_loss.item():.6f}")
    worst = max(compare_grads(r["grads"], ref, tol, f"rank {k} ({r['device']})") for k, r in enumerate(ranks))
    shares = "+".join(str(b - a) for a, b in (r["rows"] for r in ranks))
    return (f"2 ranks ({ranks[0]['backend']}, {ranks[0]['device']}/{ranks[1]['device']}, shares {shares}): "
            f"global-scope STAR loss {mean:.5f} == one process; gradients max rel. err {worst:.1e}")


def check_gloo_ddp(opts: Options) -> str:
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        raise Skip("this torch build has no torch.distributed gloo backend")
    return _ddp_equivalence("cpu", 1e-4)


def _encode_on_cuda(precision: str) -> str:
    from .encode import encode_cache
    require(cuda_skip_reason())
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise Skip(f"{torch.cuda.get_device_name(0)} has no bf16 support")
    model = tiny_model().eval()
    cache = RandomTokens(200, 3, 120, seed=4)
    ref = encode_cache(model, cache, 100, 64, torch.device("cpu"), progress=False, multi_gpu=False)  # (N, D)
    got = encode_cache(model, cache, 100, 64, torch.device("cuda", 0), fp16=precision == "fp16",
                       bf16=precision == "bf16", progress=False, multi_gpu=False)  # (N, D)
    diff = float(np.abs(got - ref).max())
    cos = float(((got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))).min())
    tol = {"fp32": 1e-3, "fp16": 3e-2, "bf16": 1e-1}[precision]
    if not (diff <= tol and cos >= 0.995):
        raise CheckFailed(f"{precision} GPU embeddings differ from fp32 CPU ones: max |diff| {diff:.2e} "
                          f"(tolerance {tol:.0e}), min cosine {cos:.4f}")
    return f"{len(cache)} rows on cuda:0 vs fp32 CPU: max |diff| {diff:.1e}, min cosine {cos:.5f}"


def check_cuda_encode_fp32(opts: Options) -> str:
    return _encode_on_cuda("fp32")


def check_cuda_encode_fp16(opts: Options) -> str:
    return _encode_on_cuda("fp16")


def check_cuda_encode_bf16(opts: Options) -> str:
    return _encode_on_cuda("bf16")


def star_step(device: torch.device, precision: str, seed: int = 7, max_tries: int = 24) -> dict:
    """One STAR training step as the trainer makes it under ``--fp16`` / ``--bf16`` (or fp32).

    Forward under autocast (``drhard.device.autocast``), the loss with autocast
    as it is (the losses score in fp32 themselves); fp16: a GradScaler (initial
    scale 2**16, as the Trainer's) scales the loss, the gradients are unscaled
    before clipping, and the scaler steps.  A scale too large for the first
    gradients makes them inf: the scaler skips that step and halves the scale,
    as in training; the step is then repeated on the same batch (a skipped step
    changes no weight), at most ``max_tries`` times.  LAMB as STAR uses it.

    Returns the loss, the fp32 CPU loss of the same batch, the finiteness of the
    unscaled gradients of the step taken, the weight change, and the number of
    steps the scaler skipped (``taken`` False when it skipped every try).
    """
    from .device import autocast
    from .optim import Lamb, param_groups
    model = tiny_model(seed).train()
    batch = star_batch(8, seed)
    with torch.no_grad():
        ref_loss = float(star_forward_loss(copy.deepcopy(model), share_tensors(batch, slice(0, 8))).item())
    model.to(device)
    t = share_tensors(batch, slice(0, 8), device)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = Lamb(param_groups(model, 0.01), lr=1e-3, eps=1e-8)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    skipped, taken = 0, False
    for _ in range(max_tries):
        opt.zero_grad(set_to_none=True)
        with autocast(device, fp16=precision == "fp16", bf16=precision == "bf16"):
            loss = star_forward_loss(model, t)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grads_finite = all(bool(torch.isfinite(g).all()) for g in grads)
        grad_max = max(float(g.abs().max()) for g in grads)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if precision == "fp16" and scaler.get_scale() < scale:
            skipped += 1
            continue
        taken = True
        break
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters())
    weights_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return {"loss": float(loss.item()), "ref_loss": ref_loss, "grads_finite": grads_finite, "grad_max": grad_max,
            "moved": moved, "weights_finite": weights_finite, "skipped": skipped, "taken": taken,
            "scale": scaler.get_scale() if precision == "fp16" else None}


def _star_step_on_cuda(precision: str) -> str:
    require(cuda_skip_reason())
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise Skip(f"{torch.cuda.get_device_name(0)} has no bf16 support")
    r = star_step(torch.device("cuda", 0), precision)
    tol = {"fp16": 1e-2, "bf16": 2e-2}[precision]
    if not r["taken"]:
        raise CheckFailed(f"the fp16 GradScaler skipped all {r['skipped']} tries (inf/NaN gradients at every "
                          f"scale down to {r['scale']})")
    if not np.isfinite(r["loss"]):
        raise CheckFailed(f"{precision} STAR loss is {r['loss']}")
    if not abs(r["loss"] - r["ref_loss"]) <= tol * max(1.0, abs(r["ref_loss"])):
        raise CheckFailed(f"{precision} STAR loss {r['loss']:.5f} vs fp32 CPU {r['ref_loss']:.5f} "
                          f"(tolerance {tol:.0e} relative)")
    if not r["grads_finite"] or not r["grad_max"] > 0:
        raise CheckFailed(f"{precision} gradients are not finite, or all zero (max {r['grad_max']:.2e})")
    if not (r["moved"] > 0 and r["weights_finite"]):
        raise CheckFailed(f"the optimizer step did not move the weights (max change {r['moved']:.2e}) "
                          "or made them non-finite")
    scaler = (f"; GradScaler skipped {r['skipped']} overflowing step(s), scale now {r['scale']:g}"
              if precision == "fp16" else "")
    return (f"loss {r['loss']:.5f} (fp32 CPU {r['ref_loss']:.5f}), gradients finite, LAMB step moved "
            f"weights by up to {r['moved']:.1e}{scaler}")


def check_star_step_fp16(opts: Options) -> str:
    return _star_step_on_cuda("fp16")


def check_star_step_bf16(opts: Options) -> str:
    return _star_step_on_cuda("bf16")


def _faiss_gpu_vs_cpu(gpus: List[int], n: int) -> str:
    import faiss

    from .index import build_index, search
    x, q, k = _rng_matrix(n, 64, 6), _rng_matrix(64, 64, 7), 50
    index = build_index(x, gpus=gpus)
    if isinstance(index, faiss.IndexFlatIP):
        raise CheckFailed(f"build_index(gpus={gpus}) fell back to the CPU index (see the log: --verbose)")
    s, i = search(index, q, k, progress=False)
    ref_s, ref_i = brute_force_topk(x, q, k)
    same_topk(ref_s, ref_i, s, i, 1e-3, f"faiss on GPU(s) {gpus}")
    return f"{type(index).__name__} on GPU(s) {gpus}: {n} x 64, top {k} == brute force (CPU)"


def check_faiss_gpu_single(opts: Options) -> str:
    require(faiss_gpu_skip_reason(1))
    return _faiss_gpu_vs_cpu([0], 4000)


def check_faiss_gpu_sharded(opts: Options) -> str:
    require(faiss_gpu_skip_reason(2))
    return _faiss_gpu_vs_cpu([0, 1], 4001)  # odd: the shards hold 2001 and 2000 rows


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def check_faiss_gpu_fallback(opts: Options) -> str:
    """An index too large for the GPU's free memory is built on the CPU, with a warning, with the same results."""
    require(faiss_gpu_skip_reason(1))
    import faiss
    from unittest import mock

    from . import index as index_mod
    x, q, k = _rng_matrix(3000, 64, 8), _rng_matrix(32, 64, 9), 20
    records = _Records()
    index_logger = logging.getLogger(index_mod.__name__)
    index_logger.addHandler(records)
    try:
        with mock.patch.object(index_mod, "gpu_free_bytes", lambda gpu: 1 << 20):  # "1 MiB free"
            index = index_mod.build_index(x, gpus=[0])
    finally:
        index_logger.removeHandler(records)
    if not isinstance(index, faiss.IndexFlatIP):
        raise CheckFailed(f"with 1 MiB free on GPU 0 the index was still put there ({type(index).__name__})")
    if not any("does not fit" in m for m in records.messages):
        raise CheckFailed(f"no 'does not fit' warning was logged (got {records.messages})")
    s, i = index_mod.search(index, q, k, progress=False)
    ref_s, ref_i = brute_force_topk(x, q, k)
    same_topk(ref_s, ref_i, s, i, 1e-3, "CPU fallback index")
    return "GPU 0 reported 1 MiB free: CPU IndexFlatIP with a warning, results == brute force"


def adore_step(device: torch.device, gpus: Optional[List[int]], seed: int = 11) -> dict:
    """One ADORE step: passages frozen in a faiss index (on ``gpus``), queries retrieved, loss on ``device``.

    Returns the retrieved lists of the ``gpus`` index and of a CPU index, the
    loss and gradients on ``device`` and on the CPU, and the weight change of an
    AdamW step on ``device``.
    """
    import faiss

    from .encode import encode_cache
    from .index import build_index, search
    B, k, metric_cut = 8, 20, 20
    model = tiny_model(seed).train()
    cpu_model = copy.deepcopy(model)
    passages = RandomTokens(300, 5, 40, seed=seed)
    pemb = encode_cache(copy.deepcopy(model), passages, 40, 64, device, progress=False, multi_gpu=False)  # (P, D)
    index = build_index(pemb, gpus=gpus)
    on_cpu = isinstance(index, faiss.IndexFlatIP)
    g = random.Random(seed)
    queries = [[0] + [g.randrange(3, VOCAB) for _ in range(g.randint(2, 8))] + [2] for _ in range(B)]
    rels = [g.sample(range(len(passages)), g.randint(1, 2)) for _ in range(B)]
    ids, mask = _pad(queries)

    def loss_of(m, dev, retrieved):
        q = m(ids.to(dev), mask.to(dev))  # (B, D)
        cand_ids, labels, valid = losses.build_adore_lists(retrieved, rels)
        cand = losses.gather_candidate_embeddings(pemb, cand_ids, valid)  # (B, M, D)
        return q, losses.adore_loss(q, cand.to(dev), torch.from_numpy(labels).to(dev),
                                    torch.from_numpy(valid).to(dev), metric_cut)

    model.to(device)
    q = model(ids.to(device), mask.to(device)).detach().float().cpu().numpy()  # (B, D)
    s_gpu, i_gpu = search(index, q, k, progress=False)
    s_cpu, i_cpu = search(build_index(pemb), q, k, progress=False)
    _, loss = loss_of(model, device, i_gpu)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss.backward()
    grads = _grads(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters())
    _, ref_loss = loss_of(cpu_model, torch.device("cpu"), i_gpu)
    ref_loss.backward()
    return {"on_cpu": on_cpu, "index": type(index).__name__, "s_gpu": s_gpu, "i_gpu": i_gpu, "s_cpu": s_cpu,
            "i_cpu": i_cpu, "loss": float(loss.item()), "ref_loss": float(ref_loss.item()), "grads": grads,
            "ref_grads": _grads(cpu_model), "moved": moved}


def check_adore_gpu_index(opts: Options) -> str:
    require(faiss_gpu_skip_reason(1))
    r = adore_step(torch.device("cuda", 0), [0])
    if r["on_cpu"]:
        raise CheckFailed("build_index(gpus=[0]) fell back to the CPU (see the log: --verbose)")
    same_topk(r["s_cpu"], r["i_cpu"], r["s_gpu"], r["i_gpu"], 1e-3, "ADORE retrieval, GPU index vs CPU index")
    if not (np.isfinite(r["loss"]) and abs(r["loss"] - r["ref_loss"]) <= 1e-4 * max(1.0, abs(r["ref_loss"]))):
        raise CheckFailed(f"ADORE loss on GPU {r['loss']:.6f} vs CPU {r['ref_loss']:.6f}")
    worst = compare_grads(r["grads"], r["ref_grads"], 1e-3, "ADORE step on GPU vs CPU")
    if not r["moved"] > 0:
        raise CheckFailed("the AdamW step did not move the weights")
    return (f"{r['index']} top 20 == CPU index; loss {r['loss']:.5f} == CPU, gradients max rel. err "
            f"{worst:.1e}; AdamW step taken")


def check_nccl_ddp(opts: Options) -> str:
    require(gpus_skip_reason(2))
    if not torch.distributed.is_nccl_available():
        raise Skip("this torch build has no NCCL backend")
    return _ddp_equivalence("cuda", 1e-3)


def check_torch_flat_index_gpu(opts: Options) -> str:
    require(cuda_skip_reason())
    from .exact_search import TorchFlatIndex
    x, q, k = _rng_matrix(5000, 64, 12), _rng_matrix(50, 64, 13), 30
    ref_s, ref_i = brute_force_topk(x, q, k)
    out = []
    for dtype in (torch.float32, torch.float16):
        cpu = TorchFlatIndex(x, device="cpu", dtype=dtype, chunk_rows=1024)
        gpu = TorchFlatIndex(x, device="cuda:0", dtype=dtype, chunk_rows=1024)
        qg = torch.from_numpy(q).to("cuda:0")  # (Q, D) already on the index's device
        s_gpu, i_gpu = gpu.search(qg, k)
        if s_gpu.device.type != "cuda" or i_gpu.device.type != "cuda":
            raise CheckFailed(f"results of a CUDA index came back on {s_gpu.device}")
        s_cpu, i_cpu = cpu.search(q, k)
        name = "fp32" if dtype == torch.float32 else "fp16"
        same_topk(s_cpu.numpy(), i_cpu.numpy(), s_gpu.cpu().numpy(), i_gpu.cpu().numpy(), 1e-3,
                  f"TorchFlatIndex {name} storage, cuda vs cpu")
        if dtype == torch.float32:
            same_topk(ref_s, ref_i, s_gpu.cpu().numpy(), i_gpu.cpu().numpy(), 1e-3, "TorchFlatIndex fp32 on cuda")
        out.append(name)
    s, i = TorchFlatIndex(x[:7], device="cuda:0").search(q[:2], 10)  # fewer rows than k: fillers
    if not (i[:, 7:] == -1).all():
        raise CheckFailed(f"7 rows searched for 10 on cuda gave ids {i[0].tolist()}")
    return f"{x.shape[0]} x 64, top {k}: cuda == cpu ({' and '.join(out)} storage), fp32 == brute force"


CHECKS: List[tuple] = [
    ("cpu_encode", check_cpu_encode, "encode_cache on CPU == one row at a time"),
    ("cpu_faiss_exact", check_cpu_faiss, "faiss IndexFlatIP on CPU == brute-force sort"),
    ("gloo_ddp", check_gloo_ddp, "2 gloo processes under DDP == one process (global-scope STAR)"),
    ("cuda_encode_fp32", check_cuda_encode_fp32, "encode on GPU, fp32 == CPU"),
    ("cuda_encode_fp16", check_cuda_encode_fp16, "encode on GPU under fp16 autocast ~ fp32 CPU"),
    ("cuda_encode_bf16", check_cuda_encode_bf16, "encode on GPU under bf16 autocast ~ fp32 CPU"),
    ("star_step_fp16", check_star_step_fp16, "STAR step on GPU, fp16 autocast + GradScaler + LAMB"),
    ("star_step_bf16", check_star_step_bf16, "STAR step on GPU, bf16 autocast + LAMB"),
    ("faiss_gpu_single", check_faiss_gpu_single, "faiss index on one GPU == brute force"),
    ("faiss_gpu_sharded", check_faiss_gpu_sharded, "faiss index sharded over two GPUs == brute force"),
    ("faiss_gpu_fallback", check_faiss_gpu_fallback, "index too large for the GPU: CPU index, same results"),
    ("adore_gpu_index", check_adore_gpu_index, "ADORE step with the faiss index on a GPU == CPU"),
    ("nccl_ddp", check_nccl_ddp, "2 NCCL processes (2 GPUs) under DDP == one process"),
    ("torch_flat_index_gpu", check_torch_flat_index_gpu, "TorchFlatIndex on cuda == on cpu"),
]
CHECK_NAMES = [c[0] for c in CHECKS]


def run_check(name: str, fn: Callable[[Options], str], opts: Options) -> Result:
    """Run one check: pass with what it compared, skip with why, fail with what went wrong (never raises)."""
    start = time.perf_counter()
    try:
        detail, status = fn(opts), PASS
    except Skip as e:
        detail, status = str(e), SKIP
    except Exception as e:  # noqa: BLE001 - every failure becomes a row of the table
        detail, status = (str(e) if isinstance(e, CheckFailed) else f"{type(e).__name__}: {e}"), FAIL
        logger.info("check %s failed", name, exc_info=True)
        extra = getattr(e, "details", "")
        if extra:
            logger.info("%s", extra)
    finally:
        if torch.cuda.is_available():
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    return Result(name, status, round(time.perf_counter() - start, 2), " ".join(str(detail).split()))


# --------------------------------------------------------------------------- throughput
def measure_encode(model_name: str, device: torch.device, precision: str, quick: bool) -> dict:
    """Passages/s and tokens/s of ``drhard.encode.encode_cache`` on random passages of 64-128 tokens.

    One warm-up batch (kernels, allocator) is not timed; it also sets the number
    of rows to time (about 1 s of work in ``quick`` mode, 3 s otherwise).
    Tokens are real tokens (padding excluded).
    """
    from .encode import encode_cache
    model = tiny_model() if model_name == "tiny" else roberta_base_model()
    max_len, batch = 128, (256 if device.type == "cuda" else 32)
    kw = dict(fp16=precision == "fp16", bf16=precision == "bf16", progress=False, multi_gpu=False)
    warm = RandomTokens(batch, 64, max_len, vocab=model.config.vocab_size, seed=20)
    t0 = time.perf_counter()
    encode_cache(model, warm, max_len, batch, device, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_row = (time.perf_counter() - t0) / batch
    target = 1.0 if quick else 3.0
    cap = 65536 if device.type == "cuda" else 8192
    n = int(min(cap, max(batch, target / max(per_row, 1e-7))))
    n = max(batch, n // batch * batch)
    cache = RandomTokens(n, 64, max_len, vocab=model.config.vocab_size, seed=21)
    t0 = time.perf_counter()
    encode_cache(model, cache, max_len, batch, device, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    tokens = int(np.minimum(cache.lengths, max_len).sum())
    del model
    return {"model": model_name, "device": str(device), "precision": precision, "rows": n, "batch": batch,
            "seconds": round(seconds, 3), "passages_per_s": round(n / seconds, 1),
            "tokens_per_s": round(tokens / seconds, 1)}


def throughput(opts: Options) -> List[dict]:
    """Encode throughput rows: on a GPU fp32 and fp16 on GPU 0; without one fp32 on the CPU."""
    models = ["tiny"] + (["roberta-base"] if opts.roberta_base else [])
    if torch.cuda.is_available():
        plan = [(m, torch.device("cuda", 0), p) for m in models for p in ("fp32", "fp16")]
    else:
        plan = [(m, torch.device("cpu"), "fp32") for m in models]
    rows = []
    for m, dev, p in plan:
        try:
            rows.append(measure_encode(m, dev, p, opts.quick))
        except Exception as e:  # noqa: BLE001 - a throughput that cannot be measured is reported, not fatal
            rows.append({"model": m, "device": str(dev), "precision": p, "error": f"{type(e).__name__}: {e}"})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- report
def _fmt_versions(v: dict, devs: dict) -> List[str]:
    faiss_line = str(v["faiss"])
    if v["faiss_gpu"]:
        faiss_line += f" (GPU support: yes, {v['faiss_num_gpus']} GPU(s) visible to faiss)"
    elif v["faiss"] and not str(v["faiss"]).startswith("not importable"):
        faiss_line += " (GPU support: no, CPU only)"
    lines = [f"python        {v['python']}",
             f"torch         {v['torch']} (CUDA {v['cuda'] or 'none'}, cuDNN {v['cudnn'] or 'none'}, "
             f"NCCL {v['nccl'] or 'none'})",
             f"transformers  {v['transformers']}",
             f"faiss         {faiss_line}",
             f"numpy         {v['numpy']}",
             f"cpu           {devs['cpu_cores']} usable core(s) ({devs['cpu']})"]
    if devs["gpus"]:
        for g in devs["gpus"]:
            lines.append(f"gpu {g['index']}         {g['name']}, {g['memory_gib']} GiB, compute {g['capability']}")
    else:
        lines.append(f"gpu           none ({devs['cuda_skip_reason']})")
    return lines


def format_report(v: dict, devs: dict, results: List[Result], tput: List[dict]) -> str:
    lines = ["drhard self-check", ""] + _fmt_versions(v, devs) + [""]
    width = max([len(r.name) for r in results] + [5])
    lines.append(f"{'check':<{width}}  result  {'time':>6}  detail")
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.status:<6}  {r.seconds:>5.1f}s  {r.detail}")
    if tput:
        lines += ["", "encode throughput (random passages of 64-128 tokens, max_len 128)",
                  f"{'model':<13} {'device':<7} {'precision':<9} {'passages/s':>11} {'tokens/s':>11}  rows"]
        for t in tput:
            if "error" in t:
                lines.append(f"{t['model']:<13} {t['device']:<7} {t['precision']:<9} failed: {t['error']}")
            else:
                lines.append(f"{t['model']:<13} {t['device']:<7} {t['precision']:<9} {t['passages_per_s']:>11.1f} "
                             f"{t['tokens_per_s']:>11.0f}  {t['rows']} in {t['seconds']:.2f}s")
    counts = {s: sum(r.status == s for r in results) for s in (PASS, SKIP, FAIL)}
    lines += ["", f"{len(results)} checks: {counts[PASS]} passed, {counts[SKIP]} skipped, {counts[FAIL]} failed"]
    return "\n".join(lines)


def run_selfcheck(opts: Options) -> dict:
    """Every selected check and the throughput; the report as a dict (what ``--json`` writes)."""
    start = time.perf_counter()
    chosen = [c for c in CHECKS if opts.only is None or c[0] in opts.only]
    results = [run_check(name, fn, opts) for name, fn, _ in chosen]
    tput = throughput(opts) if opts.throughput else []
    return {"ok": not any(r.status == FAIL for r in results), "versions": versions(), "devices": devices(),
            "checks": [asdict(r) for r in results], "throughput": tput,
            "seconds": round(time.perf_counter() - start, 1)}


def _names(value: str) -> List[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECK_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown check(s) {unknown or [value]}; choose from {','.join(CHECK_NAMES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m drhard.selfcheck", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="checks:\n" + "\n".join(f"  {n:<22} {d}" for n, _, d in CHECKS))
    p.add_argument("--json", metavar="PATH", help="also write the report (versions, devices, table, throughput) "
                                                  "as JSON to PATH")
    p.add_argument("--quick", action="store_true", help="shorter throughput measurements (about 1 s each)")
    p.add_argument("--roberta_base", action="store_true",
                   help="also measure the encode throughput of a roberta-base-shaped random model")
    p.add_argument("--no_throughput", action="store_true", help="run the checks only")
    p.add_argument("--only", type=_names, metavar="NAMES", help="comma-separated checks to run (default: all)")
    p.add_argument("--verbose", action="store_true", help="log at INFO level (and tracebacks of failed checks)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = Options(quick=args.quick, roberta_base=args.roberta_base, throughput=not args.no_throughput,
                   only=args.only)
    report = run_selfcheck(opts)
    results = [Result(**r) for r in report["checks"]]
    print(format_report(report["versions"], report["devices"], results, report["throughput"]), flush=True)
    if args.json:
        with atomic_write(args.json) as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return 0 if report["ok"] else 1


def console() -> int:
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
