"""Disk space is checked before large memmaps are written (encode, preprocess).

(The faiss index size check with CPU fallback is tested in test_index.py:
test_index_too_large_for_gpus_falls_back_to_cpu, test_gpus_fit_shards_the_index_over_gpus.)
"""
import collections
import os
import shutil

import numpy as np
import pytest
import torch

import drhard.io as dio
import drhard.preprocess as pp
from drhard.cli import run
from drhard.encode import encode_to_memmap, sidecar_path
from drhard.io import NoSpaceError, TokenCache, check_free_space, write_token_cache
from drhard.model import build_tiny_roberta
from drhard.preprocess import PreprocessArgs, preprocess

from toy_data import make_tiny_tokenizer, make_toy_msmarco

Usage = collections.namedtuple("Usage", "total used free")


def fake_free(monkeypatch, free):
    asked = []

    def disk_usage(path):
        asked.append(path)
        return Usage(10 ** 12, 10 ** 12 - free, free)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    return asked


def test_check_free_space_names_folder_needed_and_free(tmp_path, monkeypatch):
    asked = fake_free(monkeypatch, 1000)
    check_free_space(str(tmp_path / "a.memmap"), 1000)  # exactly enough
    with pytest.raises(NoSpaceError) as e:
        check_free_space(str(tmp_path / "not" / "yet" / "a.memmap"), 1001, "embeddings")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path}:") and "embeddings" in msg and "1001 bytes" in msg and "1000 bytes" in msg
    assert asked == [str(tmp_path), str(tmp_path)]  # the nearest existing folder is asked
    assert isinstance(e.value, dio.DataError)  # scripts turn it into one error line


@pytest.fixture(scope="module")
def cache_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("space")
    rng = np.random.default_rng(0)
    write_token_cache(str(root / "passages"), [[0] + rng.integers(4, 90, 8).tolist() + [2] for _ in range(30)], 12)
    return TokenCache(str(root / "passages")), build_tiny_roberta(vocab_size=100, hidden=32, layers=1, heads=2).eval()


def test_encode_checks_space_for_the_whole_file_before_writing(tmp_path, monkeypatch, cache_and_model):
    cache, model = cache_and_model
    need = len(cache) * model.output_embedding_size * 4
    path = tmp_path / "out" / "passages.memmap"
    path.parent.mkdir()
    fake_free(monkeypatch, need - 1)
    with pytest.raises(NoSpaceError, match=f"{need} bytes"):
        encode_to_memmap(model, cache, 12, str(path), 8, torch.device("cpu"), progress=False)
    assert os.listdir(path.parent) == []  # nothing started
    fake_free(monkeypatch, need)
    emb = encode_to_memmap(model, cache, 12, str(path), 8, torch.device("cpu"), progress=False)
    assert emb.shape == (len(cache), model.output_embedding_size) and os.path.exists(sidecar_path(str(path)))
    fake_free(monkeypatch, 0)  # a complete file is reused without needing space
    encode_to_memmap(model, cache, 12, str(path), 8, torch.device("cpu"), progress=False)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("spaceprep")
    return make_toy_msmarco(root / "data", "passage", n_passages=300), make_tiny_tokenizer(root / "tok")


def _args(toy, out, **kw):
    data, tok = toy
    return PreprocessArgs(data_dir=str(data), out_data_dir=str(out), model_name_or_path=str(tok), threads=1,
                          max_seq_length=48, max_query_length=16, **kw)


def test_preprocess_estimate_bounds_what_it_writes(toy, tmp_path, monkeypatch):
    needs = []
    real = dio.check_free_space
    monkeypatch.setattr(dio, "check_free_space", lambda path, n, what="": (
        what == "the preprocess outputs" and needs.append(n)) or real(path, n, what))
    out = tmp_path / "out"
    preprocess(_args(toy, out))
    written = sum(os.path.getsize(out / n) for n in os.listdir(out) if n != pp.MANIFEST)
    assert written <= needs[0] <= 1.5 * written
    assert needs[0] >= 300 * 48 * 4  # every collection line is a row of the passages memmap
    preprocess(_args(toy, out))  # complete passages are reused: only the queries need space
    assert needs[1] < 300 * 48 * 4


def test_preprocess_without_space_fails_before_tokenizing_and_writes_nothing(toy, tmp_path, monkeypatch):
    out = tmp_path / "out"
    fake_free(monkeypatch, 300 * 48 * 4)  # less than the passages memmap
    called = []
    monkeypatch.setattr(pp, "_tokenize_collection", lambda *a: called.append(1))
    with pytest.raises(NoSpaceError, match="preprocess outputs"):
        preprocess(_args(toy, out))
    assert not called and os.listdir(out) == []


def test_preprocess_cli_reports_no_space_as_one_error_line(toy, tmp_path, monkeypatch, capsys):
    from drhard.commands import preprocess as cli
    fake_free(monkeypatch, 10)
    data, tok = toy
    rc = run(cli.main, ["--data_dir", str(data), "--out_data_dir", str(tmp_path / "out"), "--model_name_or_path",
                        str(tok), "--max_seq_length", "48", "--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("error: ") and "not enough free disk space" in err[-1]


def test_count_lines_counts_a_last_line_without_newline(tmp_path):
    for text, n in [(b"", 0), (b"a\n", 1), (b"a\nb", 2), (b"a\nb\n", 2), (b"\n\n", 2)]:
        (tmp_path / "f").write_bytes(text)
        assert pp.count_lines(str(tmp_path / "f")) == n
