"""Kill a training run (SIGKILL, SIGTERM, Ctrl-C) after a checkpoint or at a random moment, resume it, and get
the weights of an uninterrupted run."""
import re
import signal
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from drhard.dataset import pad_batch
from drhard.io import TokenCache
from drhard.model import RobertaDot
from tinyprep import make_tiny_preprocess, popen_script, run_script

pytestmark = pytest.mark.slow  # subprocesses, kills, resumes, downloads, the README's commands


def kill_when(proc, path, timeout=120, sig=signal.SIGKILL):
    """Send ``sig`` to ``proc`` as soon as ``path`` exists (it was still running then); its exit status."""
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {path} appeared")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)
    proc.send_signal(sig)
    return proc.wait()


def same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def frozen_pembed(tiny, tmp_path):
    """Passage embeddings of the init model, written as a memmap (the frozen ADORE index)."""
    model = RobertaDot.from_pretrained(str(tiny["init"])).eval()
    docs = TokenCache(str(tiny["preprocess"] / "passages"))
    with torch.no_grad():
        emb = model(*pad_batch([docs[i] for i in range(len(docs))], model.pad_token_id)).numpy()
    pembed = tmp_path / "passages.memmap"
    emb.astype(np.float32).tofile(pembed)
    return pembed


def adore_args(tmp_path, seed, epochs, save_steps):
    """adore/train.py's flags on a tiny folder made with ``seed`` and its init model's frozen index."""
    tiny = make_tiny_preprocess(tmp_path, seed=seed)
    return ["--metric_cut", 20, "--init_path", tiny["init"], "--pembed_path", frozen_pembed(tiny, tmp_path),
            "--log_dir", tmp_path / "log", "--preprocess_dir", tiny["preprocess"], "--neg_topk", 20,
            "--per_gpu_batch_size", 8, "--num_train_epochs", epochs, "--warmup_steps", 2, "--learning_rate", 1e-3,
            "--save_steps", save_steps, "--seed", seed]


@pytest.fixture(scope="module")
def star_full(tmp_path_factory):
    """An uninterrupted STAR run with the default flags (no --padding: the run's first 10 batches are padded to
    full length, later ones to their longest row), checkpoints every 2 steps; and its training time span."""
    tmp = tmp_path_factory.mktemp("star_full")
    tiny = make_tiny_preprocess(tmp)
    args = ["--do_train", "--max_query_length", 12, "--max_doc_length", 32, "--preprocess_dir", tiny["preprocess"],
            "--hardneg_path", tiny["hard"], "--init_path", tiny["init"], "--per_device_train_batch_size", 8,
            "--num_train_epochs", 2, "--warmup_steps", 2, "--save_steps", 2, "--learning_rate", 1e-3, "--seed", 11]
    full = tmp / "full"
    run_script("star/train.py", *args, "--output_dir", full)
    span = (full / "model.safetensors").stat().st_mtime - (full / "checkpoint-2" / "trainer_state.json").stat().st_mtime
    return args, full, span


def test_star_resume_inside_the_padded_batches_gives_identical_weights(tmp_path, star_full):
    """Killed after step 4: the resumed process must pad batches 4-9 as the uninterrupted one did."""
    args, full, _ = star_full
    out = tmp_path / "killed"
    kill_when(popen_script("star/train.py", *args, "--output_dir", out), out / "checkpoint-4" / "trainer_state.json")
    assert not (out / "model.safetensors").exists()  # it did not finish
    run_script("star/train.py", *args, "--output_dir", out, "--resume_from_checkpoint", "auto")
    same_weights(full, out)


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 130)])
def test_star_resume_after_sigterm_or_sigint_gives_identical_weights(tmp_path, star_full, sig, status):
    args, full, _ = star_full
    out = tmp_path / "stopped"
    assert kill_when(popen_script("star/train.py", *args, "--output_dir", out),
                     out / "checkpoint-6" / "trainer_state.json", sig=sig) == status  # Ctrl-C: exit 130
    run_script("star/train.py", *args, "--output_dir", out, "--resume_from_checkpoint", "auto")
    same_weights(full, out)


@pytest.mark.parametrize("seed", [1, 2])
def test_star_killed_at_a_random_moment_then_resumed_matches(tmp_path, star_full, seed):
    """SIGKILL at a seeded random moment of the training (maybe while a checkpoint is written), resume with auto."""
    import random
    args, full, span = star_full
    out = tmp_path / "killed"
    proc = popen_script("star/train.py", *args, "--output_dir", out)
    first = out / "checkpoint-2" / "trainer_state.json"
    t0 = time.time()
    while not first.exists() and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 1.0) * span)
    proc.kill()
    proc.wait()
    run_script("star/train.py", *args, "--output_dir", out, "--resume_from_checkpoint", "auto")
    same_weights(full, out)


@pytest.mark.parametrize("seed", [1])
def test_adore_resume_after_kill_gives_identical_weights(tmp_path, seed):
    args = adore_args(tmp_path, seed, epochs=2, save_steps=3)
    run_script("adore/train.py", *args, "--model_save_dir", tmp_path / "full")
    out = tmp_path / "killed"
    kill_after = 3 * (seed + 1)
    kill_when(popen_script("adore/train.py", *args, "--model_save_dir", out), out / f"ckpt-{kill_after}")
    assert not (out / "epoch-2").exists()
    run_script("adore/train.py", *args, "--model_save_dir", out, "--resume_from_checkpoint", "auto")
    same_weights(tmp_path / "full" / "epoch-2", out / "epoch-2")
    same_weights(tmp_path / "full" / "epoch-1", out / "epoch-1")


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_adore_killed_at_a_random_point_then_resumed_matches(tmp_path, seed):
    """SIGKILL at a seeded random moment (maybe before any checkpoint), resume with 'auto', same weights."""
    import random
    args = adore_args(tmp_path, seed, epochs=3, save_steps=2)
    t0 = time.time()
    run_script("adore/train.py", *args, "--model_save_dir", tmp_path / "full")
    full_time = time.time() - t0
    out = tmp_path / "killed"
    proc = popen_script("adore/train.py", *args, "--model_save_dir", out)
    time.sleep(random.Random(seed).uniform(0.3, 0.95) * full_time)
    proc.kill()
    proc.wait()
    run_script("adore/train.py", *args, "--model_save_dir", out, "--resume_from_checkpoint", "auto")
    same_weights(tmp_path / "full" / "epoch-3", out / "epoch-3")


def test_non_finite_loss_stops_training_naming_the_step(tmp_path):
    tiny = make_tiny_preprocess(tmp_path)
    p = run_script("star/train.py", "--do_train", "--max_query_length", 12, "--max_doc_length", 32,
                   "--preprocess_dir", tiny["preprocess"], "--hardneg_path", tiny["hard"], "--init_path",
                   tiny["init"], "--output_dir", tmp_path / "out", "--optimizer_str", "adamw", "--learning_rate",
                   1e30, "--warmup_steps", 0, "--max_grad_norm", 0, "--per_device_train_batch_size", 8,
                   "--num_train_epochs", 3, "--save_strategy", "no", check=False)
    assert p.returncode != 0
    assert re.search(r"^error: training loss is not finite \((nan|inf)\) at step \d+ \(10 non-finite steps in a row\)",
                     p.stderr, re.M), p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()
