"""star/train.py on the transformers Trainer: the paper's schedule, one GPU per process, tensorboard folders,
one optimizer builder, non-finite steps and models, input and flag checks, verified checkpoints.

Runs are in-process (``main(argv)`` through ``drhard.cli.run``, or a ``DenseTrainer`` built as main builds
it) on the tiny learnable preprocess folder of ``tinyprep``: 48 training queries, batch 16, 3 steps an epoch.
"""
import json
import logging
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.training_args import ParallelMode

from drhard import cli, losses
from drhard import star_trainer as st
from drhard.checkpoint import CHECKSUMS
from drhard.dataset import TrainCollator, TrainQueryDataset
from drhard.io import write_token_cache
from drhard.model import RobertaDot
from drhard.optim import Lamb, build_optimizer, param_groups
from conftest import command

def script():
    """star/train.py's program (its parser and main)."""
    return command("star/train.py")


def argv(tiny, out, *extra):
    return [str(a) for a in ["--do_train", "--max_query_length", 12, "--max_doc_length", 32, "--preprocess_dir",
                             tiny["preprocess"], "--hardneg_path", tiny["hard"], "--init_path", tiny["init"],
                             "--output_dir", out, "--per_device_train_batch_size", 16, "--warmup_steps", 2,
                             "--logging_steps", 1, "--seed", 7, "--learning_rate", 1e-3, *extra]]


def train(tiny, out, capsys, *extra):
    """(exit status, stderr lines) of star/train.py's main, run as its __main__ runs it."""
    capsys.readouterr()
    rc = cli.run(script().main, argv(tiny, out, *extra))
    return rc, capsys.readouterr().err.strip().splitlines()


def build_trainer(tiny, out, *extra):
    """A DenseTrainer made from star/train.py's flags the way its main makes it (no tensorboard)."""
    model_args, data_args, args = script().parse_args(argv(tiny, out, *extra))
    ds = TrainQueryDataset(str(tiny["preprocess"]), 12, 32, negative_type=data_args.negative_type,
                           hardneg_path=str(tiny["hard"]), hard_num=data_args.hard_num, seed=args.seed)
    model = RobertaDot.from_pretrained(str(tiny["init"]))
    coll = TrainCollator(ds.rel_sets, model.pad_token_id, 12, 32, pad_to_max=args.padding)
    return st.DenseTrainer(model=model, args=args, train_dataset=ds, data_collator=coll,
                           callbacks=[st.EpochToDataset(ds, coll), st.StopAtStep(args.stop_at_step)],
                           negative_type=data_args.negative_type, optimizer_str=args.optimizer_str,
                           max_nonfinite_steps=args.max_nonfinite_steps)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def logged(folder, key="learning_rate"):
    """{step: value} of ``key`` in a checkpoint's trainer_state.json log history."""
    hist = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: e[key] for e in hist if key in e}


def poison_star_loss(monkeypatch, bad_calls, make_bad):
    """Training calls of losses.star_loss numbered from 1; those in ``bad_calls`` return ``make_bad(loss, q)``."""
    real = losses.star_loss
    calls = []

    def fake(q, d, n, *masks):
        loss = real(q, d, n, *masks)
        calls.append(1)
        return make_bad(loss, q) if len(calls) in bad_calls else loss
    monkeypatch.setattr(losses, "star_loss", fake)
    return calls


# --------------------------------------------------------------------------- 1. the paper's schedule
class _Sized(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        raise AssertionError("the schedule needs no item")


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step()`")
def test_stop_at_step_keeps_the_papers_schedule(tmp_path):
    """MS MARCO's 502,939 queries at batch 256 for the 100 planned epochs; the rate at step 50,000 is the one of
    the planned schedule (about 0.75e-4), not 0 as with --max_steps 50000."""
    _, _, args = script().parse_args(["--init_path", "x", "--max_query_length", "24", "--max_doc_length", "120",
                                      "--preprocess_dir", "x", "--output_dir", str(tmp_path / "o"),
                                      "--stop_at_step", "50000", "--no_cuda"])
    assert (args.per_device_train_batch_size, args.num_train_epochs, args.warmup_steps, args.learning_rate) == \
        (256, 100, 1000, 1e-4)
    from drhard.model import build_tiny_roberta
    trainer = st.DenseTrainer(model=build_tiny_roberta(vocab_size=50, hidden=16, layers=1, heads=2), args=args,
                              train_dataset=_Sized(502939))
    max_steps = trainer.set_initial_training_values(args, trainer.get_train_dataloader())[-1]
    total = 100 * math.ceil(502939 / 256)
    assert max_steps == total == 196500
    trainer.create_optimizer_and_scheduler(max_steps)
    for _ in range(50000):
        trainer.lr_scheduler.step()
    rate = trainer.lr_scheduler.get_last_lr()[0]
    assert rate == pytest.approx(1e-4 * (total - 50000) / (total - 1000), rel=1e-9)
    assert rate == pytest.approx(0.7494e-4, abs=1e-8)
    # what the old recipe's --max_steps 50000 did instead: the same step ends the decay
    trainer2 = st.DenseTrainer(model=trainer.model, args=args, train_dataset=_Sized(502939))
    trainer2.create_optimizer_and_scheduler(50000)
    for _ in range(50000):
        trainer2.lr_scheduler.step()
    assert trainer2.lr_scheduler.get_last_lr()[0] == 0.0


@pytest.mark.slow
def test_stop_at_step_ends_where_the_full_run_was(tiny, capsys):
    full, stopped = tiny["root"] / "full", tiny["root"] / "stopped"
    assert train(tiny, full, capsys, "--num_train_epochs", 4)[0] == 0  # 12 steps, saves at 3, 6, 9, 12
    rc, err = train(tiny, stopped, capsys, "--num_train_epochs", 4, "--stop_at_step", 5)
    assert rc == 0, err
    assert sorted(p.name for p in stopped.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-5"]
    lr_full, lr_stop = logged(full / "checkpoint-6"), logged(stopped / "checkpoint-5")
    assert lr_stop[5] == lr_full[5] == pytest.approx(1e-3 * (12 - 4) / (12 - 2))  # the 12-step schedule's rate
    # a stop at an epoch end: the final model is the full run's checkpoint at that step, bit for bit
    stopped6 = tiny["root"] / "stopped6"
    assert train(tiny, stopped6, capsys, "--num_train_epochs", 4, "--stop_at_step", 6)[0] == 0
    assert same_weights(stopped6, full / "checkpoint-6")
    assert not same_weights(stopped6, full)


@pytest.mark.slow
def test_stop_at_step_resumed_after_the_stop_saves_the_final_model(tiny, capsys):
    out = tiny["root"] / "out"
    assert train(tiny, out, capsys, "--num_train_epochs", 4, "--stop_at_step", 4)[0] == 0
    final = weights(out)
    for name in ("model.safetensors", "config.json"):  # killed between the stop's checkpoint and the final save
        (out / name).unlink()
    rc, err = train(tiny, out, capsys, "--num_train_epochs", 4, "--stop_at_step", 4, "--resume_from_checkpoint",
                    "auto")
    assert rc == 0, err
    assert not (out / "checkpoint-5").exists()  # no step past the stop
    assert all(torch.equal(final[k], v) for k, v in weights(out).items())


# --------------------------------------------------------------------------- 2. one GPU without torchrun
def test_several_gpus_without_torchrun_train_on_one(tmp_path, monkeypatch, caplog):
    for var in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    caplog.set_level(logging.WARNING)
    args = st.StarTrainingArguments(output_dir=str(tmp_path / "o"))
    assert args.device.type == "cuda"
    assert args.n_gpu == 1 and args.parallel_mode == ParallelMode.NOT_PARALLEL
    assert args.train_batch_size == 256  # not 256 x 4 gathered by nn.DataParallel
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "4 GPUs visible" in msg and "torchrun --nproc_per_node 4 star/train.py" in msg
    assert st.gpus_for_one_process(4, distributed=True) == (4, None)
    assert st.gpus_for_one_process(1, distributed=False) == (1, None)


# --------------------------------------------------------------------------- 3. tensorboard folders
def event_dirs(root):
    return sorted({p.parent for p in root.rglob("events.out.tfevents*")})


def scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


@pytest.mark.slow
def test_tensorboard_events_go_to_output_dir_log_and_a_given_logging_dir(tiny, capsys, monkeypatch):
    monkeypatch.chdir(tiny["root"])  # the flag's default path (./data/passage/star_train/log) is relative
    out = tiny["root"] / "out"
    rc, err = train(tiny, out, capsys, "--max_steps", 3, "--report_to", "tensorboard")
    assert rc == 0, err
    assert event_dirs(tiny["root"]) == [out / "log"]  # no HF writer (runs/), nothing at the default path
    assert [s for s, _ in scalars(out / "log", "train/loss")] == [1, 2, 3]
    # a second run into it is refused, as in the original
    rc, err = train(tiny, out, capsys, "--max_steps", 3)
    assert rc == 1 and "--overwrite_output_dir" in err[-1]
    # --logging_dir given (also as --logging_dir=...): events in both folders
    for i, flag in enumerate((["--logging_dir", str(tiny["root"] / "tb0")], [f"--logging_dir={tiny['root']}/tb1"])):
        out2 = tiny["root"] / f"out{i}"
        assert train(tiny, out2, capsys, "--max_steps", 2, *flag)[0] == 0
        assert {out2 / "log", tiny["root"] / f"tb{i}"} <= set(event_dirs(tiny["root"]))
        assert scalars(tiny["root"] / f"tb{i}", "train/loss") == scalars(out2 / "log", "train/loss")


# --------------------------------------------------------------------------- 4. one optimizer builder
@pytest.mark.slow
@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_training_uses_the_optimizer_build_optimizer_returns(tiny, monkeypatch, name):
    built = []

    def spy(*a, **kw):
        built.append(build_optimizer(*a, **kw))
        return built[-1]
    monkeypatch.setattr(st, "build_optimizer", spy)
    trainer = build_trainer(tiny, tiny["root"] / "out", "--max_steps", 2, "--optimizer_str", name,
                            "--adam_beta1", 0.5, "--adam_beta2", 0.9, "--adam_epsilon", 1e-7, "--no_cuda")
    trainer.train()
    inner = trainer.optimizer.optimizer  # accelerate's wrapper around ours
    assert len(built) == 1 and inner is built[0]
    model = trainer.model
    want = build_optimizer(name, param_groups(model, 0.01), lr=1e-3, eps=1e-7, betas=(0.5, 0.9))
    assert type(inner) is type(want) is (Lamb if name == "lamb" else torch.optim.AdamW)
    for got, ref in zip(inner.param_groups, want.param_groups):
        assert [id(p) for p in got["params"]] == [id(p) for p in ref["params"]]
        assert got["weight_decay"] == ref["weight_decay"] and got["eps"] == 1e-7
        assert got["betas"] == ((0.9, 0.999) if name == "lamb" else (0.5, 0.9))  # LAMB: the original's betas


# --------------------------------------------------------------------------- 5. non-finite steps
class Snapshots(TrainerCallback):
    """Weights and optimizer state before and after every step."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.changed = {}
        self.lr_position = {}

    def _take(self):
        model = {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()}
        opt = {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
               for i, s in enumerate(self.trainer.optimizer.state.values())}
        return model, opt

    def on_step_begin(self, args, state, control, **kwargs):
        self.before = self._take()

    def on_step_end(self, args, state, control, **kwargs):
        (m0, o0), (m1, o1) = self.before, self._take()
        same_model = all(torch.equal(m0[k], m1[k]) for k in m0)
        same_opt = o0.keys() == o1.keys() and all(
            o0[i].keys() == o1[i].keys() and all(torch.equal(o0[i][k], o1[i][k]) for k in o0[i]) for i in o0)
        self.changed[state.global_step] = (not same_model, not same_opt)
        self.lr_position[state.global_step] = self.trainer.lr_scheduler.last_epoch


@pytest.mark.slow
@pytest.mark.parametrize("name,bad", [("lamb", float("nan")), ("adamw", float("inf")), ("lamb", float("inf"))])
def test_a_non_finite_step_is_skipped_and_training_goes_on(tiny, monkeypatch, name, bad):
    calls = poison_star_loss(monkeypatch, {3}, lambda loss, q: loss * bad)
    trainer = build_trainer(tiny, tiny["root"] / "out", "--max_steps", 5, "--optimizer_str", name, "--no_cuda")
    snaps = Snapshots(trainer)
    trainer.add_callback(snaps)
    trainer.train()
    assert len(calls) == 5 and trainer.state.global_step == 5
    # step 3 changed neither the weights nor the optimizer state (moments, step counts); the others did
    # (step 1 runs at the warmup's rate 0: only the state moves)
    assert snaps.changed == {1: (False, True), 2: (True, True), 3: (False, False), 4: (True, True),
                             5: (True, True)}
    # the skipped step still counts: the schedule is at global_step after every step
    assert snaps.lr_position == {s: s for s in range(1, 6)}
    lrs = {e["step"]: e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e}
    lam = trainer.lr_scheduler.lr_lambdas[0]
    assert all(lrs[s] == pytest.approx(1e-3 * lam(s - 1)) for s in range(1, 6))
    assert [(e["step"], e["nonfinite_steps"]) for e in trainer.state.log_history if "nonfinite_steps" in e] == \
        [(3, 1.0)]
    assert all(math.isfinite(v) for v in trainer.model.state_dict()["embeddingHead.weight"].flatten().tolist())


def test_steps_the_fp16_scaler_skips_advance_the_schedule_too(tiny, monkeypatch):
    """Under --fp16 the gradient scaler skips an update with non-finite gradients and the Trainer then leaves
    the schedule where it was; ours moves it on (the original's apex amp did), so the rate follows global_step.
    Simulated on the CPU: every step reports itself skipped."""
    trainer = build_trainer(tiny, tiny["root"] / "out", "--max_steps", 5, "--no_cuda")
    monkeypatch.setattr(type(trainer.accelerator), "optimizer_step_was_skipped", property(lambda self: True))
    snaps = Snapshots(trainer)
    trainer.add_callback(snaps)
    trainer.train()
    assert snaps.lr_position == {s: s for s in range(1, 6)}
    lrs = {e["step"]: e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e}
    lam = trainer.lr_scheduler.lr_lambdas[0]
    assert [lrs[s] for s in range(1, 6)] == pytest.approx([1e-3 * lam(s - 1) for s in range(1, 6)])
    assert lrs[2] > 0


def test_non_finite_steps_in_a_row_stop_naming_the_step(tiny, capsys, monkeypatch):
    poison_star_loss(monkeypatch, set(range(3, 100)), lambda loss, q: loss * float("nan"))
    out = tiny["root"] / "out"
    rc, err = train(tiny, out, capsys, "--max_steps", 20, "--max_nonfinite_steps", 3, "--save_steps", 1)
    assert rc == 1
    assert err[-1].startswith("error: training loss is not finite (nan) at step 5 (3 non-finite steps in a row)")
    assert "Traceback" not in "\n".join(err)
    assert not (out / "model.safetensors").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3",
                                                                "checkpoint-4"]
    # the count reached tensorboard
    assert scalars(out / "log", "train/nonfinite_steps") == [(3, 1.0), (4, 2.0)]


@pytest.mark.slow
def test_isolated_non_finite_steps_do_not_stop_training(tiny, capsys, monkeypatch):
    poison_star_loss(monkeypatch, {2, 3, 5, 6, 8}, lambda loss, q: loss * float("inf"))
    out = tiny["root"] / "out"
    rc, err = train(tiny, out, capsys, "--max_steps", 9, "--max_nonfinite_steps", 3)
    assert rc == 0, err
    assert [v for _, v in scalars(out / "log", "train/nonfinite_steps")] == [1.0, 2.0, 3.0, 4.0, 5.0]


# --------------------------------------------------------------------------- 6. no non-finite model is saved
@pytest.mark.slow
def test_a_nan_weight_is_never_saved(tiny, capsys, monkeypatch):
    # a finite loss whose gradient is NaN (d sqrt(x)/dx at 0 is inf; inf * 0 = NaN): the update makes NaN weights
    poison_star_loss(monkeypatch, {2}, lambda loss, q: loss + torch.sqrt((q * 0).sum()))
    out = tiny["root"] / "out"
    rc, err = train(tiny, out, capsys, "--max_steps", 6, "--save_steps", 1, "--optimizer_str", "adamw")
    assert rc == 1
    assert len([e for e in err if e.startswith("error:")]) == 1
    assert err[-1].startswith(f"error: step 2: the model to be saved to {out / 'checkpoint-2'}: weight ")
    assert "holds NaN or infinite values" in err[-1]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (out / "model.safetensors").exists()


# --------------------------------------------------------------------------- 7. inputs checked before the work
@pytest.mark.parametrize("name,what", [("train-query", "queries"), ("passages", "passages")])
def test_an_empty_token_cache_is_a_clear_error(tiny, capsys, name, what):
    write_token_cache(str(tiny["preprocess"] / name), [], 12)
    shutil.rmtree(tiny["init"])  # the data is checked before the model is loaded
    out = tiny["root"] / "out"
    rc, err = train(tiny, out, capsys, "--max_steps", 1)
    assert rc == 1
    assert err[-1] == (f"error: {tiny['preprocess'] / name}.memmap: holds no {what} (0 rows): nothing to train on "
                       "(did preprocess.py read an empty file?)")
    assert not out.exists()


def test_qrels_without_a_relevant_pair_is_a_clear_error(tiny, capsys):
    (tiny["preprocess"] / "train-qrel.tsv").write_text("")
    rc, err = train(tiny, tiny["root"] / "out", capsys, "--max_steps", 1)
    assert rc == 1 and err[-1] == f"error: {tiny['preprocess'] / 'train-qrel.tsv'}: no relevant (query, passage) " \
                                  "pair to train on"


# --------------------------------------------------------------------------- 9. verified checkpoints
def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


BREAKS = {
    "model.safetensors": _truncate,
    "optimizer.pt": _truncate,
    "rng_state.pth": _truncate,
    "trainer_state.json": lambda p: p.write_text("{"),
}


@pytest.fixture
def finished(tiny, capsys):
    """A finished 12-step run with checkpoints at 3, 4, 6, 8, 9, 12 (epoch ends and every 4 steps)."""
    out = tiny["root"] / "full"
    rc, err = train(tiny, out, capsys, "--num_train_epochs", 4, "--save_steps", 4)
    assert rc == 0, err
    assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == [3, 4, 6, 8, 9, 12]
    assert all((p / CHECKSUMS).exists() for p in out.glob("checkpoint-*"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BREAKS))
def test_auto_resume_skips_a_corrupted_checkpoint(tiny, capsys, caplog, finished, name):
    out = tiny["root"] / "again"
    shutil.copytree(finished, out)
    BREAKS[name](out / "checkpoint-12" / name)
    (out / "model.safetensors").unlink()
    caplog.set_level(logging.INFO)
    rc, err = train(tiny, out, capsys, "--num_train_epochs", 4, "--save_steps", 4, "--resume_from_checkpoint",
                    "auto")
    assert rc == 0, err
    text = caplog.text
    assert f"skipping checkpoint {out / 'checkpoint-12'} (step 12): {out / 'checkpoint-12' / name}" in text
    assert f"resuming from {out / 'checkpoint-9'}" in text
    assert same_weights(out, finished)  # steps 10-12 again, exactly


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BREAKS))
def test_a_named_corrupted_checkpoint_is_one_error_line(tiny, capsys, finished, name):
    BREAKS[name](finished / "checkpoint-9" / name)
    rc, err = train(tiny, finished, capsys, "--num_train_epochs", 4, "--resume_from_checkpoint",
                    finished / "checkpoint-9")
    assert rc == 1
    assert err[-1].startswith(f"error: {finished / 'checkpoint-9' / name}: ")
    assert "Traceback" not in "\n".join(err)


@pytest.mark.slow
def test_auto_resume_never_picks_an_incomplete_or_temporary_folder(tiny, capsys, caplog, finished):
    (finished / "model.safetensors").unlink()
    shutil.copytree(finished / "checkpoint-12", finished / "tmp-checkpoint-15")
    partial = finished / "checkpoint-16"  # a save killed before trainer_state.json
    shutil.copytree(finished / "checkpoint-12", partial)
    (partial / "trainer_state.json").unlink()
    (partial / CHECKSUMS).unlink()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    caplog.set_level(logging.INFO)
    rc, err = train(tiny, finished, capsys, "--num_train_epochs", 4, "--resume_from_checkpoint", "auto")
    assert rc == 0, err
    assert f"{partial / 'trainer_state.json'}: missing" in caplog.text
    assert f"resuming from {finished / 'checkpoint-12'}" in caplog.text
    assert (finished / "model.safetensors").exists()
    # under torchrun every process saves its own RNG state, and a resume needs each of them
    assert st.required_checkpoint_files(2)[-2:] == ("rng_state_0.pth", "rng_state_1.pth")
    assert "rng_state.pth" in st.required_checkpoint_files(1)


# --------------------------------------------------------------------------- 10. flags checked at the door
@pytest.mark.parametrize("flag,value", [
    ("--max_doc_length", 0), ("--max_doc_length", -5), ("--max_query_length", 1), ("--hard_num", 0),
    ("--per_device_train_batch_size", 0), ("--max_nonfinite_steps", 0), ("--gradient_accumulation_steps", 0),
    ("--learning_rate", -1e-4), ("--warmup_steps", -1), ("--logging_steps", 0), ("--save_steps", 0),
    ("--num_train_epochs", 0), ("--stop_at_step", 0), ("--stop_at_step", -2), ("--adam_beta1", 1.0),
    ("--weight_decay", -0.1), ("--max_grad_norm", -1), ("--dataloader_num_workers", -1),
])
def test_out_of_range_flags_are_usage_errors(tiny, capsys, flag, value):
    out = tiny["root"] / "out"
    with pytest.raises(SystemExit) as e:
        script().main(argv(tiny, out, flag, value))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "error:" in line]) == 1
    assert f"error: argument {flag}: must be " in err[-1]
    assert f"got {value}" in err[-1] or f"got {float(value)}" in err[-1]
    assert not out.exists()


def test_defaults_are_the_originals(tmp_path):
    _, data, args = script().parse_args(["--init_path", "x", "--max_query_length", "24", "--max_doc_length", "120",
                                         "--preprocess_dir", "x", "--no_cuda"])
    assert (data.negative_type, data.hard_num, data.hardneg_path) == ("star", 1, None)
    assert (args.output_dir, args.logging_dir) == ("./data/passage/star_train/models", "./data/passage/star_train/log")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.learning_rate,
            args.weight_decay, args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.max_grad_norm,
            args.num_train_epochs, args.max_steps, args.warmup_steps, args.logging_steps, args.save_steps,
            args.seed, args.optimizer_str, args.padding, args.overwrite_output_dir) == \
        (256, 1, 1e-4, 0.01, 0.9, 0.999, 1e-8, 1.0, 100, -1, 1000, 50, 99999999999, 42, "lamb", False, False)
    assert (args.stop_at_step, args.max_nonfinite_steps, args.logging_dir_given) == (-1, 10, False)
    assert args.report_to == []
