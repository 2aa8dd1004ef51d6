"""Encoding throughput: length-sorted batches vs the original's file-order batches, side by side.

    python bench/encode.py                 # MiniLM-shaped encoder (6 x 384), 2000 rows
    python bench/encode.py --model roberta-base --n 500

Rows get MS MARCO-like lengths (lognormal, mean ~80 tokens, clipped to
[8, max_len]); both runs embed the same rows with the same random model through
``drhard.encode.encode_cache``.  The original batching keeps file order and pads
its first 10 batches to ``max_len`` (later ones to the batch's longest row).
Achieved GFLOP/s counts the work done (padding included) and the useful work
(real tokens only), against a plain fp32 matmul measured in the same run.
"""
import argparse
import logging
import os
import sys
import tempfile
import time

try:
    import drhard  # noqa: F401
except ImportError:  # run from a checkout without `pip install .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from transformers import RobertaConfig

from drhard.encode import cut_lengths, encode_cache, file_order_batches, length_sorted_batches
from drhard.io import TokenCache, token_memmap_path, write_meta
from drhard.model import RobertaDot

SHAPES = {  # hidden, layers, heads, intermediate
    "minilm": (384, 6, 12, 1536),
    "roberta-base": (768, 12, 12, 3072),
}
ORIGINAL_FULL_PAD_BATCHES = 10


def make_rows(folder, n, max_len, mean_len, seed):
    rng = np.random.default_rng(seed)
    sigma = 0.6
    lengths = rng.lognormal(np.log(mean_len) - sigma ** 2 / 2, sigma, size=n)
    lengths = np.clip(np.round(lengths), 8, max_len).astype(np.int64)
    ids = np.zeros((n, max_len), dtype=np.int32)
    for i, ln in enumerate(lengths):
        ids[i, 0], ids[i, ln - 1] = 0, 2
        ids[i, 1:ln - 1] = rng.integers(3, 50000, size=ln - 2)
    prefix = os.path.join(folder, "passages")
    ids.tofile(token_memmap_path(prefix))
    np.save(prefix + "_length.npy", lengths)
    write_meta(prefix, n, max_len)
    return TokenCache(prefix)


def seq_flops(t, hidden, layers, inter):
    """Forward FLOPs of one sequence padded to ``t`` tokens (projections, FFN, attention scores and mix)."""
    t = np.asarray(t, dtype=np.float64)
    return layers * (2 * t * (4 * hidden * hidden + 2 * hidden * inter) + 4 * t * t * hidden)


def plan_flops(batches, cut, max_len, pad_first, shape):
    hidden, layers, _, inter = shape
    done = 0.0
    padded_tokens = 0
    for b, rows in enumerate(batches):
        t = max_len if b < pad_first else int(cut[rows].max())
        done += len(rows) * seq_flops(t, hidden, layers, inter)
        padded_tokens += len(rows) * t
    useful = float(seq_flops(cut, hidden, layers, inter).sum())
    return done, useful, padded_tokens


def matmul_gflops(n=2048, reps=3):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="minilm")
    parser.add_argument("--n", type=int, default=2000, help="rows to encode")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_len", type=int, default=256)
    parser.add_argument("--mean_len", type=float, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden, layers, heads, inter = shape = SHAPES[args.model]
    torch.manual_seed(args.seed)
    config = RobertaConfig(vocab_size=50265, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=inter, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2)
    model = RobertaDot(config).eval()
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        cache = make_rows(tmp, args.n, args.max_len, args.mean_len, args.seed)
        cut = cut_lengths(cache.lengths, args.max_len)
        print(f"model {args.model} ({layers} x {hidden}), {args.n} rows, lengths mean {cut.mean():.1f} "
              f"median {np.median(cut):.0f} p99 {np.percentile(cut, 99):.0f} max {cut.max()}, batch {args.batch_size}, "
              f"max_len {args.max_len}, torch threads {torch.get_num_threads()}")
        peak = matmul_gflops()
        encode_cache(model, TokenCacheSlice(cache, 64), args.max_len, args.batch_size, device, progress=False)  # warm-up
        runs = {}
        variants = (("original (file order, first 10 full)", False, ORIGINAL_FULL_PAD_BATCHES),
                    ("file order, batch-max padding only", False, 0),
                    ("length-sorted", True, 0))
        for name, sort, pad_first in variants:
            batches = (length_sorted_batches(cache.lengths, args.max_len, args.batch_size) if sort
                       else file_order_batches(args.n, args.batch_size))
            done, useful, padded = plan_flops(batches, cut, args.max_len, pad_first, shape)
            t0 = time.perf_counter()
            emb = encode_cache(model, cache, args.max_len, args.batch_size, device, sort_by_length=sort,
                               pad_first=pad_first, progress=False)
            wall = time.perf_counter() - t0
            runs[name] = (wall, emb, done, useful, padded)
        peak = max(peak, matmul_gflops())  # before and after: the better of two, on a shared machine
        for name, (wall, _, done, useful, padded) in runs.items():
            print(f"{name:38s} {wall:7.1f} s {args.n / wall:8.1f} seq/s  tokens computed/real "
                  f"{padded / cut.sum():.2f}  achieved {done / wall / 1e9:6.1f} GFLOP/s "
                  f"({100 * done / wall / 1e9 / peak:3.0f}% of matmul)  useful {useful / wall / 1e9:6.1f} GFLOP/s")
        (w0, e0, *_), (w1, *_), (w2, e2, *_) = runs.values()
        print(f"fp32 matmul 2048^3: {peak:.1f} GFLOP/s")
        print(f"speed-up of length-sorted batching: {w0 / w2:.2f}x over the original, {w1 / w2:.2f}x over file "
              f"order without the full-length first batches; max |diff| of embeddings {np.abs(e0 - e2).max():.2e}")


class TokenCacheSlice:
    """The first ``n`` rows of a TokenCache (for a warm-up run)."""

    def __init__(self, cache, n):
        self.ids, self.lengths = cache.ids[:n], cache.lengths[:n]

    def __len__(self):
        return len(self.lengths)


if __name__ == "__main__":
    main()
