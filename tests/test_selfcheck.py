"""python -m drhard.selfcheck on a CPU machine: the CPU rows pass, every GPU row is skipped saying why, the
exit status says whether something failed, and a check that gets a wrong answer is a failed row."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import cpu_env
from drhard import encode as encode_mod
from drhard import index as index_mod
from drhard import selfcheck

CPU_CHECKS = ["cpu_encode", "cpu_faiss_exact", "gloo_ddp"]


def row(out: str, name: str):
    m = re.search(rf"^{name}\s+(pass|fail|skip)\s+[\d.]+s\s+(.*)$", out, re.M)
    assert m, f"no table row for {name} in:\n{out}"
    return m.group(1), m.group(2)


@pytest.mark.slow
def test_selfcheck_on_cpu_passes_cpu_rows_and_skips_gpu_rows_saying_why(tmp_path):
    report_path = tmp_path / "out" / "selfcheck.json"
    env = cpu_env()
    proc = subprocess.run([sys.executable, "-m", "drhard.selfcheck", "--quick", "--json", str(report_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert [c["name"] for c in report["checks"]] == selfcheck.CHECK_NAMES
    for name in selfcheck.CHECK_NAMES:
        status, detail = row(proc.stdout, name)
        assert (status, detail) == (checks[name]["status"], checks[name]["detail"])
        if name in CPU_CHECKS:
            assert status == "pass", f"{name}: {detail}"
        else:
            assert status == "skip" and "CUDA" in detail, f"{name}: {detail}"
    assert "2 ranks (gloo, cpu/cpu, shares 4+3)" in checks["gloo_ddp"]["detail"]  # results in rank order
    # versions and devices, as printed and as written
    v = report["versions"]
    assert v["torch"] == torch.__version__ and v["faiss_gpu"] is False
    assert re.search(rf"^torch\s+{re.escape(torch.__version__)}", proc.stdout, re.M)
    assert re.search(r"^faiss\s+\S+ \(GPU support: no", proc.stdout, re.M)
    assert re.search(r"^transformers\s+\S+", proc.stdout, re.M) and re.search(r"^python\s+3\.", proc.stdout, re.M)
    assert re.search(r"^gpu\s+none \(", proc.stdout, re.M) and report["devices"]["gpus"] == []
    # CPU throughput of the tiny model: passages of 64..128 real tokens
    (tput,) = report["throughput"]
    assert (tput["model"], tput["device"], tput["precision"]) == ("tiny", "cpu", "fp32")
    assert tput["rows"] / tput["seconds"] == pytest.approx(tput["passages_per_s"], rel=0.01)
    assert 64 <= tput["tokens_per_s"] / tput["passages_per_s"] <= 128
    assert re.search(r"^tiny\s+cpu\s+fp32\s+[\d.]+\s+\d+", proc.stdout, re.M)
    assert f"{len(checks)} checks: 3 passed, {len(checks) - 3} skipped, 0 failed" in proc.stdout


def test_a_wrong_search_result_is_a_failed_row_and_exit_status_1(monkeypatch, capsys, tmp_path):
    real = index_mod.search

    def first_two_swapped(index, q, k, **kw):
        s, i = real(index, q, k, **kw)
        return s, i[:, [1, 0] + list(range(2, k))]

    monkeypatch.setattr(index_mod, "search", first_two_swapped)
    out_json = tmp_path / "r.json"
    assert selfcheck.main(["--only", "cpu_faiss_exact", "--no_throughput", "--json", str(out_json)]) == 1
    status, detail = row(capsys.readouterr().out, "cpu_faiss_exact")
    assert status == "fail" and "ids differ" in detail
    report = json.loads(out_json.read_text())
    assert report["ok"] is False and [c["status"] for c in report["checks"]] == ["fail"]


def test_batched_encode_that_misplaces_rows_fails_the_encode_check(monkeypatch, capsys):
    real = encode_mod.batch_rows
    monkeypatch.setattr(encode_mod, "batch_rows", lambda cache, rows, *a, **kw: real(cache, rows[::-1], *a, **kw))
    assert selfcheck.main(["--only", "cpu_encode", "--no_throughput"]) == 1
    status, detail = row(capsys.readouterr().out, "cpu_encode")
    assert status == "fail" and "differs from one row at a time" in detail


def test_a_check_that_raises_is_a_failed_row_naming_the_error(monkeypatch, capsys):
    def broken(*a, **kw):
        raise RuntimeError("faiss exploded")

    monkeypatch.setattr(index_mod, "build_index", broken)
    assert selfcheck.main(["--only", "cpu_faiss_exact,cuda_encode_fp16", "--no_throughput"]) == 1
    out = capsys.readouterr().out
    assert row(out, "cpu_faiss_exact") == ("fail", "RuntimeError: faiss exploded")
    assert row(out, "cuda_encode_fp16")[0] == "skip"  # skips do not fail the run; the failure does
    assert "2 checks: 0 passed, 1 skipped, 1 failed" in out


def test_unknown_check_name_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        selfcheck.main(["--only", "cpu_encode,warp_drive"])
    assert e.value.code == 2


def test_gradient_comparison_catches_a_wrong_scale_and_tolerates_rounding_of_zero_gradients():
    rng = np.random.default_rng(0)
    ref = {"w": rng.standard_normal((4, 3)), "key.bias": np.zeros(3)}
    noisy = {"w": ref["w"] * (1 + 1e-7), "key.bias": np.full(3, 1e-9)}  # exact 0 computed as rounding noise
    assert selfcheck.compare_grads(noisy, ref, 1e-4, "ok") < 1e-4
    with pytest.raises(selfcheck.CheckFailed, match="gradient of w"):
        selfcheck.compare_grads({**noisy, "w": ref["w"] * 2}, ref, 1e-4, "W times too large")
    with pytest.raises(selfcheck.CheckFailed, match="key.bias"):
        selfcheck.compare_grads({**noisy, "key.bias": np.full(3, 0.5)}, ref, 1e-4, "bias")
    with pytest.raises(selfcheck.CheckFailed, match="prove nothing"):
        selfcheck.compare_grads({"w": np.zeros(2)}, {"w": np.zeros(2)}, 1e-4, "zeros")


def test_topk_comparison_allows_swapped_near_ties_only():
    s = np.array([[5.0, 4.0, 3.0, 3.0 + 1e-6, 1.0]])[:, [0, 1, 3, 2, 4]]  # places 2 and 3 nearly tied
    i = np.array([[0, 1, 2, 3, 4]])
    selfcheck.same_topk(s, i, s, i[:, [0, 1, 3, 2, 4]], 1e-3, "near tie")
    with pytest.raises(selfcheck.CheckFailed, match="ids differ"):
        selfcheck.same_topk(s, i, s, i[:, [1, 0, 2, 3, 4]], 1e-3, "clear swap")
    with pytest.raises(selfcheck.CheckFailed, match="scores differ"):
        selfcheck.same_topk(s, i, s + 0.01, i, 1e-3, "scores")
