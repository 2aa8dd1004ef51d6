"""adore/train.py reliability: non-finite steps, NaN inputs, one run per folder, verified checkpoints,
SIGKILL during a save, and flag checks at the door.

Most runs call the script's ``main`` in-process through ``drhard.cli.run`` (exit status and the one
``error:`` line as a user sees them, without a subprocess' start-up time); the kill test runs
subprocesses.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import drhard.adore_trainer as at
import drhard.star_trainer as st
import drhard.cli
from drhard.adore_trainer import AdoreConfig, AdoreTrainer
from drhard.dataset import pad_batch
from drhard.errors import NonFiniteError
from drhard.io import TokenCache
from drhard.model import RobertaDot

sys.path.insert(0, str(Path(__file__).parent))
from conftest import command, cpu_env  # noqa: E402
from tinyprep import REPO, make_tiny_preprocess  # noqa: E402

N_QUERIES = 48  # make_tiny_preprocess default: 6 updates per epoch at batch size 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny preprocess folder, its init model and the init model's passage embeddings (the frozen index)."""
    root = tmp_path_factory.mktemp("adore")
    tiny = make_tiny_preprocess(root)
    model = RobertaDot.from_pretrained(str(tiny["init"])).eval()
    docs = TokenCache(str(tiny["preprocess"] / "passages"))
    with torch.no_grad():
        emb = model(*pad_batch([docs[i] for i in range(len(docs))], model.pad_token_id)).numpy()  # (N, D)
    pembed = root / "passages.memmap"
    emb.astype(np.float32).tofile(pembed)
    return {**tiny, "pembed": pembed, "n_passages": len(docs), "dim": emb.shape[1]}


def script():
    """adore/train.py's program (its parser and main)."""
    return command("adore/train.py")


def flags(data, save, **over):
    args = {"metric_cut": 20, "init_path": data["init"], "pembed_path": data["pembed"],
            "log_dir": Path(save).parent / "log", "preprocess_dir": data["preprocess"], "neg_topk": 20,
            "per_gpu_batch_size": 8, "num_train_epochs": 2, "warmup_steps": 2, "learning_rate": 1e-3,
            "save_steps": 4, "seed": 7, "model_save_dir": save}
    args.update(over)
    argv = []
    for k, v in args.items():
        if v is None:
            continue
        if v is True:
            argv.append(f"--{k}")
        elif isinstance(v, (list, tuple)):
            argv += [f"--{k}", *map(str, v)]
        else:
            argv.append(f"--{k}={v}")  # '=': argparse takes a value like -1e-5 for an option otherwise
    return argv


ERROR_LINE = re.compile(r"^(\S+: )?error: ")  # ours, or argparse's "<prog>: error: ..."


def adore(argv, capsys):
    """(exit status, the ``error:`` lines, stderr) of adore/train.py run as ``sys.exit(drhard.cli.run(main))``."""
    capsys.readouterr()
    try:
        rc = drhard.cli.run(script().main, [str(a) for a in argv])
    except SystemExit as e:  # argparse (2)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            rc = 1
        else:
            rc = e.code
    err = capsys.readouterr().err
    return rc, [ln for ln in err.splitlines() if ERROR_LINE.match(ln)], err


def assert_one_error(rc, errors, err, status=1):
    assert rc == status, err[-3000:]
    assert len(errors) == 1, err[-3000:]
    assert "Traceback" not in err


def weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def all_finite(folder):
    return all(bool(torch.isfinite(t).all()) for t in weights(folder).values())


def config(data, save, **over) -> AdoreConfig:
    kw = dict(init_path=str(data["init"]), pembed_path=str(data["pembed"]), model_save_dir=str(save),
              log_dir=str(Path(save).parent / "log"), preprocess_dir=str(data["preprocess"]), metric_cut=20,
              neg_topk=20, per_gpu_batch_size=8, num_train_epochs=1, warmup_steps=2, learning_rate=1e-3, seed=7,
              logging_steps=1)
    kw.update(over)
    return AdoreConfig(**kw)


def snapshot(trainer):
    return ({k: v.clone() for k, v in trainer.model.state_dict().items()},
            copy.deepcopy(trainer.optimizer.state_dict()), trainer.scheduler.get_last_lr()[0])


def same_state(a, b):
    """Same weights and optimizer state (the learning rate moves on even over a skipped step)."""
    for k in a[0]:
        if not torch.equal(a[0][k], b[0][k]):
            return False
    sa, sb = a[1]["state"], b[1]["state"]
    if sa.keys() != sb.keys():
        return False
    for i in sa:
        for k in sa[i]:
            if not torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])):
                return False
    return True


def tensorboard_scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = []
    for run in sorted(Path(log_dir).iterdir()):
        acc = EventAccumulator(str(run))
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            out += [(e.step, e.value) for e in acc.Scalars(tag)]
    return sorted(out)


# --------------------------------------------------------------------------- 1. non-finite steps are skipped
def inject(trainer, bad_calls, what=float("inf")):
    """Make ``step_loss`` calls (1-based) in ``bad_calls`` return a non-finite loss; record the state before each call."""
    real = trainer.step_loss
    seen = []

    def step_loss(*a):
        seen.append(snapshot(trainer))
        loss, mrr, recall = real(*a)
        if len(seen) in bad_calls:
            loss = loss * what
        return loss, mrr, recall

    trainer.step_loss = step_loss
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("what", [float("inf"), float("nan")])
def test_nonfinite_loss_skips_the_step_without_touching_weights_or_optimizer(data, tmp_path, what):
    trainer = AdoreTrainer(config(data, tmp_path / "out"))
    seen = inject(trainer, {2, 4}, what)
    history = trainer.train()
    assert len(seen) == 6 and trainer.global_step == 6  # the run went on to the end of the epoch
    assert same_state(seen[1], seen[2]) and same_state(seen[3], seen[4])  # the injected steps changed nothing
    assert not same_state(seen[0], seen[1]) and not same_state(seen[2], seen[3])  # the others did
    # the schedule moves on over a skipped step (as STAR's): the rate at step N is the schedule's value at N
    clean = AdoreTrainer(config(data, tmp_path / "clean"))
    clean_seen = inject(clean, set())
    clean.train()
    assert [s[2] for s in seen] == [s[2] for s in clean_seen] and seen[2][2] != seen[1][2]
    assert history and np.isfinite(history[0]["loss"])
    assert trainer.guard.skipped == 2
    assert all_finite(tmp_path / "out" / "epoch-1")
    counted = tensorboard_scalars(tmp_path / "log", "train/nonfinite_steps")
    assert (2, 1.0) in counted and (4, 2.0) in counted and max(v for _, v in counted) == 2.0


def test_nonfinite_micro_batch_skips_the_whole_accumulated_update(data, tmp_path):
    trainer = AdoreTrainer(config(data, tmp_path / "out", gradient_accumulation_steps=2))
    seen = inject(trainer, {3})  # first micro-batch of update 2
    trainer.train()
    assert trainer.global_step == 3 and len(seen) == 6
    assert same_state(seen[2], seen[4])  # update 2 (micro-batches 3 and 4) was not applied
    assert not same_state(seen[0], seen[2]) and not same_state(seen[4], snapshot(trainer))  # updates 1 and 3 were


def test_nonfinite_steps_in_a_row_stop_training_naming_the_step(data, tmp_path):
    trainer = AdoreTrainer(config(data, tmp_path / "out", max_nonfinite_steps=3))
    inject(trainer, {2, 3, 4, 5, 6})
    with pytest.raises(NonFiniteError, match=r"at step 4 \(3 non-finite steps in a row\)"):
        trainer.train()
    assert not (tmp_path / "out" / "epoch-1").exists()


def test_nonfinite_steps_that_are_not_in_a_row_never_stop_training(data, tmp_path):
    trainer = AdoreTrainer(config(data, tmp_path / "out", max_nonfinite_steps=2))
    inject(trainer, {1, 3, 5})
    trainer.train()
    assert trainer.global_step == 6 and trainer.guard.skipped == 3


def test_nonfinite_query_embedding_is_a_skipped_step(data, tmp_path):
    """faiss returns -1 for a NaN query: the loss would be a clean 0.0 and NaN gradients would reach the weights."""
    trainer = AdoreTrainer(config(data, tmp_path / "out"))
    seen = inject(trainer, set())
    real_forward = trainer.model.forward
    calls = []

    def forward(*a, **kw):
        calls.append(1)
        out = real_forward(*a, **kw)  # (B, D)
        return out * float("nan") if len(calls) == 3 else out

    trainer.model.forward = forward
    trainer.train()
    assert same_state(seen[2], seen[3])
    assert trainer.guard.skipped == 1
    assert all_finite(tmp_path / "out" / "epoch-1")


# --------------------------------------------------------------------------- 2. the shared optimizer builder
def test_adamw_comes_from_build_optimizer_with_lr_and_eps_only(data, tmp_path, monkeypatch):
    import drhard.optim
    calls = []

    def spy(*a, **kw):
        calls.append((a, kw))
        return drhard.optim.build_optimizer(*a, **kw)

    monkeypatch.setattr(at, "build_optimizer", spy)
    trainer = AdoreTrainer(config(data, tmp_path / "out", learning_rate=3e-4, adam_epsilon=1e-7, weight_decay=0.05))
    assert len(calls) == 1
    (name, groups, lr, eps), kw = calls[0]
    assert (name, lr, eps, kw) == ("adamw", 3e-4, 1e-7, {})  # default betas, as the original
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    opt = trainer.optimizer
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.9, 0.999) and g["eps"] == 1e-7 for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(trainer.model.parameters()))


# --------------------------------------------------------------------------- 3. no non-finite model in or out
def test_huge_learning_rate_stops_with_an_error_and_saves_no_nan(data, tmp_path, capsys):
    save = tmp_path / "out"
    rc, errors, err = adore(flags(data, save, learning_rate=1e10, warmup_steps=0, save_steps=1,
                                  num_train_epochs=3), capsys)
    assert_one_error(rc, errors, err)
    assert "NaN or inf" in errors[0], errors
    saved = [p for p in save.iterdir() if at.CHECKPOINT_NAME.fullmatch(p.name)] if save.exists() else []
    assert all(all_finite(p) for p in saved), [p.name for p in saved if not all_finite(p)]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_row_of_pembed_is_refused_before_training(data, tmp_path, capsys, value):
    emb = np.fromfile(data["pembed"], dtype=np.float32).reshape(data["n_passages"], data["dim"])
    emb[137, 5] = value
    bad = tmp_path / "bad.memmap"
    emb.tofile(bad)
    save = tmp_path / "out"
    rc, errors, err = adore(flags(data, save, pembed_path=bad), capsys)
    assert_one_error(rc, errors, err)
    assert errors[0].startswith(f"error: {bad} (passage embeddings): row 137 holds NaN or infinite values"), errors
    assert not save.exists()


def test_pembed_rows_are_checked_as_the_index_is_filled(data, tmp_path, monkeypatch):
    """One read of the file: the rows the index gets are the rows that were checked."""
    emb = np.fromfile(data["pembed"], dtype=np.float32).reshape(data["n_passages"], data["dim"])
    emb[150] = np.nan
    bad = tmp_path / "bad.memmap"
    emb.tofile(bad)
    monkeypatch.setattr(at.dindex, "ADD_CHUNK_ROWS", 64)
    checked = []
    import drhard.finite as finite
    real = finite.first_nonfinite_row
    monkeypatch.setattr(finite, "first_nonfinite_row", lambda chunk, *a: checked.append(len(chunk)) or real(chunk, *a))
    with pytest.raises(NonFiniteError, match="row 150 "):
        AdoreTrainer(config(data, tmp_path / "out", pembed_path=str(bad)))
    assert checked == [64, 64, 64]  # chunk by chunk, stopped at the chunk holding row 150


def test_nonfinite_init_model_is_refused(data, tmp_path, capsys):
    init = tmp_path / "init"
    model = RobertaDot.from_pretrained(str(data["init"]))
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    model.save_pretrained(str(init))
    save = tmp_path / "out"
    rc, errors, err = adore(flags(data, save, init_path=init), capsys)
    assert_one_error(rc, errors, err)
    assert errors[0].startswith(f"error: {init}: weight ") and "NaN" in errors[0], errors
    assert not save.exists()


def test_a_nonfinite_model_is_never_saved(data, tmp_path):
    trainer = AdoreTrainer(config(data, tmp_path / "out"))
    trainer.train()
    with torch.no_grad():
        next(trainer.model.parameters())[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="refusing to save"):
        trainer._save("epoch-9")
    assert not (tmp_path / "out" / "epoch-9").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished 2-epoch run (ckpt-4, epoch-1 = step 6, ckpt-8, ckpt-12, epoch-2 = step 12)."""
    save = tmp_path_factory.mktemp("finished") / "out"
    trainer = AdoreTrainer(config(data, save, num_train_epochs=2, save_steps=4, logging_steps=100))
    trainer.train()
    return save


# --------------------------------------------------------------------------- 4. one run per output folder
def test_a_second_run_into_a_used_folder_is_refused(data, finished, tmp_path, capsys):
    save = tmp_path / "out"
    shutil.copytree(finished, save)
    before = {p.name: (p / "model.safetensors").read_bytes() for p in save.glob("epoch-*")}
    rc, errors, err = adore(flags(data, save, num_train_epochs=1, seed=8), capsys)
    assert_one_error(rc, errors, err)
    assert errors[0].startswith(f"error: {save}: ") and "--overwrite_output_dir" in errors[0]
    assert {p.name: (p / "model.safetensors").read_bytes() for p in save.glob("epoch-*")} == before


def test_overwrite_output_dir_removes_the_old_runs_checkpoints(data, finished, tmp_path, capsys):
    save = tmp_path / "out"
    shutil.copytree(finished, save)  # ckpt-4, epoch-1, ckpt-8, ckpt-12, epoch-2 of an earlier run
    rc, _, err = adore(flags(data, save, save_steps=5, overwrite_output_dir=True), capsys)
    assert rc == 0, err[-3000:]
    assert sorted(p.name for p in save.iterdir()) == ["adore-train.manifest.json", "ckpt-10", "ckpt-5", "epoch-1",
                                                     "epoch-2", "train_history.json"]
    assert [r["epoch"] for r in json.loads((save / "train_history.json").read_text())] == [1, 2]
    same_weights(finished / "epoch-2", save / "epoch-2")  # a fresh run of the same config


def test_resume_refuses_a_checkpoint_of_another_config_before_loading_anything(data, finished, tmp_path, capsys,
                                                                             monkeypatch):
    save = tmp_path / "out"
    shutil.copytree(finished, save)
    shutil.rmtree(save / "epoch-2")
    shutil.rmtree(save / "ckpt-12")
    other_pembed = tmp_path / "copy.memmap"
    shutil.copyfile(data["pembed"], other_pembed)
    loads = []
    real_load = RobertaDot.from_pretrained.__func__
    monkeypatch.setattr(RobertaDot, "from_pretrained",
                        classmethod(lambda cls, *a, **kw: loads.append(a) or real_load(cls, *a, **kw)))
    for change, shown in [({"learning_rate": 2e-3}, "learning_rate: 0.001 -> 0.002"),
                          ({"neg_topk": 10}, "neg_topk: 20 -> 10"), ({"seed": 8}, "seed: 7 -> 8"),
                          ({"num_train_epochs": 3}, "num_train_epochs: 2 -> 3"),
                          ({"metric_cut": None}, "metric_cut: 20 -> None"),
                          ({"per_gpu_batch_size": 4}, "per_gpu_batch_size: 8 -> 4"),
                          ({"pembed_path": other_pembed},
                           f"pembed_path: {os.path.realpath(data['pembed'])} -> {os.path.realpath(other_pembed)}")]:
        rc, errors, err = adore(flags(data, save, resume_from_checkpoint="auto", **change), capsys)
        assert_one_error(rc, errors, err)
        assert errors[0].startswith(f"error: {save / 'ckpt-8'}: ") and shown in errors[0], errors
        assert "--allow_config_change" in errors[0]
        assert loads == []  # refused before the model (and so the index) was loaded
    monkeypatch.undo()
    # the same inputs named by relative paths are the same config
    monkeypatch.chdir(data["root"])
    rc, _, err = adore(flags(data, save, resume_from_checkpoint="auto", init_path="init",
                             preprocess_dir="preprocess", pembed_path="passages.memmap"), capsys)
    assert rc == 0, err[-3000:]
    same_weights(finished / "epoch-2", save / "epoch-2")
    # --allow_config_change goes on (here: one more epoch)
    rc, _, err = adore(flags(data, save, resume_from_checkpoint="auto", num_train_epochs=3,
                             allow_config_change=True), capsys)
    assert rc == 0, err[-3000:]
    assert (save / "epoch-3").exists()


def test_temp_folders_of_killed_saves_are_swept(data, finished, tmp_path, capsys):
    save = tmp_path / "out"
    shutil.copytree(finished, save)
    shutil.rmtree(save / "epoch-2")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in (f".ckpt-13.tmp-{dead.pid}-abcd", f".epoch-2.old-{dead.pid}-efgh"):
        (save / name / "training_state").mkdir(parents=True)
        (save / name / "model.safetensors").write_bytes(b"half")
    (save / f".train_history.json.tmp-{dead.pid}").write_text("[")
    live = save / f".ckpt-14.tmp-{os.getpid()}-live"  # a running writer's: kept
    live.mkdir()
    rc, _, err = adore(flags(data, save, resume_from_checkpoint="auto"), capsys)
    assert rc == 0, err[-3000:]
    assert sorted(p.name for p in save.iterdir() if p.name.startswith(".")) == [live.name]


# --------------------------------------------------------------------------- 5. damaged checkpoints
def garble(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif path.name == "state.json":  # a control character inside a JSON string
        path.write_bytes(raw.replace(b'"config"', b'"con\x01fig"', 1))
    else:  # same size, one byte changed in the middle
        i = len(raw) // 2
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:])


DAMAGED = ["training_state/state.json", "training_state/optimizer.pt", "training_state/scheduler.pt",
           "training_state/rng.pt", "model.safetensors", "config.json"]


@pytest.mark.parametrize("how", ["truncate", "garble"])
@pytest.mark.parametrize("rel", DAMAGED)
def test_a_named_damaged_checkpoint_is_one_error_line_naming_the_file(data, finished, tmp_path, capsys, rel, how):
    save = tmp_path / "out"
    shutil.copytree(finished, save)
    garble(save / "ckpt-8" / rel, how)
    rc, errors, err = adore(flags(data, save, resume_from_checkpoint=save / "ckpt-8"), capsys)
    assert_one_error(rc, errors, err)
    assert errors[0].startswith(f"error: {save / 'ckpt-8' / rel}: "), errors


@pytest.mark.parametrize("rel", DAMAGED)
def test_auto_resume_falls_back_to_the_newest_checkpoint_that_verifies(data, finished, tmp_path, capsys, caplog, rel):
    caplog.set_level(logging.INFO)
    save = tmp_path / "out"
    shutil.copytree(finished, save)
    shutil.rmtree(save / "epoch-2")
    shutil.rmtree(save / "ckpt-12")
    garble(save / "ckpt-8" / rel, "truncate")
    rc, _, err = adore(flags(data, save, resume_from_checkpoint="auto"), capsys)
    assert rc == 0, err[-3000:]
    assert any("skipping checkpoint" in r.message and "ckpt-8" in r.message and rel in r.message
               for r in caplog.records), caplog.text[-2000:]
    assert any("resuming from" in r.message and "epoch-1" in r.message for r in caplog.records)
    same_weights(finished / "epoch-2", save / "epoch-2")


@pytest.mark.parametrize("word", ["auto", "last", "True", "true"])
def test_adore_and_star_share_the_words_for_auto_resume(data, finished, tmp_path, word):
    """One checkpoint resolver for both trainers: every word star/train.py takes for "the newest checkpoint
    that verifies" means that for adore/train.py too."""
    from drhard.checkpoint import RESUME_AUTO
    assert word in RESUME_AUTO
    save = tmp_path / "out"
    shutil.copytree(finished, save)
    cfg = config(data, save, num_train_epochs=2, save_steps=4, logging_steps=100, resume_from_checkpoint=word)
    newest = max(at.checkpoint_candidates(str(save)))[1]
    assert at.prepare_output_dir(cfg) == newest
    assert st.resolve_resume(str(tmp_path / "none"), word) is None  # star: an empty folder starts from scratch


def test_auto_resume_with_no_checkpoint_that_verifies_is_an_error(data, finished, tmp_path, capsys):
    save = tmp_path / "out"
    shutil.copytree(finished, save)
    for ck in save.iterdir():
        if ck.is_dir():
            garble(ck / "training_state" / "optimizer.pt", "truncate")
    rc, errors, err = adore(flags(data, save, resume_from_checkpoint="auto"), capsys)
    assert_one_error(rc, errors, err)
    assert "verifies" in errors[0] and "optimizer.pt" in errors[0], errors


def test_every_save_records_checksums_last(finished):
    from drhard.checkpoint import CHECKSUMS, verify_checkpoint
    for ck in ("ckpt-4", "epoch-1", "ckpt-8", "ckpt-12", "epoch-2"):
        record = json.loads((finished / ck / CHECKSUMS).read_text())
        assert set(record["files"]) >= set(at.REQUIRED_FILES)
        assert verify_checkpoint(str(finished / ck), at.REQUIRED_FILES) is None


# --------------------------------------------------------------------------- 6. SIGKILL during a save
def _env(**extra):
    return cpu_env(**extra)


def _run(argv, **env):
    p = subprocess.run([sys.executable, str(REPO / "adore" / "train.py"), *map(str, argv)], capture_output=True,
                       text=True, env=_env(**env))
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    save = tmp_path_factory.mktemp("uninterrupted") / "out"
    _run(flags(data, save, save_steps=1))
    return save


def _kill_in_save(argv, save, target):
    """Run until the save of ``target`` is half written (model yes, optimizer not yet), then SIGKILL."""
    proc = subprocess.Popen([sys.executable, str(REPO / "adore" / "train.py"), *map(str, argv)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(**{at.SAVE_PAUSE_ENV: f"{target}:60"}))
    t0 = time.time()
    try:
        while not list(save.glob(f".{target}.tmp-*/model.safetensors")):
            assert proc.poll() is None, f"the run ended before the save of {target}"
            assert time.time() - t0 < 180, f"the save of {target} never started"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    half = list(save.glob(f".{target}.tmp-*"))
    assert len(half) == 1 and not (half[0] / "training_state" / "optimizer.pt").exists()  # killed mid-save
    assert not (save / target).exists()


@pytest.mark.slow
def test_killed_while_checkpoints_are_half_written_then_resumed_matches(data, uninterrupted, tmp_path):
    """Killed inside a step checkpoint's save, resumed, killed inside an epoch's save, resumed: the weights and
    checkpoints of an uninterrupted run."""
    save = tmp_path / "out"
    _kill_in_save(flags(data, save, save_steps=1), save, "ckpt-3")
    _kill_in_save(flags(data, save, save_steps=1, resume_from_checkpoint="auto"), save, "epoch-1")
    assert not list(save.glob(".ckpt-3.tmp-*"))  # the first kill's temp folder was swept by the first resume
    _run(flags(data, save, save_steps=1, resume_from_checkpoint="auto"))
    assert not list(save.glob(".*tmp-*"))
    for name in ("epoch-1", "epoch-2", "ckpt-3"):
        same_weights(uninterrupted / name, save / name)
    assert sorted(p.name for p in save.iterdir() if p.is_dir()) == \
        sorted(p.name for p in uninterrupted.iterdir() if p.is_dir())


# --------------------------------------------------------------------------- 7. flags checked at the door
BAD_FLAGS = [("metric_cut", 0), ("metric_cut", -1), ("neg_topk", 0), ("max_seq_length", 1),
             ("per_gpu_batch_size", 0), ("gradient_accumulation_steps", 0), ("num_train_epochs", 0),
             ("num_train_epochs", -2), ("learning_rate", -1e-5), ("learning_rate", "nan"),
             ("faiss_omp_num_threads", 0), ("max_nonfinite_steps", 0), ("warmup_steps", -1),
             ("weight_decay", -0.1), ("adam_epsilon", -1e-8), ("max_grad_norm", "inf"), ("model_gpu_index", -1),
             ("faiss_gpu_index", [0, -1]), ("neg_topk", "x")]


@pytest.mark.parametrize("flag,value", BAD_FLAGS)
def test_bad_flag_values_are_usage_errors_before_any_work(data, tmp_path, capsys, flag, value):
    save = tmp_path / "out"
    rc, errors, err = adore(flags(data, save, **{flag: value}), capsys)
    assert_one_error(rc, errors, err, status=2)
    assert f"--{flag}" in errors[0], errors
    assert not save.exists() and not (tmp_path / "log").exists()


def test_overwrite_and_resume_together_are_a_usage_error(data, tmp_path, capsys):
    rc, errors, err = adore(flags(data, tmp_path / "out", overwrite_output_dir=True, resume_from_checkpoint="auto"),
                            capsys)
    assert_one_error(rc, errors, err, status=2)


def test_flag_defaults_are_the_originals(data, tmp_path):
    cfg = script().parse_args(["--init_path", "i", "--pembed_path", "p", "--model_save_dir", "m", "--log_dir", "l",
                               "--preprocess_dir", "d"])
    assert (cfg.metric_cut, cfg.neg_topk, cfg.max_seq_length, cfg.per_gpu_batch_size, cfg.gradient_accumulation_steps,
            cfg.warmup_steps, cfg.seed, cfg.save_steps, cfg.logging_steps, cfg.learning_rate, cfg.weight_decay,
            cfg.adam_epsilon, cfg.max_grad_norm, cfg.num_train_epochs, cfg.max_steps, cfg.model_gpu_index,
            cfg.faiss_gpu_index, cfg.faiss_omp_num_threads, cfg.max_nonfinite_steps) == \
        (None, 200, 64, 32, 1, 2000, 42, 5000000, 100, 5e-6, 0.01, 1e-8, 1.0, 6, -1, 0, [], 32, 10)
    cfg = script().parse_args(["--init_path", "i", "--pembed_path", "p", "--model_save_dir", "m", "--log_dir", "l",
                               "--preprocess_dir", "d", "--num_train_epochs", "0", "--max_steps", "3"])
    assert (cfg.num_train_epochs, cfg.max_steps) == (0, 3)  # max_steps alone bounds the run


def test_bad_inputs_fail_before_the_index_is_built(data, tmp_path, capsys, monkeypatch):
    built = []
    monkeypatch.setattr(at.dindex, "build_index", lambda *a, **kw: built.append(1))
    short = tmp_path / "short.memmap"
    short.write_bytes(data["pembed"].read_bytes()[: 4 * data["dim"] * 150])
    rc, errors, err = adore(flags(data, tmp_path / "a", pembed_path=short), capsys)
    assert_one_error(rc, errors, err)
    assert "150 passages" in errors[0]
    pre = tmp_path / "pre"
    shutil.copytree(data["preprocess"], pre)
    with open(pre / "train-qrel.tsv", "a") as f:
        f.write("7\t0\t999\t1\n")  # a passage beyond the passage count
    rc, errors, err = adore(flags(data, tmp_path / "b", preprocess_dir=pre), capsys)
    assert_one_error(rc, errors, err)
    assert "train-qrel.tsv" in errors[0]
    assert built == []
