"""Exact search side by side: faiss IndexFlatIP in RAM vs streamed search (fp32 and fp16 files) vs TorchFlatIndex.

Variants: ``faiss`` (``drhard.index``: the whole matrix in an IndexFlatIP),
``stream-fp32`` / ``stream-fp16`` (``search_memmap`` on the float32 / float16
file, faiss scorer), ``stream-fp32-torch`` (the same with the torch scorer),
``torch-fp32`` / ``torch-fp16`` (``TorchFlatIndex`` on the CPU, fp32 / fp16
storage).

    python bench/search.py                     # N 200k x 768, 2000 queries, k 200
    python bench/search.py --n 1000000 --queries 500

The parent writes random embeddings (float32 and float16 files) and queries
into a temporary folder, then runs each variant in its own subprocess so that
its peak resident memory (VmHWM) is its own.  Each child imports everything and
does a tiny warm-up search before it reads VmHWM as its baseline; "RSS +" is the
growth over that baseline, i.e. what the index or the stream costs.  The files
were just written, so they are in the page cache: cold-disk reads are not part
of these timings.  Time of faiss and TorchFlatIndex is split into loading the
index (build) and searching; a streamed search has no build step.  GFLOP/s
counts 2 N D Q multiply-adds over the search time (build excluded); with
``--repeat R`` each variant searches R times and the fastest counts.

Ids are compared with faiss' position by position: "same" over all places,
"same*" over places whose faiss score is not within 1e-5 (relative) of a
neighbour's (near-ties may legitimately swap), and "overlap" as the share of
faiss' top-k set found.  fp16 variants search rounded rows, so only their
overlap is expected to be high, not exact agreement.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

try:
    import drhard  # noqa: F401
except ImportError:  # run from a checkout without `pip install .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

VARIANTS = ("faiss", "stream-fp32", "stream-fp16", "stream-fp32-torch", "torch-fp32", "torch-fp16")
GEN_ROWS = 65536


def vm_hwm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def write_data(folder, n, dim, nq, seed):
    """Random rows to <folder>/x32.bin and x16.bin (written in pieces, so any --n fits), queries to q.npy."""
    rng = np.random.default_rng(seed)
    with open(os.path.join(folder, "x32.bin"), "wb") as f32, open(os.path.join(folder, "x16.bin"), "wb") as f16:
        for start in range(0, n, GEN_ROWS):
            part = rng.standard_normal((min(GEN_ROWS, n - start), dim), dtype=np.float32)  # (C, D)
            part.tofile(f32)
            part.astype(np.float16).tofile(f16)
    np.save(os.path.join(folder, "q.npy"), rng.standard_normal((nq, dim), dtype=np.float32))


def child(args):
    """One variant: load, search, write ids/scores and timings into the data folder."""
    import torch
    from drhard import exact_search as es
    from drhard import index as dindex
    from drhard.io import open_embeddings

    if args.threads:
        torch.set_num_threads(args.threads)
    q = np.load(os.path.join(args.dir, "q.npy"))
    dim = q.shape[1]
    f32, f16 = os.path.join(args.dir, "x32.bin"), os.path.join(args.dir, "x16.bin")
    tiny = np.random.default_rng(1).standard_normal((64, dim), dtype=np.float32)  # warm-up: kernels, thread pools
    es.search_memmap(tiny, q[:4], 8, progress=False)
    es.TorchFlatIndex(tiny).search(torch.from_numpy(q[:4]), 8)
    idx = dindex.build_index(tiny, omp_threads=args.threads)
    dindex.search(idx, q[:4], 8, progress=False)
    del idx
    base = vm_hwm_bytes()
    v = args.child
    t0 = time.perf_counter()
    if v == "faiss":
        idx = dindex.build_index(open_embeddings(f32, dim=dim), omp_threads=args.threads)

        def run():
            return dindex.search(idx, q, args.k, progress=False)
    elif v.startswith("stream"):
        path, dtype = (f16, np.float16) if v.startswith("stream-fp16") else (f32, np.float32)
        scorer = "torch" if v.endswith("-torch") else "auto"

        def run():
            return es.search_memmap(path, q, args.k, chunk_rows=args.chunk_rows, dtype=dtype,
                                    query_batch=args.query_batch, progress=False, scorer=scorer)
    else:
        path, fdt, tdt = (f32, np.float32, torch.float32) if v == "torch-fp32" else (f16, np.float16, torch.float16)
        idx = es.TorchFlatIndex(path, dim=dim, file_dtype=fdt, dtype=tdt, chunk_rows=args.chunk_rows)

        def run():
            s, i = idx.search(torch.from_numpy(q), args.k, query_batch=args.query_batch)
            return s.numpy(), i.numpy()
    t1 = time.perf_counter()
    times = []
    for _ in range(args.repeat):  # the fastest of --repeat searches (the machine may be shared)
        t = time.perf_counter()
        scores, ids = run()
        times.append(time.perf_counter() - t)
    t2 = t1 + min(times)
    np.save(os.path.join(args.dir, f"{v}.ids.npy"), ids)
    np.save(os.path.join(args.dir, f"{v}.scores.npy"), scores)
    with open(os.path.join(args.dir, f"{v}.json"), "w") as f:
        json.dump({"build_s": t1 - t0, "search_s": t2 - t1, "hwm_base": base, "hwm": vm_hwm_bytes()}, f)


def agreement(ref_s, ref_i, ids):
    same = ids == ref_i
    tol = 1e-5 * np.maximum(1.0, np.abs(ref_s))
    gap = np.abs(np.diff(ref_s, axis=1)) > tol[:, 1:]
    distinct = np.ones_like(same)
    distinct[:, 1:] &= gap
    distinct[:, :-1] &= gap
    overlap = np.mean([len(np.intersect1d(a, b)) / len(a) for a, b in zip(ref_i, ids)])
    return same.mean(), same[distinct].mean(), overlap


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200000, help="rows in the index")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--chunk_rows", type=int, default=None, help="rows per chunk (default: from MemAvailable)")
    parser.add_argument("--query_batch", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="torch/faiss threads (default: all cores)")
    parser.add_argument("--repeat", type=int, default=1, help="searches per variant; the fastest is reported")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if "faiss" not in args.variants:
        args.variants.insert(0, "faiss")  # the reference every other variant is compared with
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        t0 = time.perf_counter()
        write_data(tmp, args.n, args.dim, args.queries, args.seed)
        flops = 2.0 * args.n * args.dim * args.queries
        print(f"N {args.n} x {args.dim}, {args.queries} queries, k {args.k}, {os.cpu_count()} cores, "
              f"fp32 file {args.n * args.dim * 4 / 2 ** 20:.0f} MiB (data written in {time.perf_counter() - t0:.1f}s)")
        rows = {}
        for v in args.variants:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", v, "--dir", tmp, "--k", str(args.k),
                   "--query_batch", str(args.query_batch), "--repeat", str(args.repeat)]
            for flag in ("chunk_rows", "threads"):
                if getattr(args, flag):
                    cmd += [f"--{flag}", str(getattr(args, flag))]
            subprocess.run(cmd, check=True)
            with open(os.path.join(tmp, f"{v}.json")) as f:
                rows[v] = json.load(f)
        ref_s, ref_i = np.load(os.path.join(tmp, "faiss.scores.npy")), np.load(os.path.join(tmp, "faiss.ids.npy"))
        fa = rows["faiss"]
        print(f"{'variant':<17} {'build s':>8} {'search s':>9} {'q/s':>8} {'GFLOP/s':>8} {'x faiss':>8} "
              f"{'peak MiB':>9} {'RSS+ MiB':>9} {'same':>7} {'same*':>7} {'overlap':>8}")
        for v in args.variants:
            r = rows[v]
            ids = np.load(os.path.join(tmp, f"{v}.ids.npy"))
            same, same_d, overlap = agreement(ref_s, ref_i, ids)
            print(f"{v:<17} {r['build_s']:8.2f} {r['search_s']:9.2f} {args.queries / r['search_s']:8.1f} "
                  f"{flops / r['search_s'] / 1e9:8.1f} {fa['search_s'] / r['search_s']:8.2f} "
                  f"{r['hwm'] / 2 ** 20:9.0f} {(r['hwm'] - r['hwm_base']) / 2 ** 20:9.0f} "
                  f"{same:7.2%} {same_d:7.2%} {overlap:8.2%}")


if __name__ == "__main__":
    main()
