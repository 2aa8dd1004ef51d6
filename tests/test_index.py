"""Exact inner-product search against a numpy brute force, and the GPU fallbacks (CPU-only here)."""
import logging

import numpy as np
import pytest

from drhard import index as dindex

faiss = pytest.importorskip("faiss")


def brute_force(x, q, k):
    """Obviously correct: full score matrix, sort each row descending."""
    s = q @ x.T  # (Q, N)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


def make_data(n=300, d=16, nq=57, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[10:20] = x[0]  # exact duplicates: tied scores for every query
    q = rng.standard_normal((nq, d)).astype(np.float32)
    return x, q


@pytest.mark.parametrize("batch_size", [1, 7, 4096])
def test_search_matches_brute_force(batch_size):
    x, q = make_data()
    k = 25
    scores, ids = dindex.search(dindex.build_index(x), q, k, batch_size=batch_size, progress=False)
    ref_s, ref_i = brute_force(x, q, k)
    assert scores.shape == ids.shape == (len(q), k)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)
    # each id really has the score reported for it
    np.testing.assert_allclose(np.take_along_axis(q @ x.T, ids, axis=1), scores, rtol=1e-5, atol=1e-5)
    # where a score is distinct from its neighbours the id must agree; ties may come in any order
    gap = np.abs(np.diff(ref_s, axis=1)) > 1e-4
    distinct = np.ones_like(ref_s, dtype=bool)
    distinct[:, 1:] &= gap
    distinct[:, :-1] &= gap
    assert distinct.sum() > 0.5 * distinct.size
    assert np.array_equal(ids[distinct], ref_i[distinct])
    # the tied duplicate block takes as many top-k places as in the reference (it may straddle the cut)
    block = np.r_[0, 10:20]
    assert np.array_equal(np.isin(ids, block).sum(axis=1), np.isin(ref_i, block).sum(axis=1))
    assert np.isin(ref_i, block).any()


def test_k_larger_than_index_pads_with_minus_one():
    x, q = make_data(n=5, nq=3)
    scores, ids = dindex.search(dindex.build_index(x), q, 8, progress=False)
    assert (ids[:, 5:] == -1).all()
    assert sorted(ids[0, :5].tolist()) == [0, 1, 2, 3, 4]


def test_search_rejects_wrong_query_width():
    x, q = make_data()
    with pytest.raises(ValueError, match="queries must be"):
        dindex.search(dindex.build_index(x), q[:, :8], 3, progress=False)


def test_gpus_without_faiss_gpu_support_fall_back_to_cpu(monkeypatch, caplog):
    monkeypatch.setattr(dindex, "faiss_has_gpu", lambda: False)
    x, q = make_data()
    with caplog.at_level(logging.WARNING, logger="drhard.index"):
        idx = dindex.build_index(x, gpus=[0, 1])
    assert isinstance(idx, faiss.IndexFlatIP)
    assert "no GPU support" in caplog.text
    np.testing.assert_allclose(dindex.search(idx, q, 5, progress=False)[0], brute_force(x, q, 5)[0], rtol=1e-5)


def test_index_too_large_for_gpus_falls_back_to_cpu(monkeypatch, caplog):
    x, _ = make_data()
    asked = []
    monkeypatch.setattr(dindex, "faiss_has_gpu", lambda: True)
    monkeypatch.setattr(dindex, "gpu_free_bytes", lambda g: asked.append(g) or 1024)  # 1 KiB free
    with caplog.at_level(logging.WARNING, logger="drhard.index"):
        idx = dindex.build_index(x, gpus=[2, 3])
    assert isinstance(idx, faiss.IndexFlatIP) and idx.ntotal == len(x)
    assert asked == [2, 3]
    assert "does not fit" in caplog.text and "GPU 2" in caplog.text


def test_gpus_fit_shards_the_index_over_gpus(monkeypatch):
    nbytes = 10 * 2 ** 30
    free = {0: 6 * 2 ** 30 + dindex.GPU_MARGIN_BYTES, 1: 6 * 2 ** 30 + dindex.GPU_MARGIN_BYTES}
    monkeypatch.setattr(dindex, "gpu_free_bytes", free.get)
    assert dindex.gpus_fit([0, 1], nbytes)[0]      # 5 GiB per GPU fits in 6
    assert not dindex.gpus_fit([0], nbytes)[0]     # 10 GiB on one does not
    assert dindex.index_bytes(8_841_823, 768) == 8_841_823 * 768 * 4


def test_omp_threads_is_applied():
    x, _ = make_data()
    dindex.build_index(x, omp_threads=1)
    assert faiss.omp_get_max_threads() == 1
    dindex.build_index(x)
    assert faiss.omp_get_max_threads() == dindex.usable_cpus()


class FakeClonerOptions:
    shard = False
    useFloat16 = False


@pytest.mark.parametrize("gpus,shard", [([0], False), ([1, 2, 3], True)])
def test_gpu_path_clones_the_filled_index(monkeypatch, gpus, shard):
    """The GPU branch, with faiss' cloner replaced by a recorder (no GPU here)."""
    x, q = make_data()
    seen = {}

    def clone(index, co=None, gpus=None):
        seen.update(ntotal=index.ntotal, shard=co.shard, fp16=co.useFloat16, gpus=list(gpus))
        return index
    monkeypatch.setattr(dindex, "faiss_has_gpu", lambda: True)
    monkeypatch.setattr(dindex, "gpu_free_bytes", lambda g: 80 * 2 ** 30)
    monkeypatch.setattr(dindex, "ADD_CHUNK_ROWS", 7)  # the CPU index is filled chunk by chunk first
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", FakeClonerOptions, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpus_list", clone, raising=False)
    idx = dindex.build_index(x, gpus=gpus)
    assert seen == {"ntotal": len(x), "shard": shard, "fp16": False, "gpus": gpus}
    np.testing.assert_allclose(dindex.search(idx, q, 9, progress=False)[0], brute_force(x, q, 9)[0], rtol=1e-5)


def test_build_from_memmap_in_chunks(tmp_path, monkeypatch):
    x, q = make_data()
    path = tmp_path / "p.memmap"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    monkeypatch.setattr(dindex, "ADD_CHUNK_ROWS", 64)
    idx = dindex.build_index(mm)
    assert idx.ntotal == len(x)
    np.testing.assert_array_equal(dindex.search(idx, q, 5, progress=False)[1],
                                  dindex.search(dindex.build_index(x), q, 5, progress=False)[1])
