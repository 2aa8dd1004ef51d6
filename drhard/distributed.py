"""Data-parallel training and inference on ``torch.distributed`` (torchrun), and the same code in one process.

Launch with ``torchrun --nproc_per_node N script.py ...``: torchrun starts N
processes and gives each ``RANK`` (0..WORLD_SIZE-1 over all machines),
``WORLD_SIZE``, ``LOCAL_RANK`` (0..LOCAL_WORLD_SIZE-1 on this machine),
``LOCAL_WORLD_SIZE`` and the rendezvous address ``MASTER_ADDR``/``MASTER_PORT``.
:func:`init_distributed` reads them, picks this process's device (GPU
``LOCAL_RANK`` on a GPU machine, else the CPU) and joins the process group:
NCCL for GPUs, gloo for CPUs.  Without torchrun (no ``WORLD_SIZE``, or 1) it
joins nothing and everything below is the identity of a single process:
``rank() == 0``, ``world_size() == 1``, gathers return their input, sums return
their input.  So one code path serves one process and many.

Pieces:

* who am I: :func:`rank`, :func:`world_size`, :func:`local_rank`,
  :func:`is_distributed`, :func:`is_main_process` (global rank 0: logging,
  saving), :func:`is_local_main_process` (rank 0 of this machine);
* synchronisation: :func:`barrier`, :func:`broadcast_object`;
* reductions (no gradient): :func:`all_reduce_sum` (loss normalisers, logged
  sums), :func:`all_reduce_any` (``skip this non-finite step`` agreed by every
  rank, so no rank waits in a collective the others skipped);
* gathers: :func:`all_gather_with_grad` (differentiable; every rank may hold a
  different number of rows), :func:`all_gather_no_grad`,
  :func:`all_gather_objects`;
* sharding: :func:`shard_range` (this rank's contiguous slice of n rows) and
  :class:`ShardedBatchSampler` (this rank's share of each global batch);
* without torchrun: :func:`run_local_ranks` starts W processes on this machine
  with torchrun's variables set and returns what a function returned in each
  (the self-check, the DDP benchmark).

Every collective here must be called by every rank, in the same order (that is
what a collective is); each function says so where it is not obvious.
"""
from __future__ import annotations

import datetime
import logging
import os
import queue
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .errors import DrhardError

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedError", "DistEnv", "read_env", "select_device", "init_distributed", "destroy_distributed",
    "rank", "world_size", "local_rank", "is_distributed", "is_main_process", "is_local_main_process",
    "barrier", "broadcast_object", "all_reduce_sum", "all_reduce_any",
    "gather_sizes", "all_gather_with_grad", "all_gather_no_grad", "all_gather_objects",
    "shard_range", "ShardedBatchSampler", "free_port", "run_local_ranks",
]

DEVICE_PREFERENCES = ("auto", "cuda", "cpu")
DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(DrhardError, RuntimeError):
    """A launch the user can fix: inconsistent torchrun variables, more processes than GPUs."""

    details: str = ""  # a failed rank's traceback (run_local_ranks)


# --------------------------------------------------------------------------- environment
@dataclass(frozen=True)
class DistEnv:
    """torchrun's variables for this process (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: Optional[str] = None
    master_port: Optional[int] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(env: Mapping[str, str], name: str, default: Optional[int]) -> Optional[int]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def read_env(env: Optional[Mapping[str, str]] = None) -> DistEnv:
    """torchrun's variables from ``env`` (default ``os.environ``), checked for consistency.

    No ``WORLD_SIZE`` (or 1) is a single process.  With ``WORLD_SIZE > 1``,
    ``RANK`` must be in ``0..WORLD_SIZE-1`` and ``MASTER_ADDR``/``MASTER_PORT``
    must be set; ``LOCAL_RANK`` defaults to ``RANK`` and ``LOCAL_WORLD_SIZE``
    to ``WORLD_SIZE`` (one machine).
    """
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", 1)
    if world < 1:
        raise DistributedError(f"WORLD_SIZE={world}: must be >= 1")
    if world == 1:
        return DistEnv(local_rank=_env_int(env, "LOCAL_RANK", 0) or 0)
    rk = _env_int(env, "RANK", None)
    if rk is None:
        raise DistributedError(f"WORLD_SIZE={world} but RANK is not set (launch with torchrun)")
    if not 0 <= rk < world:
        raise DistributedError(f"RANK={rk} outside 0..{world - 1} (WORLD_SIZE={world})")
    local_world = _env_int(env, "LOCAL_WORLD_SIZE", world)
    lrk = _env_int(env, "LOCAL_RANK", rk)
    if not 1 <= local_world <= world or not 0 <= lrk < local_world:
        raise DistributedError(f"LOCAL_RANK={lrk} / LOCAL_WORLD_SIZE={local_world} do not fit "
                               f"RANK={rk} / WORLD_SIZE={world}")
    addr, port = env.get("MASTER_ADDR"), _env_int(env, "MASTER_PORT", None)
    if not addr or port is None:
        raise DistributedError(f"WORLD_SIZE={world} needs MASTER_ADDR and MASTER_PORT (launch with torchrun)")
    return DistEnv(rk, world, lrk, local_world, addr, port)


def select_device(device_preference: str = "auto", local_rank: int = 0) -> torch.device:
    """This process's device: ``cuda:<local_rank>`` on a GPU machine, else the CPU.

    ``device_preference``: ``auto`` (a GPU when one is visible), ``cuda`` (a GPU
    or an error), ``cpu``.  One process per GPU: a ``local_rank`` beyond the
    visible GPUs is an error (start fewer processes per machine).
    """
    if device_preference not in DEVICE_PREFERENCES:
        raise ValueError(f"device preference must be one of {DEVICE_PREFERENCES}, got {device_preference!r}")
    if device_preference == "cpu" or (device_preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise DistributedError("a GPU was asked for but none is visible (use the CPU, or check CUDA_VISIBLE_DEVICES)")
    if local_rank >= n:
        raise DistributedError(f"LOCAL_RANK={local_rank} but only {n} GPU(s) visible: start at most {n} processes "
                               "per machine (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


_device: Optional[torch.device] = None


def init_distributed(device_preference: str = "auto", gpu_index: int = 0,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join torchrun's process group (if any) and return this process's device.

    Multi-process (``WORLD_SIZE > 1``): device ``cuda:<LOCAL_RANK>`` (made the
    current CUDA device) with backend NCCL, or the CPU with gloo; rendezvous
    through ``MASTER_ADDR``/``MASTER_PORT``.  A collective that waits longer
    than ``timeout_s`` (a rank that died or diverged) raises instead of hanging.
    Single process: no process group; the device is GPU ``gpu_index`` or the CPU.

    Idempotent: a second call, or a call after someone else (the transformers
    Trainer, accelerate) initialised the default group, joins nothing new and
    returns the device.
    """
    global _device
    env = read_env()
    if dist.is_available() and dist.is_initialized():
        if _device is None:
            backend = dist.get_backend()
            _device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
                       else torch.device("cpu"))
        return _device
    if not env.distributed:
        _device = select_device(device_preference, gpu_index)
        return _device
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed: run a single process")
    device = select_device(device_preference, env.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    _device = device
    logger.info("rank %d/%d (local %d/%d) on %s, backend %s", env.rank, env.world_size, env.local_rank,
                env.local_world_size, device, backend)
    return device


def destroy_distributed() -> None:
    """Leave the process group (end of a run, tests); a no-op in a single process."""
    global _device
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _device = None


# --------------------------------------------------------------------------- who am I
def is_distributed() -> bool:
    """True when a process group of more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Global rank (0 in a single process)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 in a single process)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """Rank on this machine: ``LOCAL_RANK``; the global rank when a group is active without it; else 0."""
    raw = os.environ.get("LOCAL_RANK")
    if raw not in (None, ""):
        return int(raw)
    return rank()


def is_main_process() -> bool:
    """Global rank 0: the one process that logs, writes shared outputs and saves checkpoints."""
    return rank() == 0


def is_local_main_process() -> bool:
    """Rank 0 of this machine (work per machine: a local cache, a local temp dir)."""
    return local_rank() == 0


def _comm_device() -> torch.device:
    """Where tensors of a collective must live: the current GPU with NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --------------------------------------------------------------------------- synchronisation
def barrier() -> None:
    """Wait until every rank got here (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``src``'s picklable ``obj`` on every rank (the value passed elsewhere is ignored)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# --------------------------------------------------------------------------- reductions (no gradient)
Number = Union[int, float]


def all_reduce_sum(x: Union[torch.Tensor, Number]) -> Union[torch.Tensor, Number]:
    """Sum over ranks of a tensor (returned as a new detached tensor, input untouched) or of a number.

    Not differentiable: use it for normalisers (the global number of kept
    pairs) and logged sums, never on a loss that needs its gradient.
    """
    if isinstance(x, torch.Tensor):
        out = x.detach().clone()
        if is_distributed():
            moved = out.to(_comm_device()).contiguous()
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            out = moved.to(x.device)
        return out
    if not is_distributed():
        return x
    t = torch.tensor([x], dtype=torch.float64 if isinstance(x, float) else torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item()


def all_reduce_any(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on some rank (``skip this step`` agreed by all)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# --------------------------------------------------------------------------- gathers
def gather_sizes(n: int, device: Optional[torch.device] = None) -> List[int]:
    """Every rank's ``n`` (e.g. its number of rows), in rank order."""
    if not is_distributed():
        return [int(n)]
    device = _comm_device() if device is None else device
    mine = torch.tensor([int(n)], dtype=torch.int64, device=device)
    out = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def _gather_padded(t: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Rows of every rank, concatenated in rank order: each rank pads to the largest count, the pad is cut off."""
    most = max(sizes)
    buf = t.new_zeros((most,) + tuple(t.shape[1:]))  # (max_n, ...) contiguous
    buf[: t.shape[0]] = t
    parts = [torch.empty_like(buf) for _ in sizes]
    dist.all_gather(parts, buf)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)  # (sum n, ...)


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: every rank's rows, concatenated.  Backward: this rank's rows of the *sum* of all ranks' gradients.

    Rank s's loss depends on rank r's rows through the gathered tensor, so the
    gradient owed to rank r's rows is the sum over all ranks s of
    ``dL_s / d(rows of r)``.  Every rank holds a gradient of the same shape
    (sum n, ...), so one all-reduce (sum) followed by taking the own rows is
    exact on every backend (NCCL, gloo).  The gradient is made contiguous first:
    autograd can hand over an expanded view (stride 0, e.g. from a ``sum()``).
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, sizes: List[int], rank_: int):  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, rank_
        return _gather_padded(t.contiguous(), sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        total = grad.contiguous().clone()  # (sum n, ...)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start: start + ctx.sizes[ctx.rank]], None, None


def all_gather_with_grad(t: torch.Tensor, sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Concatenate every rank's ``t`` (n_r, ...) along dim 0 -> (sum n_r, ...), differentiably.

    Ranks may hold different numbers of rows (the trailing dimensions must
    agree); rank r's rows start at ``sum(sizes[:r])``.  The backward gives each
    rank the sum over all ranks of the gradients with respect to its own rows,
    which is exactly what the rank's parameters need: with each rank's loss
    built from the gathered tensor, DDP's average of the ranks' gradients is
    then the gradient of the average of the ranks' losses (see
    ``drhard.losses`` for the normalisation that makes that the global loss).

    A collective: every rank calls it, in the same order, and every rank later
    runs its backward (each rank's loss must depend on the result).  ``sizes``
    (every rank's row count) saves one small collective when already known.
    Single process: ``t`` itself.
    """
    if not is_distributed():
        return t
    sizes = gather_sizes(t.shape[0], device=t.device) if sizes is None else [int(s) for s in sizes]
    if len(sizes) != world_size() or sizes[rank()] != t.shape[0]:
        raise ValueError(f"sizes {sizes} do not fit rank {rank()} with {t.shape[0]} rows")
    return _AllGatherWithGrad.apply(t, sizes, rank())


def all_gather_no_grad(t: torch.Tensor, sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """As :func:`all_gather_with_grad` without a gradient (ids, offsets, frozen values)."""
    if not is_distributed():
        return t.detach()
    sizes = gather_sizes(t.shape[0], device=t.device) if sizes is None else [int(s) for s in sizes]
    with torch.no_grad():
        return _gather_padded(t.detach().contiguous(), sizes)


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- sharding
def shard_range(n: int, rank_: int, world: int) -> slice:
    """Rank ``rank_``'s contiguous rows of ``n``: ``slice(start, stop)``.

    The W slices are disjoint, in rank order and cover ``0..n-1``; sizes are
    ``n // W`` or one more, the extra rows going to the earlier ranks (so a
    smaller share is always on a later rank).  A rank may get nothing when
    ``n < W``.
    """
    if world < 1 or not 0 <= rank_ < world:
        raise ValueError(f"rank {rank_} outside 0..{world - 1}")
    if n < 0:
        raise ValueError(f"cannot shard {n} rows")
    base, extra = divmod(n, world)
    start = rank_ * base + min(rank_, extra)
    return slice(start, start + base + (1 if rank_ < extra else 0))


class ShardedBatchSampler(Sampler):
    """This rank's :func:`shard_range` of every batch of ``batch_sampler`` (global batches of indices).

    All ranks iterate the same global batches (the inner sampler must be
    seeded alike on every rank, as ``EpochSeededSampler`` is), so the union
    of the shares of step k is exactly the single-process batch k.  A global
    batch with fewer indices than ranks would leave a rank without rows, and
    an empty forward cannot join DDP's gradient all-reduce; such a batch (only
    a last, tiny one) is skipped on every rank, with a warning.
    ``set_epoch`` is passed on to the inner sampler.
    """

    def __init__(self, batch_sampler, rank_: Optional[int] = None, world: Optional[int] = None):
        self.batch_sampler = batch_sampler
        self.rank = rank() if rank_ is None else int(rank_)
        self.world = world_size() if world is None else int(world)
        shard_range(0, self.rank, self.world)  # validates rank/world

    def set_epoch(self, epoch: int) -> None:
        for inner in (self.batch_sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(inner, "set_epoch"):
                inner.set_epoch(epoch)
                return

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.batch_sampler:
            batch = list(batch)
            if len(batch) < self.world:
                logger.warning("skipping a global batch of %d item(s): fewer than the %d ranks",
                               len(batch), self.world)
                continue
            yield batch[shard_range(len(batch), self.rank, self.world)]

    def __len__(self) -> int:
        n = len(self.batch_sampler)
        batch_size = getattr(self.batch_sampler, "batch_size", None)
        if batch_size is not None and batch_size < self.world:
            return 0
        if not n or batch_size is None or getattr(self.batch_sampler, "drop_last", False):
            return n
        last = len(self.batch_sampler.sampler) - (n - 1) * batch_size  # size of the last global batch
        return n - (1 if last < self.world else 0)


# --------------------------------------------------------------------------- W local processes without torchrun
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (for a rendezvous on this machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _local_rank_main(rank_: int, world: int, port: int, device_preference: str, collective_timeout_s: float,
                     extra_env: Dict[str, str], fn: Callable, args: tuple, results) -> None:
    """Body of one process of :func:`run_local_ranks`: torchrun's variables, join, ``fn(*args)``, leave."""
    os.environ.update(RANK=str(rank_), WORLD_SIZE=str(world), LOCAL_RANK=str(rank_),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(extra_env)
    try:
        init_distributed(device_preference, timeout_s=collective_timeout_s)
        out = fn(*args)
        results.put((rank_, True, out))
    except BaseException:  # noqa: BLE001 - sent to the parent, which reports it
        results.put((rank_, False, traceback.format_exc()))
    finally:
        try:
            destroy_distributed()
        except Exception:  # noqa: BLE001 - leaving a broken group must not hide the result
            pass


def run_local_ranks(fn: Callable, world: int, args: Sequence[Any] = (), device_preference: str = "cpu",
                    timeout_s: float = 300.0, collective_timeout_s: float = 120.0,
                    extra_env: Optional[Mapping[str, str]] = None) -> List[Any]:
    """Run ``fn(*args)`` in ``world`` fresh processes of this machine joined as ranks 0..world-1; their results.

    Each process gets torchrun's variables (rendezvous on a free local port),
    calls :func:`init_distributed` with ``device_preference`` (``cpu``: gloo;
    ``cuda``: GPU ``rank`` with NCCL), then ``fn(*args)``, and leaves the group.
    ``world=1`` runs one process without a group, as torchrun would.  ``fn``
    and ``args`` must be picklable (``fn`` a module-level function) and so must
    its result.  Processes are started with ``spawn`` (CUDA cannot be forked).

    Returns the W results in rank order.  A rank that raises, dies, or a run
    longer than ``timeout_s`` (imports included) ends every rank and raises
    :class:`DistributedError` naming the rank; the rank's traceback is in the
    error's ``details``.  ``extra_env`` is set in every process first.
    """
    import torch.multiprocessing as mp
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    env = {str(k): str(v) for k, v in (extra_env or {}).items()}
    procs = [ctx.Process(target=_local_rank_main, daemon=True,
                         args=(r, world, port, device_preference, collective_timeout_s, env, fn, tuple(args),
                               results)) for r in range(world)]
    for p in procs:
        p.start()
    out: List[Any] = [None] * world
    pending = set(range(world))
    deadline = time.monotonic() + timeout_s
    try:
        while pending:
            try:
                r, ok, payload = results.get(timeout=0.5)
            except queue.Empty:
                dead = sorted(r for r in pending if procs[r].exitcode is not None)
                if dead:
                    raise DistributedError(f"rank {dead[0]} of {world} died (exit code {procs[dead[0]].exitcode}) "
                                           "before returning a result") from None
                if time.monotonic() > deadline:
                    raise DistributedError(f"ranks {sorted(pending)} of {world} gave no result within "
                                           f"{timeout_s:.0f} s") from None
                continue
            if not ok:
                last = next((ln for ln in reversed(payload.strip().splitlines()) if ln.strip()), "failed")
                err = DistributedError(f"rank {r} of {world} failed: {last.strip()}")
                err.details = payload
                raise err
            out[r] = payload
            pending.discard(r)
    finally:
        stop = time.monotonic() + 10.0  # leaving the group and exiting is quick once every result is in
        for p in procs:
            if pending:
                p.kill()  # the others may wait in a collective for the one that failed
            p.join(timeout=max(stop - time.monotonic(), 0.1))
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    return out
