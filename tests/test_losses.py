"""drhard.losses against slow per-query / per-pair references written from the paper's equations and the
original trainers' definitions (values and gradients)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from drhard import losses


# --------------------------------------------------------------------------- references (slow, obvious)
def ref_pair(p, n):
    """-log softmax([p, n])[0], written as the softmax itself."""
    return -torch.log(torch.exp(p) / (torch.exp(p) + torch.exp(n)))


def ref_star(q, d, hard, rel_mask, hard_mask):
    """Loop over queries and documents; mean of the kept pair losses of both groups."""
    total, count = torch.zeros((), dtype=torch.float64), 0.0
    for i in range(q.shape[0]):
        p = torch.dot(q[i].double(), d[i].double())
        for j in range(d.shape[0]):
            if rel_mask[i, j] != 0:
                total = total + ref_pair(p, torch.dot(q[i].double(), d[j].double()))
                count += 1
        if hard is not None:
            for h in range(hard.shape[0]):
                if hard_mask is None or hard_mask[i, h] != 0:
                    total = total + ref_pair(p, torch.dot(q[i].double(), hard[h].double()))
                    count += 1
    return total / max(count, 1.0)


def ref_randneg(q, d, rand, rand_mask):
    total, count = torch.zeros((), dtype=torch.float64), 0.0
    for i in range(q.shape[0]):
        p = torch.dot(q[i].double(), d[i].double())
        for r in range(rand.shape[0]):
            if rand_mask is None or rand_mask[i, r] != 0:
                total = total + ref_pair(p, torch.dot(q[i].double(), rand[r].double()))
                count += 1
    return total / max(count, 1.0)


def ref_adore_lists(retrieved, rel_lists):
    """One Python list of (pid, label) per query, straight from the definition: the retrieved passages labelled
    relevant or not, and, when none of a query's relevant passages was retrieved, all of them appended."""
    out = []
    for row, rel in zip(retrieved.tolist(), rel_lists):
        labels = [1 if (pid in rel and pid >= 0) else 0 for pid in row]
        ids = list(row)
        if sum(labels) == 0:
            for pid in rel:
                if pid not in ids[len(row):]:
                    ids.append(pid)
                    labels.append(1)
        out.append((ids, labels))
    return out


def ref_adore(q, emb_of, ref_lists, metric_cut):
    """Mean over queries; ``emb_of(pid)`` gives a passage embedding; -1 fillers are skipped."""
    per_query = []
    for b, (ids, labels) in enumerate(ref_lists):
        keep = [k for k, pid in enumerate(ids) if pid >= 0]
        # a -1 filler sits only at the end of the retrieved part, so positions of kept entries are unchanged
        cands = [emb_of(ids[k]) for k in keep]
        labs = [labels[k] for k in keep]
        n = len(ids)
        inv = [0.0 if (metric_cut is not None and r > metric_cut) else 1.0 / r for r in range(1, n + 1)]
        s = [torch.dot(q[b].double(), c.double()) for c in cands]
        total, num_pos = torch.zeros((), dtype=torch.float64), 0
        for a in range(len(keep)):
            for c in range(len(keep)):
                w = abs(inv[keep[a]] - inv[keep[c]])
                if labs[a] > labs[c]:
                    total = total + w * torch.log(1 + torch.exp(-(s[a] - s[c])))
                    num_pos += 1
                elif labs[a] < labs[c]:
                    total = total + w * torch.log(1 + torch.exp(s[a] - s[c]))
        per_query.append(total / (2 * num_pos) if num_pos else total * 0.0)
    return sum(per_query) / len(per_query)


# --------------------------------------------------------------------------- helpers
def rand_emb(g, *shape, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).requires_grad_(True)


def grads(loss, *ts):
    """Gradients in float64; a reference with no kept pair is a constant 0, whose gradient is 0."""
    if loss.grad_fn is None:
        return tuple(torch.zeros_like(t, dtype=torch.float64) for t in ts)
    return tuple(x.double() for x in torch.autograd.grad(loss, ts, allow_unused=True, materialize_grads=True))


def random_rel_mask(g, B, extra_rel_prob=0.2):
    """1 - eye plus extra zeros (documents relevant to several queries)."""
    m = (torch.rand(B, B, generator=g) > extra_rel_prob).float()
    m.fill_diagonal_(0.0)
    return m


# --------------------------------------------------------------------------- inbatch / star / randneg
@settings(max_examples=12, deadline=None)
@given(B=st.integers(1, 7), D=st.integers(1, 9), H_per=st.integers(0, 3), seed=st.integers(0, 10_000))
def test_star_matches_reference_values_and_gradients(B, D, H_per, seed):
    g = torch.Generator().manual_seed(seed)
    q, d = rand_emb(g, B, D, scale=2.0), rand_emb(g, B, D, scale=2.0)
    H = B * H_per
    hard = rand_emb(g, H, D, scale=2.0)
    rel_mask = random_rel_mask(g, B)
    hard_mask = (torch.rand(B, H, generator=g) > 0.25).float()
    fast = losses.star_loss(q, d, hard, rel_mask, hard_mask)
    ref = ref_star(q, d, hard, rel_mask, hard_mask)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads(fast, q, d, hard), grads(ref, q, d, hard)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 8), D=st.integers(1, 9), seed=st.integers(0, 10_000), default_mask=st.booleans())
def test_inbatch_matches_reference(B, D, seed, default_mask):
    g = torch.Generator().manual_seed(seed)
    q, d = rand_emb(g, B, D, scale=2.0), rand_emb(g, B, D, scale=2.0)
    mask = None if default_mask else random_rel_mask(g, B, 0.4)
    fast = losses.inbatch_loss(q, d, mask)
    ref = ref_star(q, d, None, 1 - torch.eye(B) if mask is None else mask, None)
    torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads(fast, q, d), grads(ref, q, d)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_inbatch_terms_expose_sum_and_count():
    g = torch.Generator().manual_seed(0)
    q, d = rand_emb(g, 4, 3), rand_emb(g, 4, 3)
    mask = torch.ones(4, 4)
    mask.fill_diagonal_(0)
    mask[0, 2] = 0  # doc 2 also relevant to query 0
    s, n, pos = losses.inbatch_loss_terms(q, d, mask)
    assert n.item() == 11
    torch.testing.assert_close(pos, (q * d).sum(-1))
    torch.testing.assert_close(s / n, losses.inbatch_loss(q, d, mask))
    # bool masks behave as 0/1 float masks
    torch.testing.assert_close(losses.inbatch_loss(q, d, mask.bool()), losses.inbatch_loss(q, d, mask))


def test_star_is_one_mean_over_both_groups_not_a_mean_of_means():
    g = torch.Generator().manual_seed(1)
    q, d, hard = rand_emb(g, 3, 4), rand_emb(g, 3, 4), rand_emb(g, 6, 4)
    s1, n1, pos = losses.inbatch_loss_terms(q, d, None)
    s2, n2 = losses.neg_loss_terms(q, pos, hard, None)
    star = losses.star_loss(q, d, hard, None, None)
    torch.testing.assert_close(star, (s1 + s2) / (n1 + n2))
    assert not torch.isclose(star, (s1 / n1 + s2 / n2) / 2)


@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 6), R=st.integers(1, 12), D=st.integers(1, 8), seed=st.integers(0, 10_000),
       with_mask=st.booleans())
def test_randneg_matches_reference(B, R, D, seed, with_mask):
    g = torch.Generator().manual_seed(seed)
    q, d, rnd = rand_emb(g, B, D, scale=2.0), rand_emb(g, B, D, scale=2.0), rand_emb(g, R, D, scale=2.0)
    mask = (torch.rand(B, R, generator=g) > 0.3).float() if with_mask else None
    fast = losses.randneg_loss(q, d, rnd, mask)
    ref = ref_randneg(q, d, rnd, mask)
    torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads(fast, q, d, rnd), grads(ref, q, d, rnd)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_randneg_ignores_other_in_batch_documents():
    g = torch.Generator().manual_seed(2)
    q, d, rnd = rand_emb(g, 3, 4), rand_emb(g, 3, 4), rand_emb(g, 5, 4)
    (gd,) = grads(losses.randneg_loss(q, d, rnd), d)
    d2 = d.detach().clone()
    d2[1] += 100.0  # another query's positive must not change query 0's loss terms
    a = losses.randneg_loss(q[:1], d[:1], rnd)
    b = losses.randneg_loss(q[:1], d2[:1], rnd)
    torch.testing.assert_close(a, b)
    assert torch.all(gd != 0)


def test_empty_pair_sets_give_connected_zero():
    g = torch.Generator().manual_seed(3)
    q, d, hard = rand_emb(g, 2, 4), rand_emb(g, 2, 4), rand_emb(g, 2, 4)
    zero_b = torch.zeros(2, 2)
    for loss in (losses.inbatch_loss(q, d, zero_b), losses.star_loss(q, d, hard, zero_b, zero_b),
                 losses.randneg_loss(q, d, hard, zero_b), losses.inbatch_loss(q[:1], d[:1], None)):
        assert loss.item() == 0.0 and loss.grad_fn is not None
        for t in grads(loss, q, d):
            assert (t == 0).all()


def test_scores_are_fp32_under_bf16_autocast():
    """bf16 rounding of the logits would move the loss by ~1e-2 here; fp32 scoring keeps it exact."""
    g = torch.Generator().manual_seed(4)
    q32, d32 = torch.randn(8, 64, generator=g) * 3, torch.randn(8, 64, generator=g) * 3
    hard32 = torch.randn(8, 64, generator=g) * 3
    expected = losses.star_loss(q32, d32, hard32)
    expected_adore = losses.adore_loss(q32, hard32.expand(8, 8, 64).clone(),
                                       torch.eye(8), torch.ones(8, 8, dtype=torch.bool), None)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        lin = torch.nn.Linear(64, 64)
        with torch.no_grad():
            lin.weight.copy_(torch.eye(64))
            lin.bias.zero_()
        q16 = lin(q32)  # bf16 under autocast, like an encoder output
        assert q16.dtype == torch.bfloat16
        got = losses.star_loss(q16, d32, hard32)
        got_adore = losses.adore_loss(q16, hard32.expand(8, 8, 64).clone(),
                                      torch.eye(8), torch.ones(8, 8, dtype=torch.bool), None)
    assert got.dtype == torch.float32 and got_adore.dtype == torch.float32
    # only the bf16 rounding of q itself remains: compare with fp32 scoring of the rounded q
    torch.testing.assert_close(got, losses.star_loss(q16.float(), d32, hard32))
    torch.testing.assert_close(got_adore, losses.adore_loss(q16.float(), hard32.expand(8, 8, 64).clone(),
                                                            torch.eye(8), torch.ones(8, 8, dtype=torch.bool),
                                                            None))
    assert abs(got.item() - expected.item()) < 0.05 and abs(got_adore.item() - expected_adore.item()) < 0.05
    # scoring itself in bf16 gives something measurably different
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        bf16_scores = q16 @ d32.T
    assert bf16_scores.dtype == torch.bfloat16
    assert not torch.equal(bf16_scores.float(), q16.float() @ d32.T)


# --------------------------------------------------------------------------- ADORE lists and metrics
def test_build_adore_lists_labels_appending_and_fillers():
    retrieved = np.array([[5, 7, 9, -1],    # relevant 7 retrieved -> nothing appended; -1 filler
                          [1, 2, 3, 4],     # none of 30, 10, 20 retrieved -> appended in qrels order
                          [8, 6, -1, -1],   # none retrieved -> 11 appended
                          [4, 3, 2, 1]])    # every candidate relevant
    rel = [[7, 100], [30, 10, 20], [11], [1, 2, 3, 4]]
    ids, labels, valid = losses.build_adore_lists(retrieved, rel)
    assert ids.dtype == np.int64 and labels.dtype == np.float32 and valid.dtype == bool
    np.testing.assert_array_equal(ids, [[5, 7, 9, -1, -1, -1, -1],
                                        [1, 2, 3, 4, 30, 10, 20],
                                        [8, 6, -1, -1, 11, -1, -1],
                                        [4, 3, 2, 1, -1, -1, -1]])
    np.testing.assert_array_equal(labels, [[0, 1, 0, 0, 0, 0, 0],
                                           [0, 0, 0, 0, 1, 1, 1],
                                           [0, 0, 0, 0, 1, 0, 0],
                                           [1, 1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(valid, ids >= 0)
    for b, (r_ids, r_labels) in enumerate(ref_adore_lists(retrieved, rel)):
        n = len(r_ids)
        np.testing.assert_array_equal(ids[b, :n], r_ids)
        np.testing.assert_array_equal(labels[b, :n], r_labels)
        assert (ids[b, n:] == -1).all()


def test_build_adore_lists_nothing_appended_keeps_k_columns():
    ids, labels, valid = losses.build_adore_lists(np.array([[3, 4, 5]]), [[4]])
    assert ids.shape == (1, 3) and labels.tolist() == [[0, 1, 0]]


def test_adore_batch_metrics():
    retrieved = np.array([[9, 8, 7] + list(range(100, 107)) + [55],   # first relevant at rank 3
                          list(range(200, 210)) + [66],                # relevant only at rank 11
                          [1, 2, -1, -1, -1, -1, -1, -1, -1, -1, -1]])  # rank 2, with fillers
    mrr, r10 = losses.adore_batch_metrics(retrieved, [[7, 8], [66], [2]])
    assert mrr == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)
    assert r10 == pytest.approx(2 / 3)
    mrr, r10 = losses.adore_batch_metrics(retrieved, [[7], [66], [-1]])  # -1 never matches a filler
    assert mrr == pytest.approx((1 / 3) / 3) and r10 == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- ADORE loss
def adore_case(seed, B, K, D, n_docs, fillers, metric_cut):
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(n_docs, D, generator=g)
    retrieved = np.stack([rng.choice(n_docs, size=K, replace=False) for _ in range(B)]).astype(np.int64)
    rel_lists = []
    for b in range(B):
        kind = b % 4
        if kind == 0:      # one relevant, retrieved
            rel_lists.append([int(retrieved[b, rng.integers(K)])])
        elif kind == 1:    # several relevant, some retrieved, some not
            rel_lists.append([int(retrieved[b, 0]), int(retrieved[b, K - 1])]
                             + [int(x) for x in rng.choice(np.setdiff1d(np.arange(n_docs), retrieved[b]), 2,
                                                           replace=False)])
        else:              # relevant not retrieved -> appended (1 or 3 of them)
            pool = np.setdiff1d(np.arange(n_docs), retrieved[b])
            rel_lists.append([int(x) for x in rng.choice(pool, 1 if kind == 2 else 3, replace=False)])
    if fillers:
        retrieved[B - 1, K - fillers:] = -1
    q = (torch.randn(B, D, generator=g) * 1.5).requires_grad_(True)
    return table, retrieved, rel_lists, q


@pytest.mark.parametrize("B,K,D,metric_cut,fillers", [
    (5, 12, 6, None, 0),
    (6, 15, 4, 5, 3),     # metric_cut < neg_topk
    (4, 9, 8, 9, 2),      # cut exactly at K: appended passages get 1/r = 0
    (8, 20, 3, 1, 0),     # only the top position carries weight
    (3, 7, 5, 50, 1),     # cut beyond the list = no cut
])
def test_adore_loss_matches_reference(B, K, D, metric_cut, fillers):
    table, retrieved, rel_lists, q = adore_case(B * 100 + K, B, K, D, 60, fillers, metric_cut)
    ids, labels, valid = losses.build_adore_lists(retrieved, rel_lists)
    cand = losses.gather_candidate_embeddings(table.numpy(), ids, valid).requires_grad_(True)
    fast = losses.adore_loss(q, cand, torch.from_numpy(labels), torch.from_numpy(valid), metric_cut)

    table_leaf = table.clone().requires_grad_(True)
    ref = ref_adore(q, lambda pid: table_leaf[pid], ref_adore_lists(retrieved, rel_lists), metric_cut)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-7)
    gq_fast, gc_fast = torch.autograd.grad(fast, (q, cand))
    gq_ref, gt_ref = torch.autograd.grad(ref, (q, table_leaf))
    torch.testing.assert_close(gq_fast.double(), gq_ref.double(), rtol=1e-4, atol=1e-7)
    # candidate gradients, summed back onto the table rows they came from
    gt_fast = torch.zeros_like(table, dtype=torch.float64)
    flat_ids = torch.from_numpy(ids.reshape(-1))
    keep = flat_ids >= 0
    gt_fast.index_add_(0, flat_ids[keep], gc_fast.reshape(-1, D)[keep].double())
    torch.testing.assert_close(gt_fast, gt_ref.double(), rtol=1e-4, atol=1e-7)
    assert (gc_fast.reshape(-1, D)[~keep] == 0).all()  # fillers and padding take part in no pair


def test_adore_metric_cut_none_is_no_cut_and_learns():
    """The original's ``arr[None:] = 0`` zeroed every weight; None must mean no cut."""
    table, retrieved, rel_lists, q = adore_case(7, 4, 10, 5, 40, 0, None)
    ids, labels, valid = losses.build_adore_lists(retrieved, rel_lists)
    cand = losses.gather_candidate_embeddings(table.numpy(), ids, valid)
    lab, val = torch.from_numpy(labels), torch.from_numpy(valid)
    none = losses.adore_loss(q, cand, lab, val, None)
    assert none.item() > 0
    torch.testing.assert_close(none, losses.adore_loss(q, cand, lab, val, ids.shape[1]))
    (gq,) = torch.autograd.grad(none, q)
    assert gq.abs().sum() > 0
    w = losses.adore_pair_weights(4, None)
    torch.testing.assert_close(w[0], torch.tensor([0.0, 0.5, 2 / 3, 0.75]))
    assert losses.adore_pair_weights(4, 2)[2, 3] == 0 and losses.adore_pair_weights(4, 2)[0, 3] == 1.0


def test_adore_query_without_positive_pairs_counts_as_zero_in_the_mean():
    g = torch.Generator().manual_seed(8)
    D = 4
    table = torch.randn(20, D, generator=g)
    retrieved = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    rel_lists = [[0, 1, 2, 3], [6]]  # query 0: every candidate relevant -> no pair
    ids, labels, valid = losses.build_adore_lists(retrieved, rel_lists)
    cand = losses.gather_candidate_embeddings(table.numpy(), ids, valid)
    q = torch.randn(2, D, generator=g, requires_grad=True)
    both = losses.adore_loss(q, cand, torch.from_numpy(labels), torch.from_numpy(valid), None)
    only1 = losses.adore_loss(q[1:], cand[1:], torch.from_numpy(labels[1:]), torch.from_numpy(valid[1:]), None)
    torch.testing.assert_close(both, only1 / 2)
    (gq,) = torch.autograd.grad(both, q)
    assert (gq[0] == 0).all() and torch.isfinite(gq).all()
    alone = losses.adore_loss(q[:1], cand[:1], torch.from_numpy(labels[:1]), torch.from_numpy(valid[:1]), None)
    assert alone.item() == 0.0 and alone.grad_fn is not None


def test_adore_loss_single_pair_by_hand():
    """One relevant at rank 2, one non-relevant at rank 1: w = 1 - 1/2, L = w * softplus(s1 - s2)."""
    q = torch.tensor([[1.0, 0.0]], requires_grad=True)
    cand = torch.tensor([[[2.0, 0.0], [0.5, 0.0]]])
    loss = losses.adore_loss(q, cand, torch.tensor([[0.0, 1.0]]), torch.tensor([[True, True]]), None)
    assert loss.item() == pytest.approx(0.5 * math.log1p(math.exp(2.0 - 0.5)), rel=1e-6)


def test_adore_batch_without_any_relevant_candidate_is_a_connected_zero():
    q = torch.randn(3, 4, requires_grad=True)
    cand = torch.randn(3, 5, 4)
    loss = losses.adore_loss(q, cand, torch.zeros(3, 5), torch.ones(3, 5, dtype=torch.bool), 3)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    (gq,) = torch.autograd.grad(loss, q)
    assert (gq == 0).all()
