"""Embedding memmaps: length-sorted batching equals row-by-row encoding; partial files are not trusted."""
import json
import os

import numpy as np
import pytest
import torch

from drhard import encode as denc
from drhard.io import TokenCache, token_memmap_path, write_meta
from drhard.model import build_tiny_roberta
from tinyprep import spread

CPU = torch.device("cpu")




def make_cache(folder, name="passages", n=23, width=20, seed=0):
    """A preprocess-style token memmap: <s> tokens </s>, zero padded, lengths 1..width."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    prefix = os.path.join(str(folder), name)
    ids = np.zeros((n, width), dtype=np.int32)
    lengths = rng.integers(3, width + 1, size=n)
    lengths[:3] = [width, 3, width]  # rows as long as the memmap and a minimal one
    for i, ln in enumerate(lengths):
        ids[i, 0] = 0
        ids[i, 1:ln - 1] = rng.integers(3, 1000, size=ln - 2)  # never the pad id 1
        ids[i, ln - 1] = 2
    ids.tofile(token_memmap_path(prefix))
    np.save(prefix + "_length.npy", lengths)
    write_meta(prefix, n, width)
    return TokenCache(prefix)


@pytest.fixture(scope="module")
def model():
    return spread(build_tiny_roberta(hidden=32, layers=2, heads=2, output_embedding_size=24, seed=1))


def one_by_one(model, cache, max_len):
    """Reference: each row alone, unpadded, through the model."""
    rows = []
    with torch.inference_mode():
        for i in range(len(cache)):
            ids = torch.tensor([cache.get(i, max_len)])
            rows.append(model.encode(ids, torch.ones_like(ids))[0].numpy())
    return np.stack(rows)


@pytest.mark.parametrize("max_len", [2, 7, 12, 64])
def test_batch_rows_equals_cut_rule(tmp_path, max_len):
    cache = make_cache(tmp_path / "pre")
    rows = np.array([5, 0, 1, 17, 2, 9])
    ids, mask = denc.batch_rows(cache, rows, max_len, pad_id=1)
    want = [cache.get(int(r), max_len) for r in rows]
    assert ids.shape[1] == max(len(w) for w in want)
    for b, w in enumerate(want):
        assert ids[b, :len(w)].tolist() == w
        assert (ids[b, len(w):] == 1).all()
        assert mask[b].tolist() == [1] * len(w) + [0] * (ids.shape[1] - len(w))
    padded, _ = denc.batch_rows(cache, rows, max_len, pad_id=1, pad_to=max_len)
    assert padded.shape[1] == max_len


def test_length_sorted_batches_cover_rows_longest_first():
    lengths = np.array([5, 30, 7, 30, 2, 11, 9])
    batches = denc.length_sorted_batches(lengths, max_len=10, batch_size=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(7))
    cut = np.minimum(lengths, 10)[flat]
    assert (np.diff(cut) <= 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("max_len,batch_size", [(12, 4), (64, 5), (8, 1)])
def test_sorted_batching_equals_one_by_one(tmp_path, model, max_len, batch_size):
    cache = make_cache(tmp_path / "pre")
    ref = one_by_one(model, cache, max_len)
    got = denc.encode_cache(model, cache, max_len, batch_size, CPU, progress=False)
    assert got.shape == (len(cache), 24) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # the original's batching (file order, first batches padded to max_len) gives the same numbers
    orig = denc.encode_cache(model, cache, max_len, batch_size, CPU, sort_by_length=False, pad_first=2,
                             progress=False)
    np.testing.assert_allclose(orig, ref, rtol=1e-4, atol=1e-5)
    gaps = np.abs(ref[:, None] - ref[None]).max(-1)[np.triu_indices(len(ref), 1)]
    assert gaps.min() > 1e-2  # rows really differ, so a mixed-up order would show


def test_encode_to_memmap_writes_atomically_and_reuses_complete_files(tmp_path, model, monkeypatch):
    cache = make_cache(tmp_path / "pre")
    path = str(tmp_path / "out" / "passages.memmap")
    emb = denc.encode_to_memmap(model, cache, 12, path, 4, CPU, progress=False)
    ref = one_by_one(model, cache, 12)
    np.testing.assert_allclose(np.fromfile(path, dtype=np.float32).reshape(-1, 24), ref, rtol=1e-4, atol=1e-5)
    assert emb.shape == (len(cache), 24)
    info = json.load(open(denc.sidecar_path(path)))
    assert info["rows"] == len(cache) and info["dim"] == 24 and info["max_len"] == 12
    assert [f for f in os.listdir(tmp_path / "out") if ".tmp-" in f] == []

    calls = []
    real = denc.encode_cache
    monkeypatch.setattr(denc, "encode_cache", lambda *a, **k: calls.append(1) or real(*a, **k))
    denc.encode_to_memmap(model, cache, 12, path, 4, CPU, progress=False)
    assert calls == []  # complete: reused
    denc.encode_to_memmap(model, cache, 16, path, 4, CPU, progress=False)
    assert calls == [1]  # another max_len: recomputed
    other = spread(build_tiny_roberta(hidden=32, layers=2, heads=2, output_embedding_size=24, seed=2), seed=2)
    assert denc.model_fingerprint(other) != denc.model_fingerprint(model)
    denc.encode_to_memmap(other, cache, 16, path, 4, CPU, progress=False)
    assert calls == [1, 1]  # another model: recomputed


@pytest.mark.parametrize("damage", ["truncated", "no_sidecar", "full_size_garbage_no_sidecar"])
def test_partial_outputs_are_recomputed(tmp_path, model, damage):
    cache = make_cache(tmp_path / "pre")
    path = str(tmp_path / "passages.memmap")
    denc.encode_to_memmap(model, cache, 12, path, 4, CPU, progress=False)
    good = np.fromfile(path, dtype=np.float32).copy()
    if damage == "truncated":  # killed mid-write by a writer that wrote in place
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    else:  # the original pre-sized its memmap: right size, rows never written
        os.remove(denc.sidecar_path(path))
        if damage == "full_size_garbage_no_sidecar":
            np.zeros_like(good).tofile(path)
    assert not denc.embeddings_complete(path, len(cache), 24, 12, denc.model_fingerprint(model))
    denc.encode_to_memmap(model, cache, 12, path, 4, CPU, progress=False)
    np.testing.assert_array_equal(np.fromfile(path, dtype=np.float32), good)
    assert denc.embeddings_complete(path, len(cache), 24, 12, denc.model_fingerprint(model))


def test_failed_encoding_leaves_no_file(tmp_path, model, monkeypatch):
    cache = make_cache(tmp_path / "pre")
    path = str(tmp_path / "passages.memmap")

    def boom(*a, **k):
        raise RuntimeError("killed")
    monkeypatch.setattr(denc, "encode_cache", boom)
    with pytest.raises(RuntimeError):
        denc.encode_to_memmap(model, cache, 12, path, 4, CPU, progress=False)
    assert not os.path.exists(path)
    assert not os.path.exists(denc.sidecar_path(path))
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_token_ids_beyond_the_vocabulary_are_a_clear_error(tmp_path):
    """A folder tokenized with a bigger vocabulary than the model's fails naming the folder and row."""
    from drhard.io import DataError, write_token_cache
    prefix = str(tmp_path / "passages")
    write_token_cache(prefix, [[0, 5, 6, 2], [0, 7, 999, 2], [0, 8, 2]], 8)
    small = build_tiny_roberta(vocab_size=100)
    with pytest.raises(DataError, match=r"passages: row 1 holds token id 999, beyond the model's vocabulary of 100"):
        denc.encode_cache(small, TokenCache(prefix), 8, 2, torch.device("cpu"), progress=False)
