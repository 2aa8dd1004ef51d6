"""Time and communication per STAR step under DDP, at 1, 2, 3 processes, in both loss scopes.

    python bench/ddp.py                            # gloo on the CPU: 1, 2, 3 processes x device/global scope
    python bench/ddp.py --procs 1 2 --steps 40 --batch 48
    python bench/ddp.py --device cuda --procs 1 2  # NCCL, one GPU per process

Each configuration starts its processes afresh (``drhard.distributed.run_local_ranks``;
1 process joins no group, as under torchrun).  Every rank builds the same tiny
random RobertaDot and the same global batches (``--batch`` queries, their
positives and ``--hard_num`` hard negatives each), takes its ``shard_range`` of
each, and runs STAR steps as the trainer does: three forward calls through DDP,
``drhard.losses.training_loss`` in the scope, backward, clipping, LAMB.  The
global batch is the same at every process count, so the numbers say what
splitting one batch over W processes costs and saves.

Timing: the median over ``--steps`` steps (after ``--warmup``) of the slowest
rank's wall time of the step; ``--threads`` torch threads per process (1 by
default, so that W processes use W cores).  Communication, per rank per step, as the bytes
each rank hands to collectives (the payload; a ring all-reduce moves about
2(W-1)/W times it over the wire):

* ``loss coll.``: the collectives ``drhard.distributed`` makes for the loss
  (``all_gather_with_grad``'s gathers and its backward all-reduce, the offsets'
  and sizes' gathers, the count all-reduce), counted by wrapping the
  ``torch.distributed`` functions it calls; with the number of calls;
* ``DDP grads``: DDP's gradient all-reduce, counted in a DDP communication
  hook (its buckets; equals the trainable parameters' bytes);
* ``DDP buffers``: DDP's broadcast of module buffers before every forward
  (``broadcast_buffers=True``, DDP's default), counted by wrapping the
  broadcast.

Ratios are against 1 process of the same scope.
"""
import argparse
import json
import os
import statistics
import sys
import time

try:
    import drhard  # noqa: F401
except ImportError:  # run from a checkout without `pip install .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from drhard import distributed as dd
from drhard.cli import int_at_least, run
from drhard.device import usable_cpus


class CountingDist:
    """``torch.distributed`` as ``drhard.distributed`` sees it, counting the payload of its collectives."""

    def __init__(self, real, counts):
        self._real, self._counts = real, counts

    def __getattr__(self, name):
        return getattr(self._real, name)

    def _add(self, tensor):
        self._counts["loss_bytes"] += tensor.numel() * tensor.element_size()
        self._counts["loss_calls"] += 1

    def all_gather(self, tensor_list, tensor, *args, **kwargs):
        self._add(tensor)
        return self._real.all_gather(tensor_list, tensor, *args, **kwargs)

    def all_reduce(self, tensor, *args, **kwargs):
        self._add(tensor)
        return self._real.all_reduce(tensor, *args, **kwargs)


def bench_rank(cfg: dict) -> dict:
    """One rank: ``cfg["warmup"]`` + ``cfg["steps"]`` STAR steps; its time and counted bytes."""
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from drhard import selfcheck
    from drhard.optim import Lamb, param_groups
    device = dd.init_distributed()  # joined by run_local_ranks: this rank's device
    if device.type == "cpu":
        torch.set_num_threads(cfg["threads"])
    world, rank = dd.world_size(), dd.rank()
    counts = {"loss_bytes": 0, "loss_calls": 0, "ddp_grad_bytes": 0, "ddp_grad_calls": 0, "buffer_bytes": 0}
    model = selfcheck.tiny_model().to(device).train()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    net = model
    if world > 1:
        dd.dist = CountingDist(tdist, counts)
        real_all_reduce, real_broadcast = tdist.all_reduce, tdist._broadcast_coalesced

        def counting_broadcast(group, tensors, *args, **kwargs):
            counts["buffer_bytes"] += sum(t.numel() * t.element_size() for t in tensors)
            return real_broadcast(group, tensors, *args, **kwargs)

        def counting_allreduce(state, bucket):
            buf = bucket.buffer()
            state["ddp_grad_bytes"] += buf.numel() * buf.element_size()
            state["ddp_grad_calls"] += 1
            buf.div_(world)
            return real_all_reduce(buf, async_op=True).get_future().then(lambda fut: fut.value()[0])

        tdist._broadcast_coalesced = counting_broadcast
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        net.register_comm_hook(counts, counting_allreduce)
    opt = Lamb(param_groups(model, 0.01), lr=1e-4, eps=1e-8)
    total = cfg["warmup"] + cfg["steps"]
    rows = dd.shard_range(cfg["batch"], rank, world)
    shares = [selfcheck.share_tensors(selfcheck.star_batch(cfg["batch"], 1000 + s, cfg["hard_num"],
                                                           n_passages=4 * cfg["batch"],
                                                           query_words=(cfg["query_len"] // 2, cfg["query_len"] - 2),
                                                           passage_words=(cfg["doc_len"] // 2, cfg["doc_len"] - 2)),
                                      rows, device) for s in range(total)]
    losses, times = [], []
    for s, t in enumerate(shares):
        if s == cfg["warmup"]:
            dd.barrier()
            for k in counts:
                counts[k] = 0
        start = time.perf_counter()
        loss = selfcheck.star_forward_loss(net, t, scope=cfg["scope"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))  # waits for the GPU
        times.append(time.perf_counter() - start)
    return {"times": times[cfg["warmup"]:], "counts": counts, "param_bytes": param_bytes,
            "rows": rows.stop - rows.start,
            "loss": sum(losses[cfg["warmup"]:]) / cfg["steps"], "backend": tdist.get_backend() if world > 1 else "-"}


def run_config(world: int, scope: str, args) -> dict:
    threads = args.threads or max(1, usable_cpus() // world)
    cfg = {"scope": scope, "batch": args.batch, "hard_num": args.hard_num, "steps": args.steps,
           "warmup": args.warmup, "threads": threads, "query_len": args.query_len, "doc_len": args.doc_len}
    ranks = dd.run_local_ranks(bench_rank, world, (cfg,), device_preference=args.device, timeout_s=args.timeout)
    steps = args.steps
    per_step = {k: ranks[0]["counts"][k] / steps for k in ranks[0]["counts"]}
    return {"procs": world, "scope": scope, "backend": ranks[0]["backend"], "threads_per_proc": threads,
            "ms_per_step": 1000 * statistics.median(max(ts) for ts in zip(*(r["times"] for r in ranks))),
            "shares": [r["rows"] for r in ranks],
            "loss": sum(r["loss"] for r in ranks) / world, "param_bytes": ranks[0]["param_bytes"],
            **{k + "_per_step": v for k, v in per_step.items()},
            "total_bytes_per_step": per_step["loss_bytes"] + per_step["ddp_grad_bytes"] + per_step["buffer_bytes"]}


def kib(n: float) -> str:
    return f"{n / 1024:.1f}"


def format_table(results, args) -> str:
    base = {r["scope"]: r for r in results if r["procs"] == 1}
    lines = [f"STAR, hard_num {args.hard_num}, global batch {args.batch} queries, queries ~{args.query_len} / "
             f"passages ~{args.doc_len} tokens, tiny RobertaDot ({results[0]['param_bytes'] / 1024:.0f} KiB of "
             f"parameters); {args.device}, {usable_cpus()} usable cores, {results[0]['threads_per_proc']} "
             f"thread(s) per process; {args.steps} steps after {args.warmup} warm-up",
             "bytes: KiB handed to collectives per rank per step",
             f"{'procs':>5} {'scope':<7} {'backend':<7} {'ms/step':>8} {'x 1 proc':>8} {'loss coll.':>10} "
             f"{'(calls)':>7} {'DDP grads':>9} {'DDP bufs':>8} {'total':>8}"]
    for r in results:
        b = base.get(r["scope"])
        ratio = f"{r['ms_per_step'] / b['ms_per_step']:.2f}" if b else "-"
        lines.append(f"{r['procs']:>5} {r['scope']:<7} {r['backend']:<7} {r['ms_per_step']:>8.1f} {ratio:>8} "
                     f"{kib(r['loss_bytes_per_step']):>10} {r['loss_calls_per_step']:>7.0f} "
                     f"{kib(r['ddp_grad_bytes_per_step']):>9} {kib(r['buffer_bytes_per_step']):>8} "
                     f"{kib(r['total_bytes_per_step']):>8}")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int_at_least(1), nargs="+", default=[1, 2, 3])
    p.add_argument("--scopes", nargs="+", choices=["device", "global"], default=["device", "global"])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu: gloo; cuda: NCCL with one GPU per process")
    p.add_argument("--batch", type=int_at_least(1), default=24, help="global batch (queries per step)")
    p.add_argument("--hard_num", type=int_at_least(1), default=1)
    p.add_argument("--query_len", type=int_at_least(4), default=24)
    p.add_argument("--doc_len", type=int_at_least(4), default=120)
    p.add_argument("--steps", type=int_at_least(1), default=20)
    p.add_argument("--warmup", type=int_at_least(1), default=3)
    p.add_argument("--threads", type=int_at_least(0), default=1,
                   help="torch threads per CPU process (0: the usable cores divided by the processes)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if max(args.procs) > args.batch:
        parser.error(f"--batch {args.batch} leaves a process without queries at {max(args.procs)} processes")
    if args.device == "cuda" and max(args.procs) > torch.cuda.device_count():
        parser.error(f"--device cuda with {max(args.procs)} processes needs as many GPUs "
                     f"({torch.cuda.device_count()} visible)")
    results = []
    for world in args.procs:
        for scope in args.scopes:
            results.append(run_config(world, scope, args))
            print(f"  {world} proc(s), {scope}: {results[-1]['ms_per_step']:.1f} ms/step", file=sys.stderr,
                  flush=True)
    print(format_table(results, args))
    if args.json:
        from drhard.io import atomic_write
        with atomic_write(args.json) as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
