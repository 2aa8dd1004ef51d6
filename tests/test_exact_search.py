"""Streamed and torch-device exact search against a slow obvious reference, faiss, and a resident-memory bound.

Most checks use small-integer embeddings: every inner product is then an exact
float32 integer whatever the summation order, so scores tie often and exactly,
and the results must equal the reference bit for bit, tie order included
(equal scores: lower row id first).
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drhard import exact_search as es
from drhard.errors import DataError, NonFiniteError

FILLER = np.finfo(np.float32).min


def reference(x, q, k):
    """Full score matrix in float32, stable descending sort (lower id first among equal scores), faiss fillers."""
    x = np.asarray(x, dtype=np.float32)
    s = np.asarray(q, dtype=np.float32) @ x.T  # (Q, N)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(s, order, axis=1)
    pad = k - order.shape[1]
    if pad > 0:
        order = np.concatenate([order, np.full((len(q), pad), -1)], axis=1)
        scores = np.concatenate([scores, np.full((len(q), pad), FILLER, np.float32)], axis=1)
    return scores.astype(np.float32), order.astype(np.int64)


def int_data(n=1000, d=16, nq=37, seed=0, lo=-3, hi=4):
    """Small integers: exact scores, many ties; plus duplicate rows (a tied block for every query)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(lo, hi, size=(n, d)).astype(np.float32)
    if n > 40:
        x[20:30] = x[3]
        x[n - 5:] = x[3]
    q = rng.integers(lo, hi, size=(nq, d)).astype(np.float32)
    if nq > 2 and n > 3:
        q[:2] = x[3]
    return x, q


def gauss_data(n=2000, d=32, nq=50, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[100:110] = x[0]
    q = rng.standard_normal((nq, d)).astype(np.float32)
    return x, q


def distinct_places(ref_scores, rtol=1e-5):
    """Ranks whose score is not within rtol of a neighbour's: there the ids of any exact search must agree."""
    tol = rtol * np.maximum(1.0, np.abs(ref_scores))
    gap = np.abs(np.diff(ref_scores, axis=1)) > tol[:, 1:]
    distinct = np.ones_like(ref_scores, dtype=bool)
    distinct[:, 1:] &= gap
    distinct[:, :-1] &= gap
    return distinct


def assert_exact(got, want):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def write_file(path, x, dtype):
    np.ascontiguousarray(x, dtype=dtype).tofile(path)
    return str(path)


# --------------------------------------------------------------------------- streamed search, exact on integers
SCORERS = [pytest.param("faiss", marks=pytest.mark.skipif(es.faiss_knn() is None, reason="needs faiss")), "torch"]


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 999, 1000, 5000])
@pytest.mark.parametrize("k", [1, 10, 150])
def test_stream_equals_reference_with_ties(tmp_path, chunk_rows, k, scorer):
    x, q = int_data()
    path = write_file(tmp_path / "x.bin", x, np.float32)
    got = es.search_memmap(path, q, k, chunk_rows=chunk_rows, query_batch=16, progress=False, scorer=scorer)
    assert got[0].dtype == np.float32 and got[1].dtype == np.int64 and got[1].shape == (len(q), k)
    want = reference(x, q, k)
    assert_exact(got, want)
    # ties straddle the cut at rank k for some queries: which tied rows make the cut is tested too
    wider = reference(x, q, k + 1)[0]
    assert (wider[:, k - 1] == wider[:, k]).any()


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("query_batch", [1, 5, 37, 4096])
def test_query_batches_do_not_change_results(tmp_path, query_batch, scorer):
    x, q = int_data()
    path = write_file(tmp_path / "x.bin", x, np.float32)
    assert_exact(es.search_memmap(path, q, 25, chunk_rows=128, query_batch=query_batch, progress=False,
                                  scorer=scorer), reference(x, q, 25))


def test_k_larger_than_n_pads_like_faiss(tmp_path):
    faiss = pytest.importorskip("faiss")
    x, q = int_data(n=5, nq=4)
    got = es.search_memmap(write_file(tmp_path / "x.bin", x, np.float32), q, 8, chunk_rows=2, progress=False)
    assert_exact(got, reference(x, q, 8))
    idx = faiss.IndexFlatIP(x.shape[1])
    idx.add(x)
    fs, fi = idx.search(q, 8)
    np.testing.assert_array_equal(got[1][:, 5:], fi[:, 5:])  # -1 fillers
    np.testing.assert_array_equal(got[0][:, 5:], fs[:, 5:])  # faiss' filler score
    assert (got[1][:, 5:] == -1).all() and (got[1][:, :5] >= 0).all()
    empty = write_file(tmp_path / "empty.bin", x[:0], np.float32)  # no rows at all: only fillers
    assert_exact(es.search_memmap(empty, q, 3, progress=False), reference(x[:0], q, 3))
    s, i = es.TorchFlatIndex(x[:0]).search(q, 3)
    assert_exact((s.numpy(), i.numpy()), reference(x[:0], q, 3))


def test_single_query_and_single_row(tmp_path):
    x, q = int_data(n=300, nq=1)
    assert_exact(es.search_memmap(write_file(tmp_path / "x.bin", x, np.float32), q, 7, chunk_rows=50,
                                  progress=False), reference(x, q, 7))
    one = x[:1]
    assert_exact(es.search_memmap(one, q, 3, progress=False), reference(one, q, 3))


@pytest.mark.parametrize("scorer", SCORERS)
def test_fp16_file_is_searched_in_fp32_from_fp16_values(tmp_path, scorer):
    x, q = gauss_data()
    x16 = x.astype(np.float16)
    path = write_file(tmp_path / "x16.bin", x16, np.float16)
    s, i = es.search_memmap(path, q, 40, chunk_rows=333, dtype=np.float16, progress=False, scorer=scorer)
    ref_s, ref_i = reference(x16.astype(np.float32), q, 40)
    np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-5)
    distinct = distinct_places(ref_s)
    assert distinct.mean() > 0.5
    np.testing.assert_array_equal(i[distinct], ref_i[distinct])
    # the fp16 rounding is really searched (not the fp32 rows): scores differ from the fp32 file's
    assert not np.allclose(s, reference(x, q, 40)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scorer", SCORERS)
def test_fp16_file_with_ties_is_exact(tmp_path, scorer):
    x, q = int_data()
    path = write_file(tmp_path / "x16.bin", x, np.float16)
    assert_exact(es.search_memmap(path, q, 30, chunk_rows=77, dtype=np.float16, progress=False, scorer=scorer),
                 reference(x, q, 30))


def test_memmaps_and_their_views_are_streamed_from_their_file_region(tmp_path):
    x, q = int_data()
    path = tmp_path / "x.bin"
    header = b"H" * 5000  # rows after a prefix that is not page aligned: the memmap's offset must be honoured
    with open(path, "wb") as f:
        f.write(header)
        f.write(x.tobytes())
    m = np.memmap(path, dtype=np.float32, mode="r", offset=len(header), shape=x.shape)
    row = x.shape[1] * 4
    assert es.memmap_region(m) == (str(path), len(header))
    want = reference(x, q, 20)
    assert_exact(es.search_memmap(m, q, 20, chunk_rows=100, progress=False), want)
    part = m[100:700]  # a view keeps its parent's .offset attribute: the region comes from addresses
    assert es.memmap_region(part) == (str(path), len(header) + 100 * row)
    assert_exact(es.search_memmap(part, q, 20, chunk_rows=64, progress=False), reference(x[100:700], q, 20))
    flat = np.memmap(path, dtype=np.float32, mode="r", offset=len(header))
    assert es.memmap_region(flat.reshape(-1, x.shape[1])[7:]) == (str(path), len(header) + 7 * row)
    assert es.memmap_region(m[:, :4]) is None  # not contiguous: searched as an array
    assert_exact(es.search_memmap(m[:, :4], q[:, :4], 20, progress=False), reference(x[:, :4], q[:, :4], 20))
    assert es.memmap_region(np.asarray(x)) is None
    m16 = np.memmap(write_file(tmp_path / "x16.bin", x, np.float16), dtype=np.float16, mode="r", shape=x.shape)
    assert_exact(es.search_memmap(m16, q, 20, chunk_rows=100, progress=False), want)


def test_open_embeddings_memmap_and_in_memory_arrays(tmp_path):
    from drhard.io import open_embeddings
    x, q = int_data()
    want = reference(x, q, 12)
    path = write_file(tmp_path / "x.bin", x, np.float32)
    assert_exact(es.search_memmap(open_embeddings(path, dim=x.shape[1]), q, 12, chunk_rows=90, progress=False), want)
    assert_exact(es.search_memmap(x, q, 12, chunk_rows=90, progress=False), want)
    assert_exact(es.search_memmap(x.astype(np.float16), q, 12, chunk_rows=90, progress=False), want)
    assert_exact(es.search_memmap(x, torch.from_numpy(q.astype(np.float64)), 12, chunk_rows=90, progress=False), want)


def test_default_chunk_rows_follows_available_memory_and_queries():
    mib = 1 << 20
    row = es.chunk_row_bytes(768, np.float32, 1024)
    assert row == 2 * 768 * 4 + 1024 * 4  # two row buffers and the score column
    assert es.chunk_row_bytes(768, np.float32, 1024, scorer="faiss") == 2 * 768 * 4  # faiss: no score matrix
    small = es.default_chunk_rows(768, np.float32, 1024, available=512 * mib)
    assert small == int(512 * mib * es.CHUNK_MEMORY_FRACTION) // row
    assert es.default_chunk_rows(768, np.float32, 1024, available=256 * mib) < small
    capped = es.default_chunk_rows(768, np.float32, 1024, available=1 << 40)
    assert capped == es.MAX_CHUNK_BYTES // row > small
    assert es.default_chunk_rows(768, np.float32, 16, available=1 << 40) > capped  # fewer queries, more rows
    assert es.default_chunk_rows(768, np.float32, 1024, available=1) == es.MIN_CHUNK_ROWS
    assert es.chunk_row_bytes(768, np.float16, 1) == es.chunk_row_bytes(768, np.float32, 1) + 768 * 2  # staging


def test_mem_available_is_read_from_meminfo(tmp_path):
    p = tmp_path / "meminfo"
    p.write_text("MemTotal:       24684132 kB\nMemFree:        1000 kB\nMemAvailable:   2048 kB\n")
    assert es.mem_available_bytes(str(p)) == 2048 * 1024
    assert es.mem_available_bytes(str(tmp_path / "absent")) is None


def test_bad_inputs_are_clear_errors(tmp_path):
    x, q = int_data(n=50)
    path = tmp_path / "x.bin"
    path.write_bytes(x.tobytes()[:-4])  # truncated by one value
    with pytest.raises(DataError, match="not a whole number of float32 rows"):
        es.search_memmap(str(path), q, 5, progress=False)
    path.write_bytes(x.tobytes())
    with pytest.raises(DataError, match="holds 50 float32 rows of dim 16, expected 60"):
        es.search_memmap(str(path), q, 5, n=60, progress=False)
    with pytest.raises(DataError, match="not found"):
        es.search_memmap(str(tmp_path / "absent.bin"), q, 5, progress=False)
    with pytest.raises(DataError, match="holds 100 float32 rows of dim 8, expected 50"):
        es.search_memmap(str(path), q[:, :8], 5, n=50, progress=False)  # a file's width is the queries'
    with pytest.raises(ValueError, match="embeddings have 16 columns, queries 8"):
        es.search_memmap(x, q[:, :8], 5, progress=False)
    with pytest.raises(ValueError, match="k must be >= 1"):
        es.search_memmap(str(path), q, 0, progress=False)
    with pytest.raises(ValueError, match="float32 or float16"):
        es.search_memmap(str(path), q, 5, dtype=np.float64, progress=False)
    bad = x.copy()
    bad[33, 2] = np.nan
    path.write_bytes(bad.tobytes())
    with pytest.raises(NonFiniteError, match="row 33 holds NaN"):
        es.search_memmap(str(path), q, 5, chunk_rows=8, progress=False)
    badq = np.concatenate([q] * 3)
    badq[len(q) + 4, 0] = np.inf
    with pytest.raises(NonFiniteError, match=f"queries: row {len(q) + 4}"):
        es.search_memmap(x, badq, 5, progress=False)
    with pytest.raises(NonFiniteError, match=f"queries: row {len(q) + 4}"):
        es._check_queries_finite(torch.from_numpy(badq), step=len(q))  # found in the second block of rows


def test_scorer_choice(monkeypatch):
    x, q = int_data(n=300)
    with pytest.raises(ValueError, match="scorer must be"):
        es.search_memmap(x, q, 5, scorer="blas", progress=False)
    monkeypatch.setattr(es, "faiss_knn", lambda: None)  # faiss not installed
    with pytest.raises(ValueError, match="needs faiss"):
        es.search_memmap(x, q, 5, scorer="faiss", progress=False)
    called = []
    real = es.faiss_chunk_topk
    monkeypatch.setattr(es, "faiss_chunk_topk", lambda *a: called.append(1) or real(*a))
    assert_exact(es.search_memmap(x, q, 5, progress=False), reference(x, q, 5))  # auto: the torch scorer
    assert not called


def test_no_queries_gives_empty_results():
    x, q = int_data(n=50)
    s, i = es.search_memmap(x, q[:0], 5, progress=False)
    assert s.shape == i.shape == (0, 5)


# --------------------------------------------------------------------------- agreement with faiss
def test_stream_and_torch_agree_with_faiss(tmp_path):
    faiss = pytest.importorskip("faiss")
    x, q = gauss_data(n=3000, d=48, nq=60)
    idx = faiss.IndexFlatIP(x.shape[1])
    idx.add(x)
    k = 50
    fs, fi = idx.search(q, k)
    distinct = distinct_places(fs)
    assert distinct.mean() > 0.5
    block = np.r_[0, 100:110]
    path = write_file(tmp_path / "x.bin", x, np.float32)
    results = {f"stream-{scorer}": es.search_memmap(path, q, k, chunk_rows=701, query_batch=17, progress=False,
                                                    scorer=scorer) for scorer in ("faiss", "torch")}
    s, i = es.TorchFlatIndex(x, chunk_rows=512).search(torch.from_numpy(q), k, query_batch=23)
    results["torch"] = (s.numpy(), i.numpy())
    for name, (s, i) in results.items():
        np.testing.assert_allclose(s, fs, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(i[distinct], fi[distinct], err_msg=name)
        # the duplicated rows take as many places as in faiss' list
        np.testing.assert_array_equal(np.isin(i, block).sum(axis=1), np.isin(fi, block).sum(axis=1), err_msg=name)
    assert np.isin(fi, block).any()


# --------------------------------------------------------------------------- TorchFlatIndex
@pytest.mark.parametrize("storage", [torch.float32, torch.float16])
@pytest.mark.parametrize("chunk_rows", [None, 3, 64, 999])
def test_torch_index_equals_reference_with_ties(storage, chunk_rows):
    x, q = int_data()
    idx = es.TorchFlatIndex(torch.from_numpy(x), dtype=storage, chunk_rows=chunk_rows)
    assert idx.x.dtype == storage and idx.ntotal == len(x) and idx.d == x.shape[1]
    for k in (1, 10, 150, 1200):
        s, i = idx.search(torch.from_numpy(q), k, query_batch=16)
        assert isinstance(s, torch.Tensor) and s.dtype == torch.float32 and i.dtype == torch.int64
        assert s.device == idx.device == i.device
        assert_exact((s.numpy(), i.numpy()), reference(x, q, k))


@pytest.mark.parametrize("file_dtype,storage", [(np.float32, torch.float32), (np.float16, torch.float16),
                                                (np.float16, torch.float32)])
def test_torch_index_loads_files_memmaps_and_arrays(tmp_path, file_dtype, storage):
    x, q = int_data()
    want = reference(x, q, 20)
    path = write_file(tmp_path / "x.bin", x, file_dtype)
    for src in (path, np.memmap(path, dtype=file_dtype, mode="r", shape=x.shape), x.astype(file_dtype)):
        idx = es.TorchFlatIndex(src, dtype=storage, dim=x.shape[1], file_dtype=file_dtype, chunk_rows=300)
        s, i = idx.search(q, 20)
        assert_exact((s.numpy(), i.numpy()), want)


def test_torch_index_gaussian_fp16_storage_matches_fp16_reference():
    x, q = gauss_data()
    s, i = es.TorchFlatIndex(x, dtype=torch.float16, chunk_rows=300).search(torch.from_numpy(q), 30)
    ref_s, ref_i = reference(x.astype(np.float16), q, 30)
    np.testing.assert_allclose(s.numpy(), ref_s, rtol=1e-5, atol=1e-5)
    distinct = distinct_places(ref_s)
    np.testing.assert_array_equal(i.numpy()[distinct], ref_i[distinct])


def test_torch_index_rejects_nonfinite_and_bad_shapes():
    x, q = int_data(n=60)
    bad = x.copy()
    bad[41, 0] = np.nan
    with pytest.raises(NonFiniteError, match="row 41"):
        es.TorchFlatIndex(torch.from_numpy(bad))
    with pytest.raises(NonFiniteError, match="row 41"):
        es.TorchFlatIndex(bad, chunk_rows=16)
    idx = es.TorchFlatIndex(x)
    with pytest.raises(ValueError, match=r"queries must be \(Q, 16\)"):
        idx.search(torch.from_numpy(q[:, :4]), 3)
    with pytest.raises(ValueError, match="storage dtype"):
        es.TorchFlatIndex(x, dtype=torch.float64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_index_on_cuda_keeps_queries_on_the_device():
    x, q = int_data()
    for storage in (torch.float32, torch.float16):
        idx = es.TorchFlatIndex(x, device="cuda", dtype=storage, chunk_rows=128)
        qd = torch.from_numpy(q).cuda()
        s, i = idx.search(qd, 40)
        assert s.is_cuda and i.is_cuda
        assert_exact((s.cpu().numpy(), i.cpu().numpy()), reference(x, q, 40))


# --------------------------------------------------------------------------- the running merge
@st.composite
def score_chunks(draw):
    b = draw(st.integers(1, 4))
    n = draw(st.integers(1, 60))
    k = draw(st.integers(1, 70))
    values = draw(st.lists(st.integers(-3, 3), min_size=b * n, max_size=b * n))  # few values: many ties
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6)))) if n > 1 else []
    bounds = [0] + [c for c in cuts if 0 < c < n] + [n]
    pieces = list(zip(bounds[:-1], bounds[1:]))
    order = draw(st.permutations(range(len(pieces))))
    return np.array(values, np.float32).reshape(b, n), k, [pieces[j] for j in order]


@settings(max_examples=200, deadline=None)
@given(score_chunks())
def test_running_topk_over_any_chunking_equals_full_sort(case):
    scores, k, pieces = case
    acc = es.RunningTopK(scores.shape[0], k)
    for lo, hi in pieces:  # chunks of any size, in any order
        acc.add(torch.from_numpy(scores[:, lo:hi]), lo)
    s, i = acc.result()
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    want_s = np.take_along_axis(scores, order, axis=1)
    m = order.shape[1]
    np.testing.assert_array_equal(i.numpy()[:, :m], order)
    np.testing.assert_array_equal(s.numpy()[:, :m], want_s)
    assert (i.numpy()[:, m:] == -1).all() and (s.numpy()[:, m:] == FILLER).all()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3), st.integers(1, 300), st.integers(1, 40), st.integers(0, 2 ** 31 - 1))
def test_chunk_topk_keeps_the_lowest_columns_of_a_tie_at_the_cut(b, c, k, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, size=(b, c)).astype(np.float32)  # three values: the cut almost always splits a tie
    vals, cols = es.chunk_topk(torch.from_numpy(scores), k)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(cols.numpy(), order)
    np.testing.assert_array_equal(vals.numpy(), np.take_along_axis(scores, order, axis=1))
    vals, cols = es.chunk_topk(torch.from_numpy(scores), k, ordered=False)  # the same set, in any order
    np.testing.assert_array_equal(np.sort(cols.numpy(), axis=1), np.sort(order, axis=1))
    np.testing.assert_array_equal(vals.numpy(), np.take_along_axis(scores, cols.numpy(), axis=1))


def test_chunk_topk_fixes_many_straddling_rows_in_groups():
    rng = np.random.default_rng(3)
    b = 3 * es.TIE_FIX_ROWS + 5  # every row straddles: the fix runs over several groups of rows
    scores = rng.integers(0, 2, size=(b, 500)).astype(np.float32)
    vals, cols = es.chunk_topk(torch.from_numpy(scores), 100)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    np.testing.assert_array_equal(cols.numpy(), order)
    np.testing.assert_array_equal(vals.numpy(), np.take_along_axis(scores, order, axis=1))


@pytest.mark.skipif(es.faiss_knn() is None, reason="needs faiss")
@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3), st.integers(1, 300), st.integers(1, 40), st.integers(0, 2 ** 31 - 1))
def test_faiss_chunk_topk_keeps_the_lowest_columns_of_a_tie_at_the_cut(b, c, k, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, size=(c, 4)).astype(np.float32)  # few distinct scores: ties at the cut
    q = rng.integers(0, 2, size=(b, 4)).astype(np.float32)
    scores = q @ x.T  # (b, c) exact small integers
    vals, cols = es.faiss_chunk_topk(q, x, k)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.sort(cols.numpy(), axis=1), np.sort(order, axis=1))
    np.testing.assert_array_equal(vals.numpy(), np.take_along_axis(scores, cols.numpy(), axis=1))


# --------------------------------------------------------------------------- resident memory
RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from drhard.exact_search import faiss_knn, search_memmap

    def hwm():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

    def reset_hwm():  # the peak starts again from the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    path, dim, chunk_rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    q = np.random.default_rng(0).standard_normal((8, dim), dtype=np.float32)
    scorers = ["torch"] + (["faiss"] if faiss_knn() is not None else [])
    out = {}
    for scorer in scorers:  # warm-up: kernels and thread pools
        search_memmap(q, q, 3, progress=False, scorer=scorer)
    for scorer in scorers:
        reset_hwm()
        base = hwm()
        s, i = search_memmap(path, q, 10, chunk_rows=chunk_rows, progress=False, scorer=scorer)
        out[scorer] = hwm() - base
    reset_hwm()
    base = hwm()
    m = np.memmap(path, dtype=np.float32, mode="r").reshape(-1, dim)
    total = float(m.sum(dtype=np.float64))  # control: the same rows read through a mapping count in RSS
    out["mapped"] = hwm() - base
    out["rows"] = int(m.shape[0])
    print(json.dumps(out))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_streamed_search_resident_memory_is_bounded_by_the_chunk(tmp_path):
    dim, rows = 256, 400 * 1024 * 1024 // (256 * 4)  # a 400 MiB float32 file
    chunk_rows = 8 * 1024 * 1024 // (dim * 4)  # 8 MiB chunks
    path = tmp_path / "big.bin"
    rng = np.random.default_rng(0)
    block = rng.standard_normal((8192, dim), dtype=np.float32)
    with open(path, "wb") as f:
        for start in range(0, rows, len(block)):
            block[0, 0] = start  # every block differs a little
            block[:min(len(block), rows - start)].tofile(f)
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path), str(dim), str(chunk_rows)],
                         capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 1024 * 1024
    assert got["rows"] == rows
    assert got["mapped"] > 300 * mib, got  # the measurement does see file pages that are mapped
    for scorer in ("torch", "faiss"):
        if scorer in got:  # 2 x 8 MiB chunk buffers plus small change, not the 400 MiB file
            assert got[scorer] < 48 * mib, (scorer, got)
