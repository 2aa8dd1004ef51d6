"""Lineage manifests and the tokenizer check of star/inference, star/prepare_hardneg and adore/inference."""
import hashlib
import json
import logging
import os
import shutil

import numpy as np
import pytest

import drhard.lineage as lineage
from drhard.encode import model_fingerprint
from drhard.lineage import TokenizerMismatch, check_tokenizer_lineage, file_record, write_manifest
from drhard.model import RobertaDot, build_tiny_roberta
from drhard.preprocess import PreprocessArgs, preprocess
from drhard.tokenization import load_tokenizer
from conftest import command
from tinyprep import run_script
from toy_data import make_tiny_tokenizer, make_toy_msmarco


def load_script(rel):
    return command(rel)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A preprocess folder made with tokenizer A; model dirs carrying A, B (another vocabulary) and none."""
    root = tmp_path_factory.mktemp("lineage")
    tok_a = make_tiny_tokenizer(root / "tok_a")
    tok_b = make_tiny_tokenizer(root / "tok_b", vocab_size=400)
    data = make_toy_msmarco(root / "data", "passage", n_passages=60)
    pre = root / "pre"
    preprocess(PreprocessArgs(data_dir=str(data), out_data_dir=str(pre), model_name_or_path=str(tok_a),
                              max_seq_length=32, max_query_length=12, threads=1))
    model = build_tiny_roberta(vocab_size=600, hidden=32, layers=1, heads=2, seed=1)
    models = {}
    for name, tok in (("a", tok_a), ("b", tok_b), ("none", None)):
        models[name] = root / f"model_{name}"
        model.save_pretrained(str(models[name]), tokenizer_dir=str(tok) if tok else None)
    return {"root": root, "pre": pre, "tok_a": tok_a, "tok_b": tok_b, "models": models}


def star_args(world, model, out, *extra):
    return ["--data_type", "passage", "--mode", "dev", "--max_doc_length", 32, "--max_query_length", 12,
            "--topk", 5, "--no_cuda", "--model_path", model, "--preprocess_dir", world["pre"],
            "--output_dir", out, *extra]


# --------------------------------------------------------------------------- file records and manifests
def test_file_record_hashes_small_files_fully_and_large_ones_at_both_ends(tmp_path, monkeypatch):
    data = np.random.default_rng(0).bytes(3 * 2 ** 20 + 17)
    path = tmp_path / "big.memmap"
    path.write_bytes(data)
    rec = file_record(str(path))
    assert rec["hashed"] == "full" and rec["sha256"] == hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(lineage, "FULL_HASH_LIMIT", 2 ** 20)
    rec = file_record(str(path))
    assert rec["size"] == len(data) and rec["hashed"] == "first and last 1 MiB" and "sha256" not in rec
    assert rec["sha256_first_1MiB"] == hashlib.sha256(data[:2 ** 20]).hexdigest()
    assert rec["sha256_last_1MiB"] == hashlib.sha256(data[-2 ** 20:]).hexdigest()
    assert file_record(str(tmp_path / "nope"))["missing"] is True


def test_write_manifest_schema(tmp_path, world):
    src = tmp_path / "in.tsv"
    src.write_text("1\t2\t3\n")
    model = RobertaDot.from_pretrained(str(world["models"]["a"]))
    path = write_manifest(str(tmp_path / "out"), "stage", {"run": str(src)}, {"note": "x"},
                          args={"topk": 5}, model_dir=str(world["models"]["a"]), model=model, rows={"queries": 3})
    assert path == str(tmp_path / "out" / "stage.manifest.json")
    man = json.loads(open(path).read())
    assert man["schema"] == lineage.SCHEMA and man["name"] == "stage" and man["note"] == "x"
    assert man["flags"] == {"topk": 5} and man["rows"] == {"queries": 3}
    assert set(man["versions"]) == {"python", "torch", "transformers", "tokenizers", "faiss", "numpy", "drhard"}
    assert man["inputs"]["run"]["sha256"] == hashlib.sha256(b"1\t2\t3\n").hexdigest()
    weights = world["models"]["a"] / "model.safetensors"
    assert man["model"]["files"]["model.safetensors"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert man["model"]["fingerprint"] == model_fingerprint(model)
    assert not [n for n in os.listdir(tmp_path / "out") if ".tmp-" in n]
    with pytest.raises(ValueError, match="overwrite"):
        write_manifest(str(tmp_path), "x", {}, {"rows": 1})


# --------------------------------------------------------------------------- the tokenizer check
def test_check_compares_the_model_tokenizer_with_the_preprocess_manifest(world):
    pre_fp = json.loads((world["pre"] / "preprocess_manifest.json").read_text())["tokenizer"]["fingerprint"]
    assert pre_fp == load_tokenizer(world["tok_a"]).fingerprint()
    rec = check_tokenizer_lineage(str(world["pre"]), str(world["models"]["a"]))
    assert rec["checked"] and rec["fingerprint"] == pre_fp
    b_fp = load_tokenizer(world["tok_b"]).fingerprint()
    with pytest.raises(TokenizerMismatch) as e:
        check_tokenizer_lineage(str(world["pre"]), str(world["models"]["b"]))
    msg = str(e.value)
    assert pre_fp[:16] in msg and b_fp[:16] in msg and "--allow_tokenizer_mismatch" in msg and "\n" not in msg
    rec = check_tokenizer_lineage(str(world["pre"]), str(world["models"]["b"]), allow_mismatch=True)
    assert not rec["checked"] and rec["mismatch_allowed"] and rec["fingerprint"] == b_fp


def test_mismatch_refused_before_any_output(world, tmp_path):
    star = load_script("star/inference.py")
    out = tmp_path / "star"
    with pytest.raises(TokenizerMismatch, match="tokenizer mismatch"):
        star.main([str(a) for a in star_args(world, world["models"]["b"], out)])
    assert not out.exists()
    hard = load_script("star/prepare_hardneg.py")
    with pytest.raises(TokenizerMismatch):
        hard.main([str(a) for a in ["--data_type", "passage", "--model_path", world["models"]["b"],
                                    "--preprocess_dir", world["pre"], "--output_dir", tmp_path / "hard", "--no_cuda",
                                    "--not_faiss_cuda", "--topk", 5, "--max_doc_length", 32]])
    assert not (tmp_path / "hard").exists()
    adore = load_script("adore/inference.py")
    pembed = tmp_path / "p.memmap"
    np.zeros((60, 32), np.float32).tofile(pembed)
    with pytest.raises(TokenizerMismatch):
        adore.main([str(a) for a in ["--model_dir", world["models"]["b"], "--output_dir", tmp_path / "adore",
                                     "--preprocess_dir", world["pre"], "--mode", "dev", "--dmemmap_path", pembed,
                                     "--no_cuda"]])
    assert not (tmp_path / "adore").exists()


@pytest.mark.slow
def test_mismatch_is_a_one_line_error_exit(world, tmp_path):
    p = run_script("star/inference.py", *star_args(world, world["models"]["b"], tmp_path / "out"), check=False)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("error: tokenizer mismatch")
    assert not (tmp_path / "out").exists()


def test_override_proceeds_and_records_the_mismatch(world, tmp_path):
    star = load_script("star/inference.py")
    out = tmp_path / "star"
    star.main([str(a) for a in star_args(world, world["models"]["b"], out, "--allow_tokenizer_mismatch")])
    assert (out / "dev.rank.tsv").stat().st_size > 0
    man = json.loads((out / "star-inference-dev.manifest.json").read_text())
    assert man["tokenizer"]["mismatch_allowed"] and not man["tokenizer"]["checked"]
    assert man["flags"]["allow_tokenizer_mismatch"] is True


def test_matching_model_writes_a_manifest_of_inputs_and_outputs(world, tmp_path):
    star = load_script("star/inference.py")
    out = tmp_path / "star"
    star.main([str(a) for a in star_args(world, world["models"]["a"], out)])
    man = json.loads((out / "star-inference-dev.manifest.json").read_text())
    assert man["tokenizer"]["checked"]
    n_pass = json.loads((world["pre"] / "preprocess_manifest.json").read_text())["rows"]["passages"]
    assert man["rows"]["passages"] == n_pass
    assert man["rows"]["dev-query"] == len(open(out / "dev-query-id.memmap", "rb").read()) // 4
    for label, path in [("passages", "passages.memmap"), ("rank", "dev.rank.tsv")]:
        assert man["outputs"][label]["sha256"] == hashlib.sha256((out / path).read_bytes()).hexdigest()
    assert man["inputs"]["passages"]["size"] == (world["pre"] / "passages.memmap").stat().st_size
    assert man["inputs"]["preprocess_manifest.json"]["hashed"] == "full"


@pytest.mark.parametrize("missing", ["preprocess manifest", "model tokenizer files"])
def test_unknown_lineage_warns_and_proceeds(world, tmp_path, caplog, missing):
    pre, model = world["pre"], world["models"]["a"]
    if missing == "preprocess manifest":  # a folder made by the original code
        pre = tmp_path / "pre"
        shutil.copytree(world["pre"], pre)
        os.remove(pre / "preprocess_manifest.json")
    else:
        model = world["models"]["none"]
    star = load_script("star/inference.py")
    out = tmp_path / "star"
    args = star_args(world, model, out)
    args[args.index("--preprocess_dir") + 1] = pre
    with caplog.at_level(logging.WARNING, logger="drhard.lineage"):
        star.main([str(a) for a in args])
    assert "cannot check" in caplog.text
    assert (out / "dev.rank.tsv").exists()
    assert json.loads((out / "star-inference-dev.manifest.json").read_text())["tokenizer"]["checked"] is False
