"""Training losses of DRhard as functions over embeddings and masks (no model inside).

Notation (Zhan et al., SIGIR 2021, "Optimizing Dense Retrieval Model Training
with Hard Negatives"): the relevance score is the inner product
``s(q, d) = <q, d>`` (Eq. 1).  Every loss here uses the *pairwise* form of
Eq. 2: for a positive score ``p`` and a negative score ``n``

    -log softmax([p, n])[0] = log(1 + exp(n - p)) = softplus(n - p).

* Inbatch-Neg, Rand-Neg and STAR (Eq. 2 with the negatives of §4 / Eq. 7):
  the loss is the mean of the kept pair losses, ``sum / count``.
* ADORE (Eq. 8 with the LambdaRank-style weights ``|Δ 1/r|``, SPEC §6): a
  weighted RankNet loss over the list the frozen index retrieved.

Scoring is done in fp32 with autocast disabled, whatever precision the encoder
ran in, so a bf16/fp16 forward does not round the logits of the loss.

Empty batches.  A batch can keep no pair at all (every in-batch document is
also relevant to its query, a query with every candidate relevant, ...).  The
losses then return ``0 * (sum of pair losses)``: an exact zero that is still a
function of the embeddings (``grad_fn`` set, gradients all zero), so
``loss.backward()`` works and no NaN from ``0 / 0`` reaches the optimiser.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "pair_loss_terms", "inbatch_loss_terms", "hard_loss_terms",
    "inbatch_loss", "star_loss", "randneg_loss",
    "build_adore_lists", "gather_candidate_embeddings", "adore_inverse_ranks", "adore_pair_weights",
    "adore_loss",
    "adore_batch_metrics",
]


def _no_autocast(t: torch.Tensor):
    """A context that turns autocast off on ``t``'s device (scores stay fp32)."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def _mean_of_kept(loss_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``loss_sum / count``; 0 (still connected to the graph) when no pair is kept."""
    return loss_sum / count.clamp(min=1.0)


# --------------------------------------------------------------------------- Inbatch / Rand / STAR
def pair_loss_terms(pos_scores: torch.Tensor, neg_scores: torch.Tensor,
                    pair_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of the kept pair losses ``softplus(n - p)`` (Eq. 2, pairwise form).

    ``pos_scores`` (B,) are each query's positive score, ``neg_scores`` (B, N)
    the scores of the same query against N negatives; ``pair_mask`` (B, N)
    keeps a pair where it is non-zero (a float mask weights the pair, as in the
    original).  Returns ``(sum, count)`` as fp32 scalars.
    """
    losses = F.softplus(neg_scores - pos_scores.unsqueeze(1))  # (B, N)
    if pair_mask is None:
        return losses.sum(), torch.tensor(float(losses.numel()), device=losses.device)
    mask = pair_mask.to(device=losses.device, dtype=losses.dtype)  # (B, N)
    if mask.shape != losses.shape:
        raise ValueError(f"pair mask has shape {tuple(mask.shape)}, scores have {tuple(losses.shape)}")
    return (losses * mask).sum(), mask.sum()


def inbatch_loss_terms(q_emb: torch.Tensor, d_emb: torch.Tensor,
                       rel_pair_mask: Optional[torch.Tensor] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In-batch pairs: query i's positive ``d_i`` against every in-batch ``d_j``.

    ``rel_pair_mask`` (B, B) is 0 where ``d_j`` is relevant to query i
    (always on the diagonal); ``None`` means ``1 - eye(B)``.  Returns
    ``(sum, count, pos_scores)``; the positive scores (B,) serve the hard
    negatives of STAR.
    """
    with _no_autocast(q_emb):
        q = q_emb.float()  # (B, D)
        d = d_emb.float()  # (B, D)
        scores = q @ d.T  # (B, B)
        pos = scores.diagonal()  # (B,)
        if rel_pair_mask is None:
            rel_pair_mask = 1.0 - torch.eye(scores.shape[0], device=scores.device)  # (B, B)
        loss_sum, count = pair_loss_terms(pos, scores, rel_pair_mask)
    return loss_sum, count, pos


def hard_loss_terms(q_emb: torch.Tensor, pos_scores: torch.Tensor, other_emb: torch.Tensor,
                    other_pair_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each query's positive against *every* extra document of the batch (hard or random).

    ``other_emb`` (H, D) holds all queries' extra documents (H = B * per-query
    number); ``other_pair_mask`` (B, H) is 0 where the document is relevant to
    the query.  Returns ``(sum, count)``.
    """
    with _no_autocast(q_emb):
        scores = q_emb.float() @ other_emb.float().T  # (B, H)
        return pair_loss_terms(pos_scores.float(), scores, other_pair_mask)


def inbatch_loss(q_emb: torch.Tensor, d_emb: torch.Tensor,
                 rel_pair_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Inbatch-Neg loss (Eq. 2 with in-batch negatives): mean over kept in-batch pairs.

    q_emb (B, D), d_emb (B, D) with ``d_emb[i]`` the positive of query i,
    rel_pair_mask (B, B) or None (= 1 - eye).
    """
    loss_sum, count, _ = inbatch_loss_terms(q_emb, d_emb, rel_pair_mask)
    return _mean_of_kept(loss_sum, count)


def star_loss(q_emb: torch.Tensor, d_emb: torch.Tensor, hard_emb: torch.Tensor,
              rel_pair_mask: Optional[torch.Tensor] = None,
              hard_pair_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """STAR loss (Eq. 7: static hard negatives + in-batch random negatives).

    In-batch pairs as :func:`inbatch_loss` plus each positive against every
    hard document of the batch, hard_emb (H, D), masked by hard_pair_mask
    (B, H) (None keeps all).  Loss = (sum of all kept pair losses) / (number of
    kept pairs) over both groups together.
    """
    s1, n1, pos = inbatch_loss_terms(q_emb, d_emb, rel_pair_mask)
    s2, n2 = hard_loss_terms(q_emb, pos, hard_emb, hard_pair_mask)
    return _mean_of_kept(s1 + s2, n1 + n2)


def randneg_loss(q_emb: torch.Tensor, d_emb: torch.Tensor, rand_emb: torch.Tensor,
                 rand_pair_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rand-Neg loss (Eq. 2 with uniformly sampled negatives): random pairs only, no in-batch pairs.

    rand_emb (R, D) are all random documents of the batch; rand_pair_mask
    (B, R) is 0 where a random document happens to be relevant (None keeps all).
    """
    with _no_autocast(q_emb):
        pos = (q_emb.float() * d_emb.float()).sum(-1)  # (B,)
    loss_sum, count = hard_loss_terms(q_emb, pos, rand_emb, rand_pair_mask)
    return _mean_of_kept(loss_sum, count)


# --------------------------------------------------------------------------- ADORE
def build_adore_lists(retrieved: np.ndarray, rel_lists: Sequence[Sequence[int]]
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate lists of ADORE (SPEC §6) from a faiss search result.

    ``retrieved`` (B, K) int64 passage offsets (faiss fills missing hits with
    -1); ``rel_lists[b]`` the relevant passage offsets of query b in
    qrels-file order.  Label = relevant.  When *none* of a query's relevant
    passages was retrieved, all of them are appended after the K retrieved
    ones, in qrels-file order (a pid listed twice in the qrels is appended
    once).  Returns ``cand_ids`` (B, M) int64 padded with -1, ``labels`` (B, M)
    float32 in {0, 1} and ``valid`` (B, M) bool, with M = K + the largest
    number appended.  Positions (hence ranks) are the column indices, so the
    appended passages rank K+1, K+2, ... as in the original.
    """
    retrieved = np.asarray(retrieved, dtype=np.int64)
    if retrieved.ndim != 2 or retrieved.shape[0] != len(rel_lists):
        raise ValueError(f"retrieved has shape {retrieved.shape}, but {len(rel_lists)} relevance lists were given")
    B, K = retrieved.shape
    labels_k = np.zeros((B, K), dtype=bool)
    appended = []
    for b, rel in enumerate(rel_lists):
        rel = list(dict.fromkeys(int(x) for x in rel))  # qrels order, duplicates dropped
        hit = np.isin(retrieved[b], rel) & (retrieved[b] >= 0)  # (K,)
        labels_k[b] = hit
        appended.append(rel if not hit.any() else [])
    extra = max((len(a) for a in appended), default=0)
    cand_ids = np.full((B, K + extra), -1, dtype=np.int64)  # (B, M)
    cand_ids[:, :K] = retrieved
    labels = np.zeros((B, K + extra), dtype=np.float32)  # (B, M)
    labels[:, :K] = labels_k
    for b, rel in enumerate(appended):
        cand_ids[b, K:K + len(rel)] = rel
        labels[b, K:K + len(rel)] = 1.0
    valid = cand_ids >= 0  # (B, M)
    return cand_ids, labels, valid


def gather_candidate_embeddings(passage_embeddings: np.ndarray, cand_ids: np.ndarray,
                                valid: Optional[np.ndarray] = None) -> torch.Tensor:
    """Rows of the (frozen) passage embedding matrix for (B, M) candidate ids; zeros where invalid.

    Returns a float32 tensor (B, M, D); -1 fillers never read a real row.
    """
    cand_ids = np.asarray(cand_ids, dtype=np.int64)
    if valid is None:
        valid = cand_ids >= 0
    rows = np.where(valid, cand_ids, 0).reshape(-1)  # (B*M,)
    emb = np.asarray(passage_embeddings[rows], dtype=np.float32)  # (B*M, D)
    emb[~valid.reshape(-1)] = 0.0
    return torch.from_numpy(emb.reshape(cand_ids.shape[0], cand_ids.shape[1], -1))  # (B, M, D)


def adore_inverse_ranks(num_positions: int, metric_cut: Optional[int],
                        device: Optional[torch.device] = None) -> torch.Tensor:
    """``1/r`` for the 1-based positions r = 1..M, set to 0 beyond ``metric_cut`` (M,) float32.

    ``metric_cut=None`` means no cut (the original's ``arr[None:] = 0`` zeroed
    every weight then, SPEC §9).
    """
    inv_rank = 1.0 / torch.arange(1, num_positions + 1, dtype=torch.float32, device=device)  # (M,)
    if metric_cut is not None:
        inv_rank[max(int(metric_cut), 0):] = 0.0
    return inv_rank


def adore_pair_weights(num_positions: int, metric_cut: Optional[int],
                       device: Optional[torch.device] = None) -> torch.Tensor:
    """``|1/r_i - 1/r_j|`` (M, M) with :func:`adore_inverse_ranks`."""
    inv_rank = adore_inverse_ranks(num_positions, metric_cut, device)  # (M,)
    return (inv_rank.unsqueeze(1) - inv_rank.unsqueeze(0)).abs()  # (M, M)


def adore_loss(q_emb: torch.Tensor, cand_emb: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
               metric_cut: Optional[int] = None) -> torch.Tensor:
    """ADORE's LambdaRank-style loss (Eq. 8, SPEC §6), all queries at once.

    q_emb (B, D) trainable query embeddings, cand_emb (B, M, D) frozen passage
    embeddings of each query's candidate list (see :func:`build_adore_lists`),
    labels (B, M) 0/1 (> 0 = relevant), valid (B, M) bool (False for -1 fillers and padding,
    which take part in no pair).  Scores ``s = <q, d>`` in fp32.  For query q:

        L_q = [ sum_{l_i > l_j} w_ij softplus(-(s_i - s_j))
              + sum_{l_i < l_j} w_ij softplus(s_i - s_j) ] / (2 * #{l_i > l_j})

    with ``w_ij = |1/r_i - 1/r_j|`` (:func:`adore_pair_weights`).  The two sums
    are equal term by term (the pair (i, j) of the second is the pair (j, i)
    of the first, and w is symmetric), so ``L_q`` is computed as the first sum
    over the number of positive pairs; with binary labels those pairs are
    relevant x non-relevant, so the work is (B, #relevant, M), not (B, M, M).  Batch loss = mean of ``L_q`` over the B
    queries; a query with no positive pair (every valid candidate relevant, or
    no relevant passage at all) contributes 0 and still counts in the mean, as
    in the original, which divides the batch sum by the batch size.
    """
    if cand_emb.dim() != 3 or labels.shape != cand_emb.shape[:2] or valid.shape != labels.shape:
        raise ValueError(f"shapes do not fit: cand_emb {tuple(cand_emb.shape)}, labels {tuple(labels.shape)}, "
                         f"valid {tuple(valid.shape)}")
    with _no_autocast(q_emb):
        q = q_emb.float()  # (B, D)
        d = cand_emb.to(device=q.device, dtype=torch.float32)  # (B, M, D)
        valid = valid.to(device=q.device, dtype=torch.bool)  # (B, M)
        lab = labels.to(device=q.device, dtype=torch.float32)  # (B, M)
        # (B, 1, D) @ (B, D, M): on CPU this is ~20x faster than (B, M, D) @ (B, D, 1)
        scores = torch.bmm(q.unsqueeze(1), d.transpose(1, 2)).squeeze(1)  # (B, M)
        rel = (lab > 0) & valid  # (B, M)
        non = (lab <= 0) & valid  # (B, M)
        # Labels are binary, so the pairs with l_i > l_j are (relevant i) x (non-relevant j): gather
        # each query's relevant positions (P = most relevant in one list, a handful) and build
        # (B, P, M) pairs rather than (B, M, M).
        P = max(int(rel.sum(1).max().item()) if rel.numel() else 0, 1)
        rel_idx = torch.argsort(rel.to(torch.int8), dim=1, descending=True, stable=True)[:, :P]  # (B, P)
        rel_ok = rel.gather(1, rel_idx)  # (B, P): False for padding when a query has fewer than P
        inv_rank = adore_inverse_ranks(scores.shape[1], metric_cut, device=q.device)  # (M,)
        weights = (inv_rank[rel_idx].unsqueeze(2) - inv_rank.view(1, 1, -1)).abs()  # (B, P, M)
        diff = scores.gather(1, rel_idx).unsqueeze(2) - scores.unsqueeze(1)  # (B, P, M): s_i - s_j
        pos_pairs = rel_ok.unsqueeze(2) & non.unsqueeze(1)  # (B, P, M): i relevant, j not
        pair_loss = F.softplus(-diff) * weights  # (B, P, M)
        per_query = torch.where(pos_pairs, pair_loss, torch.zeros((), device=q.device)).sum((1, 2))  # (B,)
        num_pos = (rel.sum(1) * non.sum(1)).float()  # (B,)
        per_query = per_query / num_pos.clamp(min=1.0)  # (B,)
        return per_query.mean()


def adore_batch_metrics(retrieved: np.ndarray, rel_lists: Sequence[Sequence[int]]) -> Tuple[float, float]:
    """MRR@10 and R@10 of the retrieved lists (before any appending), averaged over the batch.

    As logged by the original ADORE trainer (``train/mrr_10``,
    ``train/recall_10``): MRR@10 = 1/rank of the first relevant passage in the
    top 10 (0 if none); R@10 = 1 when some relevant passage is in the top 10,
    else 0 (equal to recall for the one-relevant-passage queries of MS MARCO
    train, a hit rate otherwise).
    """
    retrieved = np.asarray(retrieved, dtype=np.int64)
    if len(rel_lists) == 0:
        return 0.0, 0.0
    mrr, hit = 0.0, 0.0
    for row, rel in zip(retrieved[:, :10], rel_lists):
        found = np.flatnonzero(np.isin(row, list(rel)) & (row >= 0))
        if len(found):
            mrr += 1.0 / (found[0] + 1)
            hit += 1.0
    return mrr / len(rel_lists), hit / len(rel_lists)
