"""drhard.planner: formulas against hand computations and slow references (the real model's parameters,
torch's FLOP counter, torch's saved-tensor hooks, faiss' own index sizes), fit decisions, the CLI, and a
calibration that predicts a real encoding's wall time."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from drhard import planner as pl
from drhard.model import build_tiny_roberta

N = 8_841_823
BIG = dict(gpus=4, gpu_memory="80GB", gpu_type="H100", ram="256GB", cores=32)


# --------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("text,expected", [
    ("80GB", 80 * 10 ** 9), ("24GiB", 24 * 2 ** 30), ("1.5TB", 1_500_000_000_000), ("512MB", 512 * 10 ** 6),
    ("100B", 100), ("256 gb", 256 * 10 ** 9), ("2MiB", 2 * 2 ** 20), ("64G", 64 * 10 ** 9)])
def test_parse_size(text, expected):
    assert pl.parse_size(text) == expected


@pytest.mark.parametrize("text", ["80", "abc", "5XB", "", "GB", "-1GB"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        pl.parse_size(text)


def test_format_size_and_seconds():
    assert pl.format_size(N * 768 * 4) == "27.2 GB"
    assert pl.format_size(512) == "512 B"
    assert pl.format_seconds(90) == "90.0 s"
    assert pl.format_seconds(3 * 3600) == "3.0 h"
    assert pl.format_seconds(10 * 86400) == "10.0 d"


# --------------------------------------------------------------------------- formulas
def test_params_equal_the_real_models():
    tiny = build_tiny_roberta()
    assert pl.TINY.params() == sum(p.numel() for p in tiny.parameters())
    with torch.device("meta"):
        base = pl._build_model(pl.ROBERTA_BASE, "meta")
    assert pl.ROBERTA_BASE.params() == sum(p.numel() for p in base.parameters())
    assert 124e6 < pl.ROBERTA_BASE.params() < 126e6


def test_forward_and_backward_flops_equal_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode
    model = build_tiny_roberta()
    model.train()
    for b, t in ((3, 16), (2, 40)):
        ids = torch.randint(3, 1000, (b, t))  # (B, T)
        mask = torch.ones_like(ids)  # (B, T)
        with FlopCounterMode(display=False) as fwd:
            emb = model.encode(ids, mask)  # (B, D)
        assert fwd.get_total_flops() == b * pl.TINY.sequence_flops(t)
        with FlopCounterMode(display=False) as both:
            model.encode(ids, mask).sum().backward()  # backward = 2 x forward
        assert both.get_total_flops() == 3 * b * pl.TINY.sequence_flops(t)
        del emb


def test_star_step_flops_at_the_papers_batch():
    w = pl.Workload()
    h, ff, layers = 768, 3072, 12
    per_token = lambda t: layers * (2 * (4 * h * h + 2 * h * ff) + 4 * t * h)  # noqa: E731
    fwd = 256 * (24 * per_token(24) + 2 * h * h) + 512 * (120 * per_token(120) + 2 * h * h)
    assert pl.star_step_flops(w, checkpointing=False) == pytest.approx(3 * fwd)
    assert pl.star_step_flops(w, checkpointing=False) == pytest.approx(3.5e13, rel=0.02)
    assert pl.star_step_flops(w, checkpointing=True) == pytest.approx(4 * fwd)


def _saved_activation_bytes(model, ids, mask, autocast_dtype=None):
    """Bytes of the tensors autograd keeps for backward (torch's saved-tensor hooks), weights and their
    autocast copies excluded."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes = {tuple(p.shape) for p in model.parameters() if p.ndim == 2}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        is_cast_weight = autocast_dtype is not None and t.dtype == autocast_dtype and tuple(t.shape) in shapes
        if ptr not in weights and not is_cast_weight:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            model.encode(ids, mask)
    return sum(seen.values())


@pytest.mark.parametrize("t", [16, 128])
@pytest.mark.parametrize("half", [False, True])
def test_activation_memory_matches_saved_tensors(t, half):
    model = build_tiny_roberta()
    model.train()
    b = 4
    ids = torch.randint(3, 1000, (b, t))  # (B, T)
    measured = _saved_activation_bytes(model, ids, torch.ones_like(ids), torch.bfloat16 if half else None)
    predicted = pl.activation_memory(pl.TINY, [(b * t, t)], checkpointing=False, fp16=half)
    assert predicted == pytest.approx(measured, rel=0.12)


def test_checkpointing_keeps_layer_inputs_only():
    w = pl.Workload()
    full = pl.star_memory(w, 256, checkpointing=False, fp16=True)
    ckpt = pl.star_memory(w, 256, checkpointing=True, fp16=True)
    states = pl.ROBERTA_BASE.params() * 18 + pl.CUDA_CONTEXT_BYTES
    tokens_q, tokens_d = 256 * 24, 512 * 120
    per_layer = lambda t: 50 * 768 + 12 * 12 * t  # noqa: E731
    layer = tokens_q * per_layer(24) + tokens_d * per_layer(120)  # one layer's activations
    ends = 8 * 768 * (tokens_q + tokens_d)  # embedding output and final hidden states, fp32
    by_hand_full = states + 12 * layer + ends
    by_hand_ckpt = states + (tokens_q + tokens_d) * 12 * 4 * 768 + 2 * layer + ends
    assert full == pytest.approx(by_hand_full)
    assert ckpt == pytest.approx(by_hand_ckpt)
    assert 40e9 < full < 60e9 and 8e9 < ckpt < 16e9


def test_length_sorted_batches_reproduce_encode():
    from drhard.encode import length_sorted_batches
    lengths = np.random.default_rng(1).integers(3, 300, size=1000)
    ours = pl.length_sorted_batch_lengths(lengths, 256, 64)
    theirs = [(len(b), int(np.minimum(lengths[b], 256).max())) for b in length_sorted_batches(lengths, 256, 64)]
    assert ours == theirs


# --------------------------------------------------------------------------- disk
def test_embedding_and_preprocess_bytes():
    enc = pl.plan_stage("encode_passages", gpus=0, ram="24GB", cores=2)
    assert enc.disk_bytes == N * 768 * 4 == 27_162_080_256
    half = pl.plan_stage("encode_passages", gpus=0, ram="24GB", cores=2, embedding_dtype="float16")
    assert half.disk_bytes == N * 768 * 2
    pre = pl.plan_stage("preprocess", gpus=0, ram="24GB", cores=2)
    # int32 rows of 512 + int32 length + 16 B of id maps per passage; queries with qrels at 64 tokens + qrels line
    assert pre.disk_bytes == N * (512 * 4 + 4 + 16) + (502_939 + 6_980 + 43) * (64 * 4 + 4 + 16 + 16)
    doc = pl.plan_stage("preprocess", data_type="doc", gpus=0, ram="24GB", cores=2)
    assert doc.disk_bytes == 3_213_835 * 2068 + (367_013 + 5_193 + 43) * 292


def test_hard_json_bytes_match_the_writer(tmp_path):
    from drhard.retrieval import write_hard_json
    n, q, k = 8_841_823, 300, 200
    negs = [np.random.default_rng(i).integers(1_000_000, n, size=k) for i in range(q)]
    write_hard_json(str(tmp_path / "hard.json"), negs)
    plan = pl.plan_stage("hard_json", queries=q, k=k, passages=n, gpus=0, ram="24GB", cores=2)
    assert plan.disk_bytes == pytest.approx((tmp_path / "hard.json").stat().st_size, rel=0.03)


@pytest.mark.parametrize("factory", ["Flat", "SQ8", "SQfp16", "PQ8x4", "IVF16,PQ8x4", "IVF16,Flat", "HNSW16",
                                     "OPQ8,PQ8x4", "PCA32,SQ8"])
def test_factory_bytes_per_vector_match_faiss(factory):
    faiss = pytest.importorskip("faiss")
    d = 64
    x = np.random.default_rng(0).random((5000, d), dtype=np.float32)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x[:2000])
    small = faiss.serialize_index(index).size
    index.add(x[2000:])
    large = faiss.serialize_index(index).size
    per_vec, _fixed = pl.factory_bytes_per_vector(factory, d)
    assert per_vec == pytest.approx((large - small) / 3000, rel=0.12)


def test_factory_refuses_unknown_component():
    with pytest.raises(ValueError, match="LSH"):
        pl.factory_bytes_per_vector("LSH", 768)


# --------------------------------------------------------------------------- fit decisions
def test_index_larger_than_ram_goes_streamed():
    flat = pl.plan_stage("search_faiss_cpu", gpus=0, ram="24GB", cores=2)
    assert flat.ram_bytes > 27e9 and not flat.fits
    advice = " ".join(flat.advice)
    assert pl.FLAGS["exact_search"] in advice and pl.FLAGS["embedding_dtype"] in advice
    assert pl.FLAGS["index_factory"] in advice
    chosen = pl.plan_stage("search", gpus=0, ram="24GB", cores=2)
    assert chosen.name == "search_streamed" and chosen.fits and chosen.ram_bytes < 6e9
    assert pl.plan_stage("search", gpus=0, ram="64GB", cores=2).name == "search_faiss_cpu"


def test_streamed_search_memory_does_not_grow_with_the_collection():
    small = pl.plan_stage("search_streamed", passages=1_000_000, gpus=0, ram="24GB", cores=2)
    large = pl.plan_stage("search_streamed", passages=100_000_000, gpus=0, ram="24GB", cores=2)
    assert small.ram_bytes == large.ram_bytes
    assert large.seconds > 50 * small.seconds


def test_gpu_shards_fit_four_80gb_gpus_not_one_24gb():
    four = pl.plan_stage("search_gpu", **BIG)
    assert four.fits and four.gpu_bytes == pytest.approx(N * 768 * 4 / 4 + pl.GPU_MARGIN_BYTES)
    one = pl.plan_stage("search_gpu", gpus=1, gpu_memory="24GB", gpu_type="RTX4090", ram="64GB", cores=8)
    assert not one.fits
    advice = " ".join(one.advice)
    assert ">= 2 GPUs" in advice and pl.FLAGS["faiss_fp16"] in advice and pl.FLAGS["not_faiss_cuda"] in advice
    chosen = pl.plan_stage("search", gpus=1, gpu_memory="24GB", gpu_type="RTX4090", ram="64GB", cores=8)
    assert chosen.name == "search_gpu_fp16" and chosen.fits
    tiny_gpu = pl.plan_stage("search", gpus=1, gpu_memory="8GB", gpu_type="T4", ram="64GB", cores=8)
    assert tiny_gpu.name == "search_faiss_cpu"


def test_gpu_build_needs_the_index_in_host_ram():
    plan = pl.plan_stage("search_gpu", gpus=4, gpu_memory="80GB", gpu_type="H100", ram="16GB", cores=8)
    assert not plan.fits and any("build_index" in a for a in plan.advice)


def test_star_batch_fit_and_advice():
    no_ckpt = pl.plan_stage("star_train", gpus=1, gpu_memory="24GB", gpu_type="RTX4090", ram="64GB", cores=8,
                            gradient_checkpointing=False)
    assert not no_ckpt.fits and pl.FLAGS["gradient_checkpointing"] in " ".join(no_ckpt.advice)
    ckpt = pl.plan_stage("star_train", gpus=1, gpu_memory="24GB", gpu_type="RTX4090", ram="64GB", cores=8)
    assert ckpt.fits
    small = pl.plan_stage("star_train", gpus=1, gpu_memory="8GB", gpu_type="T4", ram="64GB", cores=8)
    assert not small.fits
    advice = " ".join(small.advice)
    assert pl.FLAGS["torchrun"] in advice and pl.FLAGS["loss_scope"] in advice
    assert pl.FLAGS["gradient_accumulation_steps"] in advice and "not the paper's loss" in advice
    big = pl.plan_stage("star_train", **BIG)
    assert big.fits and big.details["step_flops"] == pytest.approx(pl.star_step_flops(pl.Workload()))


def test_pending_flags_are_marked():
    assert pl.flag("embedding_dtype").endswith("(to come)")
    assert not pl.flag("gradient_checkpointing").endswith("(to come)")
    assert set(pl.PENDING_FLAGS) <= set(pl.FLAGS)


def test_adore_index_on_the_other_gpus():
    plan = pl.plan_stage("adore_train", **BIG)
    assert plan.fits and "3 GPU" in plan.title
    assert plan.details["steps"] == 6 * -(-502_939 // 32)
    cpu = pl.plan_stage("adore_train", gpus=0, ram="24GB", cores=2)
    assert "streamed" in cpu.title and cpu.seconds > 10 * plan.seconds


def test_pipeline_disk_check():
    plan = pl.plan_pipeline(pl.Workload(), pl.Machine(gpus=4, gpu_memory=80 * 10 ** 9, gpu_type="H100",
                                                      ram=256 * 10 ** 9, cores=32, disk=40 * 10 ** 9))
    assert not plan.fits
    first_bad = next(s for s in plan.stages if s.chosen and not s.fits)
    assert "encode" in first_bad.title  # 18.4 GB of token memmaps fit, the 27 GB of embeddings next do not


# --------------------------------------------------------------------------- calibration and rates
def test_calibration_round_trip_and_core_scaling(tmp_path):
    cal = pl.Calibration(device="cpu", threads=2, search_threads=2, encode_flops=2e11, encode_overhead=0.01,
                         search_flops=1e11, notes=["x"])
    cal.save(str(tmp_path / "cal.json"))
    back = pl.Calibration.load(str(tmp_path / "cal.json"))
    assert back == cal
    rates = pl.resolve_rates(pl.Machine(gpus=0, ram=10 ** 10, cores=8), back)
    assert rates.cpu_encode_flops == pytest.approx(8e11) and rates.search_flops == pytest.approx(4e11)
    assert rates.sources["cpu_encode_flops"].startswith("measured")
    assert rates.sources["stream_flops"].startswith("default")
    (tmp_path / "bad.json").write_text("[1, 2]")
    from drhard.errors import DataError
    with pytest.raises(DataError):
        pl.Calibration.load(str(tmp_path / "bad.json"))


def test_gpu_defaults_are_labelled_datasheet_figures():
    rates = pl.resolve_rates(pl.Machine(gpus=1, gpu_type="H100", ram=10 ** 11, cores=8), encode_fp16=True)
    assert rates.gpu_encode_flops == pytest.approx(989e12 * pl.ENCODE_UTILISATION)
    assert "datasheet" in rates.sources["gpu_encode_flops"]


@pytest.mark.slow
def test_calibrated_encoder_predicts_encoding_time():
    """The tiny encoder's calibration (FLOP rate + per-call overhead) predicts the wall time of
    drhard.encode.encode_cache on random rows of mixed lengths within 30 %.  Calibration and measurement
    alternate three times and the medians are compared, so a neighbour's load hits both alike."""
    from drhard.encode import encode_cache
    rng = np.random.default_rng(0)
    n, width, batch = 3000, 128, 32
    lengths = rng.integers(8, width + 1, size=n).astype(np.int32)
    ids = rng.integers(3, 1000, size=(n, width)).astype(np.int32)

    class Cache:
        prefix = "random rows"

        def __init__(self):
            self.ids, self.lengths = ids, lengths

        def __len__(self):
            return n

    model, cache = build_tiny_roberta(), Cache()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier on a shared machine; calibration and run use the same threads
    predicted, measured = [], []
    try:
        encode_cache(model, cache, width, batch, torch.device("cpu"), progress=False)  # warm-up
        for _ in range(3):
            cal = pl.calibrate("cpu", quick=True, shape=pl.TINY, parts=("encode",))
            plan = pl.plan_stage("encode_passages", calibration=cal, model=pl.TINY, passages=n,
                                 passage_lengths=lengths, doc_length=width, encode_batch=batch, dim=32, gpus=0,
                                 cores=cal.threads, ram="24GB")
            predicted.append(plan.seconds)
            encode_cache(model, cache, width, batch, torch.device("cpu"), progress=False)  # warm again
            t0 = time.perf_counter()
            encode_cache(model, cache, width, batch, torch.device("cpu"), progress=False)
            measured.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    assert plan.details["calls"] == -(-n // batch)
    assert np.median(predicted) == pytest.approx(np.median(measured), rel=0.3), (predicted, measured)


def test_calibrate_parts_and_notes(tmp_path):
    cal = pl.calibrate("cpu", quick=True, shape=pl.TINY, parts=("tokenize", "disk", "json"), disk_path=str(tmp_path))
    assert cal.tokenize_tokens_per_s is None and any("tokenization" in n for n in cal.notes)
    assert cal.disk_write > 0 and cal.disk_read > 0 and cal.json_entries_per_s > 0
    assert cal.encode_flops is None and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- CLI
def test_cli_table_and_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert pl.main(["--passages", "8841823", "--gpus", "4", "--gpu_memory", "80GB", "--ram", "256GB",
                    "--gpu_type", "H100", "--cores", "32", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("stage"))
    assert header.split() == ["stage", "disk", "RAM", "GPU", "mem", "time", "fits"]
    assert any(ln.startswith("total") for ln in lines)
    for what in ("preprocess", "STAR training", "ADORE training", "hard.json", "faiss flat sharded over 4 GPUs"):
        assert what in text
    assert "27.2 GB" in text and "rates:" in text
    plan = json.loads(out.read_text())
    assert plan["total"]["fits"] is True
    names = [s["name"] for s in plan["stages"]]
    assert names[0] == "preprocess" and "star_train" in names and "adore_train" in names
    chosen = [s for s in plan["stages"] if s["chosen"]]
    assert plan["total"]["seconds"] == pytest.approx(sum(s["seconds"] for s in chosen))


def test_cli_small_machine_says_what_to_do(capsys):
    assert pl.main(["--gpus", "0", "--ram", "24GB", "--cores", "2"]) == 0
    text = capsys.readouterr().out
    assert "streamed from the fp32 file" in text and "NO [" in text and "STAR needs a GPU" in text


@pytest.mark.parametrize("argv", [["--ram", "24"], ["--gpu_memory", "lots"], ["--gpu_type", "Z80"],
                                  ["--index_factory", "LSH"], ["--calibrate", "--calibration", "x.json"]])
def test_cli_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        pl.parse_args(argv)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_missing_calibration_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "drhard.planner", "--gpus", "0", "--ram", "24GB",
                           "--calibration", str(tmp_path / "none.json")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "none.json" in proc.stderr


@pytest.mark.parametrize("name,profile", [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100-PCIe"),
                                          ("NVIDIA A100-SXM4-40GB", "A100-40GB"), ("NVIDIA A100-SXM4-80GB", "A100"),
                                          ("NVIDIA A10", "A10"), ("NVIDIA GeForce RTX 4090", "RTX4090"),
                                          ("Tesla T4", "T4"), ("NVIDIA L40S", "L40S"), ("NVIDIA GeForce RTX 4080", None)])
def test_cuda_device_names_map_to_profiles(name, profile):
    assert pl._match_profile(name) == profile


def test_cli_gpu_server_without_cores_says_what_it_assumed(capsys):
    assert pl.main(["--gpus", "16", "--gpu_type", "H100", "--ram", "256GB"]) == 0  # more GPUs than this machine's
    first = capsys.readouterr().out.splitlines()[0]
    assert f"{16 * pl.CORES_PER_GPU} cores" in first and "--cores not given" in first and "16 x H100 80.0 GB" in first
