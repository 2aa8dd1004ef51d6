"""Training losses of DRhard as functions over embeddings and masks (no model inside).

Notation (Zhan et al., SIGIR 2021, "Optimizing Dense Retrieval Model Training
with Hard Negatives"): the relevance score is the inner product
``s(q, d) = <q, d>`` (Eq. 1).  Every loss here uses the *pairwise* form of
Eq. 2: for a positive score ``p`` and a negative score ``n``

    -log softmax([p, n])[0] = log(1 + exp(n - p)) = softplus(n - p).

* Inbatch-Neg, Rand-Neg and STAR (Eq. 2 with the negatives of §4 / Eq. 7):
  the loss is the mean of the kept pair losses, ``sum / count``.
* ADORE (Eq. 8 with the LambdaRank-style weights ``|Δ 1/r|``): a weighted
  RankNet loss over the list the frozen index retrieved, built as the original
  built it (:func:`build_adore_lists`, :func:`adore_query_losses`).

Across devices (``drhard.distributed``, one process per GPU) every loss comes
in two scopes, :data:`LOSS_SCOPES`:

* ``"device"`` (default): each rank computes the loss of its own share of the
  batch with its own masks (the functions above as they are): what each
  replica of the original computed.  DDP averages the ranks' gradients, so the
  step follows the mean of the per-rank losses; negatives never cross devices.
* ``"global"`` (the ``*_global`` functions): the documents of every rank are
  gathered with their gradient (``distributed.all_gather_with_grad``); each
  rank scores its *own* queries against *every* gathered document; the masks
  compare passage offsets (a query's relevant offsets, :func:`relevant_offsets`,
  against the gathered documents' offsets), never batch positions; and each
  rank's loss is scaled so that DDP's average of the ranks' gradients is the
  gradient of the single-process loss on the global batch.  Derivation: with W
  ranks, let ``S_r`` be the sum of the kept pair losses of rank r's queries
  (against all gathered documents) and ``C_r`` their number.  One process on
  the global batch computes ``L = S / C`` with ``S = sum_r S_r`` and
  ``C = sum_r C_r``.  Rank r returns ``l_r = W * S_r / C`` (``C`` all-reduced;
  a constant, as masks do not depend on the weights).  The gather's backward
  routes ``d l_s / d(documents of r)`` of every rank s to rank r, so the ranks'
  parameter gradients add up to ``d(sum_r l_r)/d theta``; DDP divides by W:
  ``(1/W) d(sum_r W S_r / C)/d theta = d(S / C)/d theta = dL/d theta``.  The
  mean of the ranks' ``l_r`` is ``L`` (the number to log).  ADORE likewise:
  ``L = (1/B) sum_q L_q`` over the B queries of all ranks, rank r returns
  ``W * sum_{q of r} L_q / B`` (ranks may hold unequal shares).  In a single
  process (W = 1) the global functions equal the device ones.

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

from . import distributed as ddist

logger = logging.getLogger(__name__)

__all__ = [
    "LOSS_SCOPES",
    "pair_loss_terms", "inbatch_loss_terms", "neg_loss_terms",
    "inbatch_loss", "star_loss", "randneg_loss",
    "relevant_offsets", "offset_pair_mask", "global_pair_terms",
    "inbatch_loss_global", "star_loss_global", "randneg_loss_global", "training_loss",
    "build_adore_lists", "gather_candidate_embeddings", "adore_inverse_ranks", "adore_pair_weights",
    "adore_query_losses", "adore_loss", "adore_loss_global", "adore_training_loss",
    "adore_batch_metrics",
]

LOSS_SCOPES = ("device", "global")


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


def neg_loss_terms(q_emb: torch.Tensor, pos_scores: torch.Tensor, neg_emb: torch.Tensor,
                   neg_pair_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each query's positive against *every* negative of the batch (static hard negatives or random ones).

    ``neg_emb`` (H, D) holds all queries' negatives (H = B * hard_num);
    ``neg_pair_mask`` (B, H) is 0 where the negative is relevant to the query
    (the collator's ``neg_pair_mask``).  Returns ``(sum, count)``.
    """
    with _no_autocast(q_emb):
        scores = q_emb.float() @ neg_emb.float().T  # (B, H)
        return pair_loss_terms(pos_scores.float(), scores, neg_pair_mask)


def inbatch_loss(q_emb: torch.Tensor, d_emb: torch.Tensor,
                 rel_pair_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Inbatch-Neg loss (Eq. 2 with in-batch negatives): mean over kept in-batch pairs.

    q_emb (B, D), d_emb (B, D) with ``d_emb[i]`` the positive of query i,
    rel_pair_mask (B, B) or None (= 1 - eye).
    """
    loss_sum, count, _ = inbatch_loss_terms(q_emb, d_emb, rel_pair_mask)
    return _mean_of_kept(loss_sum, count)


def star_loss(q_emb: torch.Tensor, d_emb: torch.Tensor, neg_emb: torch.Tensor,
              rel_pair_mask: Optional[torch.Tensor] = None,
              neg_pair_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """STAR loss (Eq. 7: static hard negatives + in-batch random negatives).

    In-batch pairs as :func:`inbatch_loss` plus each positive against every
    hard negative of the batch, neg_emb (H, D), masked by neg_pair_mask
    (B, H) (None keeps all).  Loss = (sum of all kept pair losses) / (number of
    kept pairs) over both groups together.
    """
    s1, n1, pos = inbatch_loss_terms(q_emb, d_emb, rel_pair_mask)
    s2, n2 = neg_loss_terms(q_emb, pos, neg_emb, neg_pair_mask)
    return _mean_of_kept(s1 + s2, n1 + n2)


def randneg_loss(q_emb: torch.Tensor, d_emb: torch.Tensor, neg_emb: torch.Tensor,
                 neg_pair_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rand-Neg loss (Eq. 2 with uniformly sampled negatives): random pairs only, no in-batch pairs.

    neg_emb (R, D) are all random negatives of the batch; neg_pair_mask
    (B, R) is 0 where a random negative happens to be relevant (None keeps all).
    """
    with _no_autocast(q_emb):
        pos = (q_emb.float() * d_emb.float()).sum(-1)  # (B,)
    loss_sum, count = neg_loss_terms(q_emb, pos, neg_emb, neg_pair_mask)
    return _mean_of_kept(loss_sum, count)


# --------------------------------------------------------------------------- across devices
def relevant_offsets(rel_lists: Sequence[Sequence[int]], width: Optional[int] = None) -> torch.Tensor:
    """Each query's relevant passage offsets as one padded (B, R) int64 tensor (-1 = padding).

    ``rel_lists[b]`` are query b's relevant poffsets (any order, duplicates
    allowed); R is the longest list (at least 1) or ``width``.  This is what a
    batch carries instead of position-based masks in the global scope: it can
    be compared with the offsets of documents held by any rank.
    """
    rows = [sorted(set(int(p) for p in rel)) for rel in rel_lists]
    if any(p < 0 for r in rows for p in r):
        raise ValueError("passage offsets must be >= 0 (-1 is the padding)")
    R = max([len(r) for r in rows] + [1]) if width is None else int(width)
    if any(len(r) > R for r in rows):
        raise ValueError(f"a query has more than width={R} relevant passages")
    out = torch.full((len(rows), R), -1, dtype=torch.long)  # (B, R)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def offset_pair_mask(rel_offsets: torch.Tensor, doc_offsets: torch.Tensor) -> torch.Tensor:
    """(B, N) float mask: 0 where document n's passage offset is one of query b's relevant offsets, else 1.

    ``rel_offsets`` (B, R) int64 padded with -1 (:func:`relevant_offsets`),
    ``doc_offsets`` (N,) int64 (>= 0).  With the batch's own positives as
    documents this is the collator's ``rel_pair_mask``; with the positives or
    negatives gathered from every rank it is the global mask.
    """
    rel = rel_offsets.to(dtype=torch.long)  # (B, R)
    docs = doc_offsets.to(device=rel.device, dtype=torch.long)  # (N,)
    hit = (rel.unsqueeze(2) == docs.view(1, 1, -1)) & (rel.unsqueeze(2) >= 0)  # (B, R, N)
    return 1.0 - hit.any(dim=1).float()  # (B, N)


def global_pair_terms(q_emb: torch.Tensor, pos_scores: torch.Tensor, doc_emb: torch.Tensor,
                      rel_offsets: Optional[torch.Tensor], doc_offsets: Optional[torch.Tensor],
                      exclude_own: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of the kept pairs (each own query, every document of every rank).

    ``doc_emb`` (n, D) are this rank's documents, gathered with their gradient
    into (N, D) in rank order; ``doc_offsets`` (n,) their passage offsets,
    gathered the same way.  A pair is dropped where the document's offset is
    relevant to the query (:func:`offset_pair_mask`); ``rel_offsets=None``
    drops nothing.  ``exclude_own`` also drops query i's pair with its own
    positive (the in-batch documents: the gathered row of local row i), which
    is already dropped when ``rel_offsets`` lists the positive.  A collective:
    every rank calls it in the same order.
    """
    b = q_emb.shape[0]
    if exclude_own and doc_emb.shape[0] != b:
        raise ValueError(f"exclude_own needs one document per query, got {doc_emb.shape[0]} for {b}")
    sizes = ddist.gather_sizes(doc_emb.shape[0])
    docs = ddist.all_gather_with_grad(doc_emb, sizes)  # (N, D)
    if rel_offsets is not None:
        if doc_offsets is None:
            raise ValueError("relevant offsets given without the documents' offsets")
        offs = ddist.all_gather_no_grad(doc_offsets.to(device=doc_emb.device, dtype=torch.long), sizes)  # (N,)
        mask = offset_pair_mask(rel_offsets.to(doc_emb.device), offs)  # (b, N)
    else:
        mask = torch.ones(b, docs.shape[0], device=doc_emb.device)  # (b, N)
    if exclude_own:
        start = sum(sizes[: ddist.rank()])
        rows = torch.arange(b, device=mask.device)  # (b,)
        mask[rows, start + rows] = 0.0
    with _no_autocast(q_emb):
        scores = q_emb.float() @ docs.float().T  # (b, N)
        return pair_loss_terms(pos_scores.float(), scores, mask)


def _rank_share(loss_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``W * S_r / C`` with ``C`` the count summed over ranks (module docstring); 0 when no pair is kept."""
    total = ddist.all_reduce_sum(count.detach())
    return ddist.world_size() * _mean_of_kept(loss_sum, total)


def _positive_scores(q_emb: torch.Tensor, d_emb: torch.Tensor) -> torch.Tensor:
    with _no_autocast(q_emb):
        return (q_emb.float() * d_emb.float()).sum(-1)  # (b,)


def inbatch_loss_global(q_emb: torch.Tensor, d_emb: torch.Tensor, rel_offsets: Optional[torch.Tensor] = None,
                        pos_offsets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Inbatch-Neg across devices: own queries against the positives of every rank (this rank's loss share).

    q_emb, d_emb (b, D) this rank's queries and their positives; rel_offsets
    (b, R) their relevant passage offsets (-1 padded); pos_offsets (b,) the
    positives' offsets.  ``rel_offsets=None`` drops only each query's own
    positive (as ``rel_pair_mask=None`` does in :func:`inbatch_loss`).
    Returns ``W * S_r / C`` (module docstring); single process: :func:`inbatch_loss`.
    """
    pos = _positive_scores(q_emb, d_emb)  # (b,)
    s, n = global_pair_terms(q_emb, pos, d_emb, rel_offsets, pos_offsets, exclude_own=True)
    return _rank_share(s, n)


def star_loss_global(q_emb: torch.Tensor, d_emb: torch.Tensor, neg_emb: torch.Tensor,
                     rel_offsets: Optional[torch.Tensor] = None, pos_offsets: Optional[torch.Tensor] = None,
                     neg_offsets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """STAR across devices: own queries against every rank's positives and hard negatives (one mean).

    As :func:`inbatch_loss_global` plus neg_emb (h, D) this rank's hard
    negatives with neg_offsets (h,) their passage offsets; a negative is
    dropped for a query it is relevant to (``rel_offsets=None`` keeps all, as
    ``neg_pair_mask=None`` does).  Returns ``W * S_r / C`` over both groups
    together; single process: :func:`star_loss`.
    """
    pos = _positive_scores(q_emb, d_emb)  # (b,)
    s1, n1 = global_pair_terms(q_emb, pos, d_emb, rel_offsets, pos_offsets, exclude_own=True)
    s2, n2 = global_pair_terms(q_emb, pos, neg_emb, rel_offsets, neg_offsets)
    return _rank_share(s1 + s2, n1 + n2)


def randneg_loss_global(q_emb: torch.Tensor, d_emb: torch.Tensor, neg_emb: torch.Tensor,
                        rel_offsets: Optional[torch.Tensor] = None,
                        neg_offsets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rand-Neg across devices: own queries' positives against the random negatives of every rank.

    neg_emb (h, D) and neg_offsets (h,) this rank's random negatives; no
    in-batch pairs.  Returns ``W * S_r / C``; single process: :func:`randneg_loss`.
    """
    pos = _positive_scores(q_emb, d_emb)  # (b,)
    s, n = global_pair_terms(q_emb, pos, neg_emb, rel_offsets, neg_offsets)
    return _rank_share(s, n)


def training_loss(negative_type: str, q_emb: torch.Tensor, d_emb: torch.Tensor,
                  neg_emb: Optional[torch.Tensor], batch, scope: str = "device") -> torch.Tensor:
    """The loss of one STAR / Inbatch-Neg / Rand-Neg training batch, in either scope.

    ``negative_type`` star | inbatch | random; ``neg_emb`` the embeddings of
    ``batch["neg_ids"]`` (None for inbatch).  ``batch`` is the collator's dict:
    scope ``device`` reads ``rel_pair_mask`` (B, B) and ``neg_pair_mask``
    (B, B*hard_num); scope ``global`` reads ``rel_offsets`` (B, R),
    ``pos_offsets`` (B,) and ``neg_offsets`` (B*hard_num,).  With DDP, the
    global scope's value is this rank's share (module docstring).
    """
    if scope not in LOSS_SCOPES:
        raise ValueError(f"loss scope must be one of {LOSS_SCOPES}, got {scope!r}")
    if negative_type not in ("star", "inbatch", "random"):
        raise ValueError(f"negative type must be star, inbatch or random, got {negative_type!r}")
    if negative_type != "inbatch" and neg_emb is None:
        raise ValueError(f"negative type {negative_type} needs the negatives' embeddings")
    if scope == "device":
        if negative_type == "inbatch":
            return inbatch_loss(q_emb, d_emb, batch.get("rel_pair_mask"))
        if negative_type == "star":
            return star_loss(q_emb, d_emb, neg_emb, batch.get("rel_pair_mask"), batch.get("neg_pair_mask"))
        return randneg_loss(q_emb, d_emb, neg_emb, batch.get("neg_pair_mask"))
    rel, pos_off, neg_off = batch.get("rel_offsets"), batch.get("pos_offsets"), batch.get("neg_offsets")
    if negative_type == "inbatch":
        return inbatch_loss_global(q_emb, d_emb, rel, pos_off)
    if negative_type == "star":
        return star_loss_global(q_emb, d_emb, neg_emb, rel, pos_off, neg_off)
    return randneg_loss_global(q_emb, d_emb, neg_emb, rel, neg_off)


# --------------------------------------------------------------------------- ADORE
def build_adore_lists(retrieved: np.ndarray, rel_lists: Sequence[Sequence[int]]
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate lists of ADORE from a faiss search result, as the original's trainer built them.

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
    every weight then).
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
    """ADORE's loss of a batch: the mean of :func:`adore_query_losses` over its B queries."""
    return adore_query_losses(q_emb, cand_emb, labels, valid, metric_cut).mean()


def adore_query_losses(q_emb: torch.Tensor, cand_emb: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                       metric_cut: Optional[int] = None) -> torch.Tensor:
    """ADORE's LambdaRank-style loss (the paper's Eq. 8, as the original computed it) of every query, all at
    once: (B,).

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
        return per_query / num_pos.clamp(min=1.0)  # (B,)


def adore_loss_global(q_emb: torch.Tensor, cand_emb: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                      metric_cut: Optional[int] = None) -> torch.Tensor:
    """ADORE across devices: this rank's share ``W * sum_{own q} L_q / B`` of the global mean.

    B is the number of queries of all ranks (all-reduced), so ranks may hold
    unequal shares; the candidates are frozen, nothing is gathered.  Single
    process: :func:`adore_loss`.
    """
    per_query = adore_query_losses(q_emb, cand_emb, labels, valid, metric_cut)  # (b,)
    total = ddist.all_reduce_sum(per_query.shape[0])
    return ddist.world_size() * per_query.sum() / max(total, 1)


def adore_training_loss(q_emb: torch.Tensor, cand_emb: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                        metric_cut: Optional[int] = None, scope: str = "device") -> torch.Tensor:
    """:func:`adore_loss` (scope ``device``: the mean over this rank's queries) or :func:`adore_loss_global`."""
    if scope not in LOSS_SCOPES:
        raise ValueError(f"loss scope must be one of {LOSS_SCOPES}, got {scope!r}")
    fn = adore_loss if scope == "device" else adore_loss_global
    return fn(q_emb, cand_emb, labels, valid, metric_cut)


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
