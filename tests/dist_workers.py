"""Bodies of the spawned ranks of tests/test_distributed.py, and the inputs both sides build from a seed.

A ``WorkerPool`` starts W processes once (gloo on the CPU, or NCCL with one
GPU per rank for ``device="cuda"``; torchrun's environment variables set by
hand, ``drhard.distributed.init_distributed``) and runs named scenarios in all
of them at once; each scenario returns plain numpy data to the test process,
which computes the single-process reference itself (``reference_dense``,
``reference_adore``: one plain process).  A failed rank breaks the pool: its
traceback is raised in the test and the next test starts a fresh pool (the
other ranks may be stuck in a collective).
"""
from __future__ import annotations

import os
import queue
import random
import time
import traceback
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

VOCAB = 64
HARD_NUM = 2
N_PASSAGES = 12
COLLECTIVE_TIMEOUT_S = 60.0
START_TIMEOUT_S = 180.0
RESULT_TIMEOUT_S = 180.0


# --------------------------------------------------------------------------- inputs (both sides)
def make_model(seed: int = 0, checkpointing: bool = False):
    """A tiny RobertaDot without dropout (so a DDP step and a single-process step see the same function).

    Initialised with std 0.2, not 0.02: at 0.02 a tiny first-token encoder
    gives nearly one embedding for every input, so most gradients are below
    1e-5 and a comparison at atol 1e-5 would prove nothing.
    """
    from transformers import RobertaConfig

    from drhard.model import RobertaDot
    config = RobertaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=40, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    config.output_embedding_size = 8
    torch.manual_seed(seed)
    model = RobertaDot(config, pooling="first", head=True)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    return model


def make_batch(B: int, seed: int) -> dict:
    """A global batch of B training items whose passages repeat across the ranks' shares.

    Passage offsets 0..N_PASSAGES-1.  Query 0 (first rank) has relevant {0, 1}
    and positive 0; the last query (last rank) has positive 1 and hard
    negative 0, both relevant to query 0.  Query 1 has relevant {2, 3} and
    positive 2; query B//2 (a later rank for W = 2 and 3) has positive 3 and
    negative 2.  So the global masks differ from any mask a rank could build
    from its own share.
    """
    assert B >= 4
    g = random.Random(seed)
    passages = [[0] + [g.randrange(3, VOCAB) for _ in range(g.randint(3, 7))] + [2] for _ in range(N_PASSAGES)]
    queries = [[0] + [g.randrange(3, VOCAB) for _ in range(g.randint(2, 5))] + [2] for _ in range(B)]
    rels = [g.sample(range(4, N_PASSAGES), g.randint(1, 2)) for _ in range(B)]
    pos = [g.choice(r) for r in rels]
    negs = [g.sample(range(N_PASSAGES), HARD_NUM) for _ in range(B)]
    rels[0], pos[0] = [0, 1], 0
    rels[1], pos[1] = [2, 3], 2
    m, last = B // 2, B - 1
    rels[m], pos[m] = rels[m] + [3], 3
    negs[m][0] = 2
    rels[last], pos[last] = rels[last] + [1], 1
    negs[last][0] = 0
    return {"passages": passages, "queries": queries, "rels": rels, "pos": pos, "negs": negs}


def pad(rows: Sequence[Sequence[int]]):
    """Token ids and attention mask (n, L), padded with RoBERTa's pad id 1."""
    from drhard.dataset import pad_batch
    return pad_batch(rows, 1)


def checkpointing_on(backbone) -> bool:
    """Whether activation checkpointing is on (transformers 5's name; the old one, a deprecated alias there,
    on older versions)."""
    if hasattr(type(backbone), "is_activation_checkpointing"):
        return bool(backbone.is_activation_checkpointing)
    return bool(getattr(backbone, "is_gradient_checkpointing", False))


def batch_tensors(batch: dict, rows: slice) -> dict:
    """The collated share ``rows`` of a global batch: token tensors, position masks and passage offsets."""
    from drhard import losses
    rels = batch["rels"][rows]
    pos = batch["pos"][rows]
    negs = [p for n in batch["negs"][rows] for p in n]
    out = {}
    out["query_ids"], out["query_mask"] = pad(batch["queries"][rows])
    out["doc_ids"], out["doc_mask"] = pad([batch["passages"][p] for p in pos])
    out["neg_ids"], out["neg_mask"] = pad([batch["passages"][p] for p in negs])
    # the collator's masks, written as loops over this share only
    out["rel_pair_mask"] = torch.tensor([[0.0 if p in r else 1.0 for p in pos] for r in rels])  # (b, b)
    out["neg_pair_mask"] = torch.tensor([[0.0 if p in r else 1.0 for p in negs] for r in rels])  # (b, b*h)
    out["rel_offsets"] = losses.relevant_offsets(rels)  # (b, R)
    out["pos_offsets"] = torch.tensor(pos, dtype=torch.long)  # (b,)
    out["neg_offsets"] = torch.tensor(negs, dtype=torch.long)  # (b*h,)
    return out


def make_optimizer(model, name: str, lr: float):
    from drhard.optim import Lamb, param_groups
    groups = param_groups(model, 0.01)
    if name == "lamb":
        return Lamb(groups, lr=lr, eps=1e-8)
    return torch.optim.AdamW(groups, lr=lr, eps=1e-8)


def make_adore(B: int, seed: int) -> dict:
    """Query tokens, frozen passage embeddings and retrieved lists (some queries retrieve nothing relevant)."""
    g = random.Random(seed)
    tg = torch.Generator().manual_seed(seed)
    n_p, k = 20, 6
    pemb = torch.randn(n_p, 8, generator=tg).numpy()  # (P, D) frozen index
    queries = [[0] + [g.randrange(3, VOCAB) for _ in range(g.randint(2, 5))] + [2] for _ in range(B)]
    rels = [g.sample(range(n_p), g.randint(1, 3)) for _ in range(B)]
    retrieved = np.array([g.sample(range(n_p), k) for _ in range(B)], dtype=np.int64)  # (B, K)
    retrieved[0, -1] = -1  # a faiss filler
    return {"pemb": pemb, "queries": queries, "rels": rels, "retrieved": retrieved}


def adore_tensors(data: dict, rows: slice) -> dict:
    """A rank's share of an ADORE batch, candidate lists built from its own rows (as each rank would)."""
    from drhard import losses
    ids, mask = pad(data["queries"][rows])
    cand_ids, labels, valid = losses.build_adore_lists(data["retrieved"][rows], data["rels"][rows])
    cand = losses.gather_candidate_embeddings(data["pemb"], cand_ids, valid)  # (b, M, D)
    return {"ids": ids, "mask": mask, "cand": cand, "labels": torch.from_numpy(labels),
            "valid": torch.from_numpy(valid)}


def grads_of(model) -> Dict[str, np.ndarray]:
    return {n: (p.grad.detach().double().cpu().numpy().copy() if p.grad is not None else None)
            for n, p in model.named_parameters()}


def finish_step(model, opt, loss, out: dict) -> None:
    """After one step's backward (both sides): keep the first step's gradients and every loss, then clip and
    update (``opt`` None: no update)."""
    if out["grads"] is None:
        out["grads"] = grads_of(model)
    out["loss"].append(loss.item())
    if opt is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.zero_grad(set_to_none=True)


def params_of(model) -> Dict[str, np.ndarray]:
    return {n: p.detach().double().cpu().numpy().copy() for n, p in model.named_parameters()}


# --------------------------------------------------------------------------- references (one plain process)
def reference_dense(negative_type, B, seed, steps=1, optimizer=None, lr=1e-3, shares=None):
    """One plain process.  ``shares=None``: the loss of the global batch; ``shares=W``: the mean of the
    W losses of the shares, each with its own masks (what W independent processes would compute)."""
    from drhard import distributed as dd
    from drhard import losses
    model = make_model()
    opt = make_optimizer(model, optimizer, lr) if optimizer else None
    out = {"loss": [], "grads": None}
    for step in range(steps):
        batch = make_batch(B, seed + step)
        parts = [slice(0, B)] if shares is None else [dd.shard_range(B, r, shares) for r in range(shares)]
        total = 0.0
        for rows in parts:
            t = batch_tensors(batch, rows)
            q = model(t["query_ids"], t["query_mask"])
            d = model(t["doc_ids"], t["doc_mask"])
            if negative_type == "inbatch":
                part = losses.inbatch_loss(q, d, t["rel_pair_mask"])
            else:
                n = model(t["neg_ids"], t["neg_mask"])
                if negative_type == "star":
                    part = losses.star_loss(q, d, n, t["rel_pair_mask"], t["neg_pair_mask"])
                else:
                    part = losses.randneg_loss(q, d, n, t["neg_pair_mask"])
            total = total + part
        loss = total / len(parts)
        loss.backward()
        finish_step(model, opt, loss, out)
    out["params"] = params_of(model)
    return out


def reference_adore(B, seed, shares=None):
    from drhard import distributed as dd
    from drhard import losses
    model = make_model()
    data = make_adore(B, seed)
    parts = [slice(0, B)] if shares is None else [dd.shard_range(B, r, shares) for r in range(shares)]
    total = 0.0
    for rows in parts:
        t = adore_tensors(data, rows)
        q = model(t["ids"], t["mask"])
        total = total + losses.adore_loss(q, t["cand"], t["labels"], t["valid"], None)
    loss = total / len(parts)
    loss.backward()
    return {"loss": loss.item(), "grads": grads_of(model)}


# --------------------------------------------------------------------------- scenarios (inside the ranks)
def scenario_collectives() -> dict:
    from drhard import distributed as dd
    r, w = dd.rank(), dd.world_size()
    again = dd.init_distributed("cpu")  # idempotent
    dd.barrier()
    rows = dd.all_gather_no_grad(torch.full((r + 1, 2), r, dtype=torch.long))
    return {
        "rank": r, "world": w, "local_rank": dd.local_rank(), "main": dd.is_main_process(),
        "distributed": dd.is_distributed(), "again": str(again),
        "sum_tensor": dd.all_reduce_sum(torch.tensor([1.0, float(r)])).numpy(),
        "sum_int": dd.all_reduce_sum(r + 1), "sum_float": dd.all_reduce_sum(0.5 * r),
        "any_last": dd.all_reduce_any(r == w - 1), "any_none": dd.all_reduce_any(False),
        "broadcast": dd.broadcast_object({"from": r}, src=w - 1),
        "objects": dd.all_gather_objects(("rank", r)),
        "gathered_rows": rows.numpy(),
        "sizes": dd.gather_sizes(10 * r),
    }


def gather_inputs(sizes: Sequence[int], r: int, seed: int):
    """Rank r's (n_r, 3) rows, built as a transposed (non-contiguous) view, and its loss weights (sum n, 3)."""
    g = torch.Generator().manual_seed(seed + r)
    base = torch.randn(3, sizes[r], generator=g)  # (3, n_r)
    weights = torch.randn(sum(sizes), 3, generator=g)  # (N, 3)
    return base, weights


def scenario_gather(sizes: List[int], seed: int) -> dict:
    from drhard import distributed as dd
    r = dd.rank()
    base, weights = gather_inputs(sizes, r, seed)
    leaf = base.clone().requires_grad_(True)  # (3, n_r)
    t = leaf.T  # (n_r, 3), non-contiguous
    gathered = dd.all_gather_with_grad(t)  # (N, 3)
    # (r + 1) * sum(): autograd hands the gather an expanded (stride-0) gradient
    loss = (weights * gathered).sum() + (r + 1) * gathered.sum()
    loss.backward()
    return {"gathered": gathered.detach().numpy(), "grad": leaf.grad.T.numpy().copy(),
            "no_grad": dd.all_gather_no_grad(t).numpy(), "requires_grad": dd.all_gather_no_grad(t).requires_grad}


def scenario_dense(negative_type: str, scope: str, B: int, seed: int, steps: int = 1,
                   optimizer: Optional[str] = None, lr: float = 1e-3, checkpointing: bool = False) -> dict:
    """DDP training steps as the Trainer does them: three forward calls, then the loss of ``training_loss``."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from drhard import distributed as dd
    from drhard import losses
    device = dd.init_distributed()  # joined already: this rank's device (cpu with gloo, cuda:<rank> with NCCL)
    model = make_model(checkpointing=checkpointing).to(device)
    ddp = DDP(model, device_ids=_device_ids(device), find_unused_parameters=False)
    opt = make_optimizer(model, optimizer, lr) if optimizer else None
    out = {"loss": [], "grads": None, "rows": None}
    for step in range(steps):
        batch = make_batch(B, seed + step)
        rows = dd.shard_range(B, dd.rank(), dd.world_size())
        inputs = {k: v.to(device) for k, v in batch_tensors(batch, rows).items()}
        q = ddp(inputs["query_ids"], inputs["query_mask"])  # (b, D)
        d = ddp(inputs["doc_ids"], inputs["doc_mask"])  # (b, D)
        n = ddp(inputs["neg_ids"], inputs["neg_mask"]) if negative_type != "inbatch" else None  # (b*h, D)
        loss = losses.training_loss(negative_type, q, d, n, inputs, scope=scope)
        loss.backward()
        out["rows"] = (rows.start, rows.stop)
        out["checkpointing"] = checkpointing_on(model.backbone)
        finish_step(model, opt, loss, out)
    out["params"] = params_of(model)
    return out


def scenario_adore(scope: str, B: int, seed: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from drhard import distributed as dd
    from drhard import losses
    device = dd.init_distributed()
    model = make_model().to(device)
    ddp = DDP(model, device_ids=_device_ids(device), find_unused_parameters=False)
    data = make_adore(B, seed)
    t = {k: v.to(device) for k, v in adore_tensors(data, dd.shard_range(B, dd.rank(), dd.world_size())).items()}
    q = ddp(t["ids"], t["mask"])  # (b, D)
    loss = losses.adore_training_loss(q, t["cand"], t["labels"], t["valid"], None, scope=scope)
    loss.backward()
    return {"loss": loss.item(), "grads": grads_of(model)}


def _device_ids(device: torch.device):
    return [device.index] if device.type == "cuda" else None


def rank_sum_or_fail(fail_rank: int) -> tuple:
    """For ``run_local_ranks``: (rank, world, sum of ranks+1); rank ``fail_rank`` raises while the others wait."""
    from drhard import distributed as dd
    if dd.rank() == fail_rank:
        raise ValueError(f"rank {fail_rank} gives up")
    return dd.rank(), dd.world_size(), dd.all_reduce_sum(dd.rank() + 1)


SCENARIOS = {"collectives": scenario_collectives, "gather": scenario_gather, "dense": scenario_dense,
             "adore": scenario_adore}


# --------------------------------------------------------------------------- the pool
def _worker_main(rank: int, world: int, port: int, tasks, results, device: str = "cpu") -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    torch.set_num_threads(1)
    try:
        from drhard import distributed as dd
        dd.init_distributed(device, timeout_s=COLLECTIVE_TIMEOUT_S)
        results.put((rank, True, "ready"))
    except BaseException:  # noqa: BLE001 - reported to the test
        results.put((rank, False, traceback.format_exc()))
        return
    while True:
        task = tasks.get()
        if task is None:
            break
        name, kwargs = task
        try:
            results.put((rank, True, SCENARIOS[name](**kwargs)))
        except BaseException:  # noqa: BLE001
            results.put((rank, False, traceback.format_exc()))
    dd.destroy_distributed()


class WorkerPool:
    """W spawned ranks that run scenarios on request (started once, reused by many tests).

    ``device="cpu"``: gloo, GPUs hidden; ``device="cuda"``: NCCL, rank r on GPU r.
    """

    def __init__(self, world: int, device: str = "cpu"):
        import torch.multiprocessing as mp
        ctx = mp.get_context("spawn")
        self.world = world
        self.broken = False
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(world)]
        from drhard.distributed import free_port
        port = free_port()
        self.procs = [ctx.Process(target=_worker_main, args=(r, world, port, self.tasks[r], self.results, device),
                                  daemon=True) for r in range(world)]
        for p in self.procs:
            p.start()
        self._collect("start", START_TIMEOUT_S)

    def _collect(self, what: str, timeout: float) -> list:
        out: list = [None] * self.world
        deadline = time.monotonic() + timeout
        for _ in range(self.world):
            while True:
                try:
                    rank, ok, payload = self.results.get(timeout=1.0)
                    break
                except queue.Empty:
                    dead = [r for r, p in enumerate(self.procs) if p.exitcode is not None]
                    if dead or time.monotonic() > deadline:
                        self.kill()
                        why = f"rank(s) {dead} died" if dead else f"no answer within {timeout:.0f}s"
                        raise AssertionError(f"{what}: {why} ({self.world} ranks)") from None
            if not ok:
                self.kill()  # the other ranks may wait in a collective
                raise AssertionError(f"{what}: rank {rank} of {self.world} failed:\n{payload}")
            out[rank] = payload
        return out

    def run(self, name: str, **kwargs) -> list:
        """Run scenario ``name`` on every rank; its results in rank order."""
        if self.broken:
            raise AssertionError("worker pool is broken")
        for q in self.tasks:
            q.put((name, kwargs))
        return self._collect(name, RESULT_TIMEOUT_S)

    def close(self) -> None:
        """Stop the ranks (they leave the process group), killing any that does not stop."""
        if not self.broken:
            for q in self.tasks:
                q.put(None)
            deadline = time.monotonic() + 3.0  # leaving the group is quick; interpreter exit can be slow
            for p in self.procs:
                p.join(timeout=max(deadline - time.monotonic(), 0.1))
        self.kill()

    def kill(self) -> None:
        self.broken = True
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(timeout=10)
