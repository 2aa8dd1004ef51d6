"""star/inference.py, star/prepare_hardneg.py, adore/inference.py: what they refuse, and when.

* the encoder's forward holds inference mode and the asked autocast dtype in any thread
  (DataParallel replicas run in threads of their own);
* a non-finite model or embedding file is refused with one error line and no output;
* every input is checked before the first passage is encoded (an empty query set, a truncated
  query memmap, bad qrels);
* a full disk is a clear error up front (the space is reserved, no temp file is left) and an
  output folder that takes no files is one error line;
* flags are checked in the parser (exit 2) and keep the original defaults.
"""
import errno
import json
import os
import shutil
import threading

import numpy as np
import pytest
import torch

from drhard import encode as denc
from drhard.cli import run
from drhard.encode import sidecar_path
from drhard.errors import NonFiniteError
from drhard.io import TokenCache, length_path, token_memmap_path, write_meta
from drhard.model import build_tiny_roberta
from conftest import command
from tinyprep import run_script, spread

CPU = torch.device("cpu")


def script(name):
    return command(name)


def call(name, argv, capsys):
    """(exit status, stderr lines) of ``run(main, argv)`` as ``sys.exit(run(main))`` gives it."""
    try:
        rc = run(script(name).main, [str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err.strip().splitlines()


def one_error(lines):
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1 and not any("Traceback" in ln for ln in lines), lines
    return errors[0]


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture
def encodes(monkeypatch):
    """Counts the batches encoded (a check 'before the long work' must leave it at 0)."""
    calls = []
    real = denc.encode_cache
    monkeypatch.setattr(denc, "encode_cache", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def star_inference(t, *extra, out=None):
    return ["--data_type", "passage", "--mode", "train", "--model_path", t["init"], "--preprocess_dir", t["preprocess"],
            "--output_dir", out or t["root"] / "inf", "--max_doc_length", 24, *extra]


def prepare_hardneg(t, *extra, out=None):
    return ["--data_type", "passage", "--model_path", t["init"], "--preprocess_dir", t["preprocess"],
            "--output_dir", out or t["root"] / "hn", "--max_doc_length", 24, "--topk", 3, *extra]


def adore_inference(t, dmem, *extra, out=None):
    return ["--model_dir", t["init"], "--output_dir", out or t["root"] / "ad", "--preprocess_dir", t["preprocess"],
            "--mode", "train", "--dmemmap_path", dmem, *extra]


def passage_embeddings(t, dim=32, fill=None):
    path = t["root"] / "p.memmap"
    emb = np.random.default_rng(0).standard_normal((200, dim)).astype(np.float32)
    if fill is not None:
        emb[fill] = np.nan
    emb.tofile(path)
    return path


# --------------------------------------------------------------------------- DataParallel replicas
@pytest.mark.parametrize("bf16", [True, False])
def test_encode_forward_holds_inference_mode_and_dtype_in_a_replica_thread(bf16):
    """DataParallel runs each replica's forward in a new thread: grad mode is carried over but inference mode
    is not, and autocast is re-entered with the thread's default dtype. The forward must set both itself."""
    model = spread(build_tiny_roberta(vocab_size=100, hidden=32, layers=1, heads=2, seed=0))
    seen = {}

    def hook(module, inputs, output):
        seen.update(grad=torch.is_grad_enabled(), inference=torch.is_inference_mode_enabled(),
                    autocast=torch.is_autocast_enabled("cpu"), dtype=torch.get_autocast_dtype("cpu"),
                    out=output.dtype)

    model.embeddingHead.register_forward_hook(hook)
    module = denc.forward_module(model, CPU, bf16=bf16)
    ids = torch.tensor([[0, 5, 9, 2], [0, 7, 2, 1]])
    mask = (ids != 1).long()
    result = {}

    def replica():  # as torch.nn.parallel.parallel_apply's worker: autocast re-entered with another dtype
        torch.set_grad_enabled(True)
        with torch.autocast("cpu", dtype=torch.float16, enabled=bf16):
            result["emb"] = module(ids, mask)

    t = threading.Thread(target=replica)
    t.start()
    t.join()
    assert seen["grad"] is False and seen["inference"] is True
    if bf16:
        assert seen["autocast"] and seen["dtype"] == torch.bfloat16 and seen["out"] == torch.bfloat16
    else:
        assert not seen["autocast"] and seen["out"] == torch.float32
    assert not result["emb"].requires_grad


# --------------------------------------------------------------------------- non-finite
def test_an_overflowing_model_stops_encoding_naming_the_row(tmp_path):
    model = build_tiny_roberta(vocab_size=100, hidden=32, layers=1, heads=2).eval()
    with torch.no_grad():
        model.embeddingHead.weight.fill_(3e38)  # finite weights, infinite sums
    prefix = str(tmp_path / "passages")
    from drhard.io import write_token_cache
    write_token_cache(prefix, [[0, 5, 6, 2], [0, 7, 2]], 6)
    path = tmp_path / "out" / "passages.memmap"
    with pytest.raises(NonFiniteError, match=r"passages: row \d encodes to NaN or infinite"):
        denc.encode_to_memmap(model, TokenCache(prefix), 6, str(path), 8, CPU, progress=False)
    assert os.listdir(path.parent) == []  # no memmap, no sidecar, no temp file


def test_a_reused_file_with_nan_rows_is_recomputed(tmp_path):
    model = spread(build_tiny_roberta(vocab_size=100, hidden=32, layers=1, heads=2))
    prefix = str(tmp_path / "passages")
    from drhard.io import write_token_cache
    write_token_cache(prefix, [[0, 5, 6, 2], [0, 7, 2], [0, 9, 9, 9, 2]], 6)
    path = str(tmp_path / "out" / "passages.memmap")
    good = np.array(denc.encode_to_memmap(model, TokenCache(prefix), 6, path, 8, CPU, progress=False))
    mm = np.memmap(path, dtype=np.float32, mode="r+", shape=good.shape)
    mm[1, 3] = np.nan  # a file an older version wrote, sidecar and all
    mm.flush()
    del mm
    again = np.array(denc.encode_to_memmap(model, TokenCache(prefix), 6, path, 8, CPU, progress=False))
    np.testing.assert_array_equal(again, good)


@pytest.mark.parametrize("name", ["star/inference.py", "star/prepare_hardneg.py"])
def test_star_scripts_refuse_a_model_with_nan_weights(tiny, capsys, encodes, name):
    from drhard.model import RobertaDot
    model = RobertaDot.from_pretrained(str(tiny["init"]))
    with torch.no_grad():
        model.norm.bias[3] = float("nan")
    model.save_pretrained(str(tiny["init"]))
    argv = star_inference(tiny) if name == "star/inference.py" else prepare_hardneg(tiny)
    rc, err = call(name, argv, capsys)
    assert rc == 1 and "norm.bias holds NaN or infinite values" in one_error(err)
    assert encodes == [] and files_under(tiny["root"] / "inf") == [] and files_under(tiny["root"] / "hn") == []


def test_star_inference_refuses_non_finite_embeddings_and_writes_nothing(tiny, capsys):
    """Before: exit 0, a 0-line rank file, NaN memmaps with sidecars that a rerun trusted."""
    from drhard.model import RobertaDot
    model = RobertaDot.from_pretrained(str(tiny["init"]))
    with torch.no_grad():
        model.embeddingHead.weight.fill_(3e38)
    model.save_pretrained(str(tiny["init"]))
    rc, err = call("star/inference.py", star_inference(tiny), capsys)
    assert rc == 1 and "encodes to NaN or infinite values" in one_error(err)
    assert files_under(tiny["root"] / "inf") == []


def test_adore_inference_refuses_nan_passage_embeddings(tiny, capsys, encodes):
    dmem = passage_embeddings(tiny, fill=(117, 5))
    rc, err = call("adore/inference.py", adore_inference(tiny, dmem), capsys)
    assert rc == 1
    assert one_error(err) == f"error: {dmem} (passage embeddings): row 117 holds NaN or infinite values"
    assert encodes == [] and files_under(tiny["root"] / "ad") == []


@pytest.mark.parametrize("name", ["star/inference.py", "adore/inference.py"])
def test_passage_embeddings_are_checked_by_the_one_index_reader(tiny, capsys, monkeypatch, name):
    """One mechanism checks passage embeddings for NaN/inf, in all three programs that search them: the index
    is filled through ``drhard.finite.checked_chunks`` (adore/train.py: test_adore_reliability)."""
    import drhard.finite as finite
    import drhard.index as dindex
    seen = []
    real_build, real_chunks = dindex.build_index, finite.checked_chunks
    monkeypatch.setattr(dindex, "build_index", lambda emb, **kw: seen.append(kw.get("check_finite")) or
                        real_build(emb, **kw))
    chunked = []
    monkeypatch.setattr(dindex, "checked_chunks", lambda *a, **k: chunked.append(a[1]) or real_chunks(*a, **k))
    dmem = passage_embeddings(tiny)
    argv = star_inference(tiny, "--topk", "3") if name == "star/inference.py" else adore_inference(tiny, dmem)
    rc, err = call(name, argv, capsys)
    assert rc == 0, err[-5:]
    path = tiny["root"] / "inf" / "passages.memmap" if name == "star/inference.py" else dmem
    assert seen == chunked == [f"{path} (passage embeddings)"]


def test_adore_inference_refuses_non_finite_query_embeddings(tiny, capsys):
    from drhard.model import RobertaDot
    model = RobertaDot.from_pretrained(str(tiny["init"]))
    with torch.no_grad():
        model.embeddingHead.weight.fill_(3e38)
    model.save_pretrained(str(tiny["init"]))
    rc, err = call("adore/inference.py", adore_inference(tiny, passage_embeddings(tiny)), capsys)
    assert rc == 1 and "train-query: row" in one_error(err) and "NaN or infinite" in one_error(err)
    assert files_under(tiny["root"] / "ad") == []


# --------------------------------------------------------------------------- inputs checked before the long work
def empty_query_set(pre, name="train-query"):
    prefix = str(pre / name)
    open(token_memmap_path(prefix), "wb").close()
    np.save(length_path(prefix), np.zeros(0, dtype=np.int32))
    write_meta(prefix, 0, 12)
    return token_memmap_path(prefix)


@pytest.mark.parametrize("name", ["star/inference.py", "star/prepare_hardneg.py", "adore/inference.py"])
def test_an_empty_query_set_is_a_clear_error_before_encoding(tiny, capsys, encodes, name):
    """Before: star/inference encoded the whole corpus, then died with ValueError: cannot mmap an empty file."""
    memmap = empty_query_set(tiny["preprocess"])
    argv = {"star/inference.py": star_inference(tiny), "star/prepare_hardneg.py": prepare_hardneg(tiny),
            "adore/inference.py": adore_inference(tiny, passage_embeddings(tiny))}[name]
    rc, err = call(name, argv, capsys)
    msg = one_error(err)
    assert rc == 1 and msg.startswith(f"error: {memmap}: holds no rows") and "empty" in msg
    assert encodes == []


@pytest.mark.parametrize("name", ["star/inference.py", "star/prepare_hardneg.py"])
def test_a_truncated_query_memmap_is_reported_before_any_passage_is_encoded(tiny, capsys, encodes, name):
    with open(tiny["preprocess"] / "train-query.memmap", "r+b") as f:
        f.truncate(100)
    argv = star_inference(tiny) if name == "star/inference.py" else prepare_hardneg(tiny)
    rc, err = call(name, argv, capsys)
    assert rc == 1 and "train-query.memmap: truncated" in one_error(err)
    assert encodes == []


def test_prepare_hardneg_reads_the_evaluated_qrels_before_encoding(tiny, capsys, encodes):
    shutil.copy(tiny["preprocess"] / "train-query.memmap", tiny["preprocess"] / "dev-query.memmap")
    shutil.copy(tiny["preprocess"] / "train-query_meta", tiny["preprocess"] / "dev-query_meta")
    shutil.copy(tiny["preprocess"] / "train-query_length.npy", tiny["preprocess"] / "dev-query_length.npy")
    (tiny["preprocess"] / "dev-qrel.tsv").write_text("0\t0\t5\t1\n1\t0\tx\t1\n")
    rc, err = call("star/prepare_hardneg.py", prepare_hardneg(tiny, "--mode", "dev"), capsys)
    assert rc == 1 and one_error(err).startswith(f"error: {tiny['preprocess'] / 'dev-qrel.tsv'}:2:")
    assert encodes == []


def test_prepare_hardneg_checks_train_qrels_offsets_before_encoding(tiny, capsys, encodes):
    with open(tiny["preprocess"] / "train-qrel.tsv", "a") as f:
        f.write("3\t0\t200\t1\n")  # passage offset 200 of 200 passages
    rc, err = call("star/prepare_hardneg.py", prepare_hardneg(tiny), capsys)
    assert rc == 1 and "passage offsets [200] are not rows of passages" in one_error(err)
    assert encodes == []


# --------------------------------------------------------------------------- disk full, output refused
@pytest.mark.parametrize("name", ["star/inference.py", "adore/inference.py"])
def test_a_full_disk_is_a_clear_error_before_encoding(tiny, capsys, encodes, monkeypatch, name):
    """Before: a sparse memmap was written until the disk filled, then SIGBUS ("Bus error"), a full-size temp
    file left behind."""
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    argv = star_inference(tiny) if name == "star/inference.py" else adore_inference(tiny, passage_embeddings(tiny))
    rc, err = call(name, argv, capsys)
    assert rc == 1 and "not enough free disk space" in one_error(err)
    assert encodes == []
    out = tiny["root"] / ("inf" if name == "star/inference.py" else "ad")
    assert files_under(out) == []  # the temp file is removed


def test_too_little_space_for_both_embedding_files_is_refused_up_front(tiny, capsys, encodes, monkeypatch):
    import collections
    import shutil as sh
    usage = collections.namedtuple("usage", "total used free")
    need = (200 + 48) * 32 * 4
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage(10 ** 12, 0, need - 1))
    rc, err = call("star/inference.py", star_inference(tiny), capsys)
    assert rc == 1 and f"{need} bytes" in one_error(err) and "2 embedding files" in one_error(err)
    assert encodes == []


@pytest.mark.slow
def test_an_output_folder_that_cannot_be_created_is_one_error_line(tiny):
    """As root a read-only folder still takes files; a folder under a regular file cannot exist (an OSError,
    which was a traceback). Run as the user runs it, through the script's own entry point."""
    blocker = tiny["root"] / "a-file"
    blocker.write_text("")
    out = blocker / "out"
    res = run_script("star/inference.py", *star_inference(tiny, out=out), check=False)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and one_error(lines) == f"error: {out}: Not a directory"
    assert not any("passages" in ln and "%" in ln for ln in lines)  # no encoding progress bar


@pytest.mark.parametrize("name", ["star/prepare_hardneg.py", "adore/inference.py"])
def test_an_output_folder_that_cannot_be_created_fails_before_encoding(tiny, capsys, encodes, name):
    blocker = tiny["root"] / "a-file"
    blocker.write_text("")
    out = blocker / "out"
    argv = prepare_hardneg(tiny, out=out) if name == "star/prepare_hardneg.py" else \
        adore_inference(tiny, passage_embeddings(tiny), out=out)
    rc, err = call(name, argv, capsys)
    assert rc == 1 and one_error(err) == f"error: {out}: Not a directory"
    assert encodes == []


def test_a_read_only_output_folder_is_one_error_line(tiny, capsys, encodes):
    out = tiny["root"] / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes")
        rc, err = call("star/inference.py", star_inference(tiny, out=out), capsys)
        assert rc == 1 and one_error(err).startswith(f"error: {out}") and "Permission denied" in one_error(err)
        assert encodes == []
    finally:
        out.chmod(0o755)


# --------------------------------------------------------------------------- flags at the door
BAD_FLAGS = {
    "star/inference.py": [("--max_doc_length", "0"), ("--max_doc_length", "-5"), ("--max_query_length", "1"),
                          ("--topk", "0"), ("--eval_batch_size", "0"), ("--faiss_gpus", "-1")],
    "star/prepare_hardneg.py": [("--max_doc_length", "0"), ("--max_query_length", "1"), ("--topk", "0"),
                                ("--eval_batch_size", "-2")],
    "adore/inference.py": [("--max_seq_length", "1"), ("--topk", "0"), ("--pergpu_eval_batch_size", "0"),
                           ("--faiss_gpus", "-3")],
}


@pytest.mark.parametrize("name,flag,value", [(n, f, v) for n, cases in BAD_FLAGS.items() for f, v in cases])
def test_numeric_flags_out_of_range_exit_2(tiny, capsys, encodes, name, flag, value):
    argv = {"star/inference.py": star_inference(tiny), "star/prepare_hardneg.py": prepare_hardneg(tiny),
            "adore/inference.py": adore_inference(tiny, passage_embeddings(tiny))}[name]
    rc, err = call(name, argv + [flag, value], capsys)
    assert rc == 2 and f"argument {flag}: must be >= " in one_error(err)
    assert encodes == [] and files_under(tiny["root"] / "inf") == []


@pytest.mark.parametrize("name,flag", [("star/inference.py", "--model_path"), ("star/inference.py", "--output_dir"),
                                       ("star/inference.py", "--preprocess_dir"),
                                       ("star/prepare_hardneg.py", "--model_path"),
                                       ("adore/inference.py", "--model_dir"), ("adore/inference.py", "--output_dir"),
                                       ("adore/inference.py", "--dmemmap_path")])
def test_a_path_of_the_wrong_kind_exits_2(tiny, capsys, name, flag):
    a_file = tiny["preprocess"] / "train-qrel.tsv"
    argv = {"star/inference.py": star_inference(tiny), "star/prepare_hardneg.py": prepare_hardneg(tiny),
            "adore/inference.py": adore_inference(tiny, passage_embeddings(tiny))}[name]
    wrong = tiny["root"] if flag == "--dmemmap_path" else a_file
    rc, err = call(name, argv + [flag, wrong], capsys)
    assert rc == 2 and str(wrong) in one_error(err) and ("is a directory" in one_error(err)
                                                         or "is not a directory" in one_error(err))


def test_default_paths_of_the_wrong_kind_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("data/passage/trained_models")
    open("data/passage/trained_models/star", "w").close()
    rc, err = call("star/inference.py", ["--data_type", "passage", "--mode", "dev"], capsys)
    assert rc == 2 and "--model_path" in one_error(err) and "is not a directory" in one_error(err)


def test_original_defaults_are_unchanged():
    a = script("star/inference.py").build_parser().parse_args(["--data_type", "passage", "--mode", "dev"])
    assert (a.max_query_length, a.max_doc_length, a.eval_batch_size, a.topk, a.faiss_gpus) == (32, 512, 32, 100, None)
    assert (a.model_path, a.output_dir) == (os.path.join(".", "data", "passage", "trained_models", "star"),
                                            os.path.join(".", "data", "passage", "evaluate", "star"))
    a = script("star/prepare_hardneg.py").build_parser().parse_args(["--data_type", "doc"])
    assert (a.max_query_length, a.max_doc_length, a.eval_batch_size, a.topk, a.mode) == (32, 512, 128, 200, "train")
    a = script("adore/inference.py").build_parser().parse_args(["--model_dir", "m", "--output_dir", "o",
                                                                "--preprocess_dir", "p", "--mode", "dev",
                                                                "--dmemmap_path", "d"])
    assert (a.topk, a.max_seq_length, a.pergpu_eval_batch_size, a.faiss_gpus) == (100, 64, 32, None)


def test_a_successful_run_leaves_no_probe_file(tiny, capsys):
    rc, err = call("star/inference.py", star_inference(tiny, "--topk", "3"), capsys)
    assert rc == 0, err[-5:]
    names = os.listdir(tiny["root"] / "inf")
    assert not [n for n in names if n.startswith(".")]
    assert json.load(open(sidecar_path(str(tiny["root"] / "inf" / "passages.memmap"))))["rows"] == 200


def test_an_empty_dmemmap_is_a_clear_error_even_without_passages_meta(tiny, capsys, encodes):
    dmem = tiny["root"] / "empty.memmap"
    dmem.write_bytes(b"")
    for name in ("passages_meta",):  # no passage count to compare with
        os.remove(tiny["preprocess"] / name)
    rc, err = call("adore/inference.py", adore_inference(tiny, dmem), capsys)
    assert rc == 1 and one_error(err) == f"error: {dmem}: holds no passage embeddings (empty file)"
    assert encodes == []
