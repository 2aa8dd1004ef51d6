"""Time one ADORE training step, split into encode / search / lists / loss / backward / optim.

The loss is timed three times on the same batch, side by side: the vectorised
``drhard.losses.adore_loss`` ((B, #relevant, M) pairs), a per-query loop in the
style of the original trainer ((M, M) pair matrices built query by query), and
a (B, M, M) batched form (to tell batching from the pair reduction).  Both are run forward+backward on
a detached leaf copy of the query embeddings, so their time is the loss alone;
the encoder backward is timed separately.  The two losses and their gradients
must all agree, or the script exits non-zero.

Everything is synthetic: a small random RobertaDot, random passage embeddings
in a faiss ``IndexFlatIP``, random queries of 24-64 tokens.  Relevance: every
query gets one random passage; for half of the queries a passage retrieved at a
random rank in the first search is relevant too, so both the "retrieved" and
the "appended" cases occur.

    python bench/adore_step.py                       # batch 32, neg_topk 200, 100k x 128 docs
    python bench/adore_step.py --hidden 128 --layers 2 --n_docs 20000 --steps 3
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from drhard.losses import (adore_batch_metrics, adore_loss, build_adore_lists,  # noqa: E402
                           gather_candidate_embeddings)
from drhard.model import build_tiny_roberta  # noqa: E402


def loop_adore_loss(q_emb: torch.Tensor, cand_emb: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                    metric_cut: Optional[int]) -> torch.Tensor:
    """Per-query reference (the loss as the original computed it), one (M, M) pair matrix per query."""
    B, M = labels.shape
    inv = 1.0 / torch.arange(1, M + 1, dtype=torch.float32)
    if metric_cut is not None:
        inv[metric_cut:] = 0.0
    total = q_emb.new_zeros(())
    for b in range(B):
        keep = valid[b].nonzero().squeeze(1)  # (m,)
        y = cand_emb[b, keep] @ q_emb[b].float()  # (m,)
        lab = labels[b, keep].reshape(-1, 1)  # (m, 1)
        rel_diff = lab - lab.T  # (m, m)
        pos_pairs = (rel_diff > 0).float()
        neg_pairs = (rel_diff < 0).float()
        num_pos = pos_pairs.sum()
        if num_pos == 0:
            continue
        diff = y.reshape(-1, 1) - y.reshape(1, -1)  # (m, m)
        w = (inv[keep].reshape(-1, 1) - inv[keep].reshape(1, -1)).abs()  # (m, m)
        c = pos_pairs * F.softplus(-diff) + neg_pairs * F.softplus(diff)
        total = total + (c * w).sum() / (2 * num_pos)
    return total / B


def dense_adore_loss(q_emb: torch.Tensor, cand_emb: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                     metric_cut: Optional[int]) -> torch.Tensor:
    """Vectorised over queries but over all (B, M, M) pairs: separates batching from the pair reduction."""
    M = labels.shape[1]
    inv = 1.0 / torch.arange(1, M + 1, dtype=torch.float32)
    if metric_cut is not None:
        inv[metric_cut:] = 0.0
    w = (inv.view(-1, 1) - inv.view(1, -1)).abs()  # (M, M)
    y = torch.bmm(q_emb.float().unsqueeze(1), cand_emb.transpose(1, 2)).squeeze(1)  # (B, M)
    lab = torch.where(valid, labels, torch.full_like(labels, -1.0))  # (B, M)
    ok = valid.unsqueeze(2) & valid.unsqueeze(1)  # (B, M, M)
    pos = ((lab.unsqueeze(2) > lab.unsqueeze(1)) & ok).float()  # (B, M, M)
    neg = ((lab.unsqueeze(2) < lab.unsqueeze(1)) & ok).float()  # (B, M, M)
    diff = y.unsqueeze(2) - y.unsqueeze(1)  # (B, M, M)
    c = (pos * F.softplus(-diff) + neg * F.softplus(diff)) * w  # (B, M, M)
    return (c.sum((1, 2)) / (2 * pos.sum((1, 2))).clamp(min=1.0)).mean()


def time_loss(fn, q, cand, labels, valid, metric_cut, repeats):
    """Forward+backward of a loss on a detached leaf copy of q; the fastest of ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        leaf = q.detach().clone().requires_grad_(True)
        t = time.perf_counter()
        loss = fn(leaf, cand, labels, valid, metric_cut)
        loss.backward()
        best = min(best, time.perf_counter() - t)
    return loss.detach(), leaf, best


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--neg_topk", type=int, default=200)
    ap.add_argument("--metric_cut", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128, help="output embedding size")
    ap.add_argument("--vocab", type=int, default=5000)
    ap.add_argument("--n_docs", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    ap.add_argument("--loss_repeats", type=int, default=5, help="loss timings: fastest of this many runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import faiss
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)

    model = build_tiny_roberta(vocab_size=args.vocab, hidden=args.hidden, layers=args.layers, heads=args.heads,
                               output_embedding_size=args.dim, seed=args.seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-6, eps=1e-8)
    docs = rng.standard_normal((args.n_docs, args.dim), dtype=np.float32)
    index = faiss.IndexFlatIP(args.dim)
    index.add(docs)

    def make_batch():
        lengths = rng.integers(24, 65, size=args.batch)
        L = int(lengths.max())
        ids = torch.full((args.batch, L), 1, dtype=torch.long)
        mask = torch.zeros((args.batch, L), dtype=torch.long)
        for i, n in enumerate(lengths):
            ids[i, :n] = torch.from_numpy(rng.integers(3, args.vocab, size=n))
            ids[i, 0], ids[i, n - 1] = 0, 2
            mask[i, :n] = 1
        return ids, mask

    rows = []
    for step in range(args.steps + 1):
        ids, mask = make_batch()
        q, t_enc = timed(lambda: model.encode(ids, mask))  # (B, D)
        retrieved, t_search = timed(lambda: index.search(q.detach().numpy(), args.neg_topk)[1])  # (B, K)
        rel_lists = [[int(rng.integers(args.n_docs))] for _ in range(args.batch)]
        for b in range(0, args.batch, 2):
            rel_lists[b].append(int(retrieved[b, rng.integers(args.neg_topk)]))

        def lists():
            cand_ids, labels, valid = build_adore_lists(retrieved, rel_lists)
            cand = gather_candidate_embeddings(docs, cand_ids, valid)  # (B, M, D)
            return cand, torch.from_numpy(labels), torch.from_numpy(valid)
        (cand, labels, valid), t_lists = timed(lists)
        mrr, r10 = adore_batch_metrics(retrieved, rel_lists)

        fast, q_fast, t_fast = time_loss(adore_loss, q, cand, labels, valid, args.metric_cut, args.loss_repeats)
        loop, q_loop, t_loop = time_loss(loop_adore_loss, q, cand, labels, valid, args.metric_cut,
                                         args.loss_repeats)
        dense, q_dense, t_dense = time_loss(dense_adore_loss, q, cand, labels, valid, args.metric_cut,
                                            args.loss_repeats)
        if not (torch.allclose(fast, loop, rtol=1e-5, atol=1e-7)
                and torch.allclose(q_fast.grad, q_loop.grad, rtol=1e-4, atol=1e-8)
                and torch.allclose(fast, dense, rtol=1e-5, atol=1e-7)
                and torch.allclose(q_fast.grad, q_dense.grad, rtol=1e-4, atol=1e-8)):
            print(f"MISMATCH: vectorised {fast.item():.8g} vs loop {loop.item():.8g} vs dense {dense.item():.8g}, "
                  f"max grad diff {(q_fast.grad - q_loop.grad).abs().max().item():.3g}")
            return 1

        _, t_bwd = timed(lambda: q.backward(q_fast.grad))

        def opt_step():
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        _, t_opt = timed(opt_step)
        if step > 0:
            rows.append(dict(encode=t_enc, search=t_search, lists=t_lists, loss=t_fast,
                             backward=t_bwd, optim=t_opt, loop_loss=t_loop,
                             dense_loss=t_dense,
                             M=cand.shape[1], value=fast.item(), mrr=mrr, r10=r10))

    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    step_total = sum(med[k] for k in ("encode", "search", "lists", "loss", "backward", "optim"))
    print(f"ADORE step: batch {args.batch}, neg_topk {args.neg_topk}, M {int(med['M'])}, metric_cut "
          f"{args.metric_cut}, model hidden {args.hidden} x {args.layers} layers, dim {args.dim}, "
          f"{args.n_docs} docs, {args.threads} threads, median of {len(rows)} steps")
    for k in ("encode", "search", "lists", "loss", "backward", "optim"):
        print(f"  {k:9s} {med[k] * 1e3:9.2f} ms  {100 * med[k] / step_total:5.1f} %")
    print(f"  {'total':9s} {step_total * 1e3:9.2f} ms")
    print(f"loss fwd+bwd: vectorised {med['loss'] * 1e3:.2f} ms, per-query loop {med['loop_loss'] * 1e3:.2f} ms, "
          f"ratio {med['loop_loss'] / med['loss']:.1f}x (losses and gradients agree)")
    print(f"  (B, M, M) dense vectorised {med['dense_loss'] * 1e3:.2f} ms, "
          f"ratio {med['dense_loss'] / med['loss']:.1f}x slower than the (B, P, M) form")
    print(f"step with the loop loss instead: {(step_total - med['loss'] + med['loop_loss']) * 1e3:.2f} ms "
          f"({(step_total - med['loss'] + med['loop_loss']) / step_total:.2f}x)")
    print(f"last loss {rows[-1]['value']:.5f}, MRR@10 {rows[-1]['mrr']:.3f}, R@10 {rows[-1]['r10']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
