"""The programs: one module per command, the original scripts as thin wrappers, console scripts, and pipeline
stages that run modules (no checkout needed)."""
import ast
import json
import os
import runpy
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from drhard import pipeline
from drhard.commands import COMMANDS
from drhard.errors import DataError
from drhard.io import write_rank

SCRIPTS = sorted(c.script.lstrip("./") for c in COMMANDS.values())


def run_script_in_process(script, argv, monkeypatch):
    """``python <script> argv`` in this process: the exit status it ends with."""
    monkeypatch.setattr(sys, "argv", [str(REPO / script), *argv])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / script), run_name="__main__")
    return e.value.code


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_original_script_runs_its_command_and_the_exit_status_table(script, monkeypatch, capsys):
    """Each script hands its argv to its command's ``main`` and ends with ``drhard.cli.run``: 1 and one
    ``error:`` line for a DrhardError, 130 on Ctrl-C, 2 for an unknown flag (the parser, before any work)."""
    import importlib
    module = importlib.import_module(next(c.module for c in COMMANDS.values() if c.script.lstrip("./") == script))
    seen = []

    def failing(argv=None):
        seen.append(list(argv if argv is not None else sys.argv[1:]))
        raise DataError("some.tsv:3: a bad line")

    real_main = module.main
    monkeypatch.setattr(module, "main", failing)
    assert run_script_in_process(script, ["--x", "1"], monkeypatch) == 1
    assert seen == [["--x", "1"]]
    assert capsys.readouterr().err.strip().splitlines() == ["error: some.tsv:3: a bad line"]

    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "main", interrupted)
    assert run_script_in_process(script, [], monkeypatch) == 130
    monkeypatch.setattr(module, "main", real_main)
    capsys.readouterr()
    assert run_script_in_process(script, ["--no_such_flag_anywhere"], monkeypatch) == 2
    assert "error:" in capsys.readouterr().err


def test_setup_declares_one_console_script_per_command():
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    entry = next(ast.literal_eval(kw.value) for kw in call.keywords if kw.arg == "entry_points")
    declared = dict(line.replace(" ", "").split("=") for line in entry["console_scripts"])
    for c in COMMANDS.values():
        assert declared[c.console_script] == f"{c.module}:console"
    assert declared["drhard-selfcheck"] == "drhard.selfcheck:console"


@pytest.mark.parametrize("plan", ["full", "quick"])
def test_pipeline_stages_run_command_modules(tmp_path, plan):
    if plan == "full":
        stages = pipeline.paper_stages(pipeline.FullScalePlan("passage", 4))
    else:
        stages = pipeline.paper_stages(pipeline.QuickstartPlan(str(tmp_path), str(tmp_path / "data"),
                                                               str(tmp_path / "init")))
    commands = [s for s in stages if s.command is not None]
    assert len(commands) > 20
    for s in commands:
        argv = s.argv()
        assert argv[:3] == [sys.executable, "-m", COMMANDS[s.command].module], argv
        assert not any(a.endswith(".py") for a in argv[3:]), argv
        assert s.display().split(" ")[:2] == ["python", COMMANDS[s.command].script] or s.env
    # a shell line only where the README has one (the download and copying a model)
    assert {s.shell.split()[0] for s in stages if s.command is None} <= {"bash", "mkdir"}


def test_quickstart_plan_reruns_adore_over_a_failed_run(tmp_path):
    """A rerun after a failed ADORE stage must not be refused for its non-empty --model_save_dir."""
    stages = pipeline.paper_stages(pipeline.QuickstartPlan(str(tmp_path), str(tmp_path / "data"),
                                                           str(tmp_path / "init")), ["adore-star"])
    adore = [s for s in stages if s.command == "adore_train"]
    assert adore and all("--overwrite_output_dir" in s.args for s in adore)
    star = [s for s in stages if s.command == "star_train"]
    assert star and all("--overwrite_output_dir" in s.args for s in star)


@pytest.mark.slow
def test_a_stage_runs_from_the_installed_package_alone(tmp_path):
    """Stages run ``python -m drhard.commands...``: with only the package on the path (as after a non-editable
    ``pip install .``: no checkout, no original scripts) and another working folder, a stage still runs."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "drhard", site / "drhard", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "qrels").write_text("1\t0\t10\t1\n2\t0\t20\t1\n")
    write_rank(str(work / "run"), [1, 2], [[10, 11], [21, 20]])
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from drhard import pipeline; "
            "assert pipeline.__file__.startswith(sys.argv[1]), pipeline.__file__; "
            "st = pipeline.Stage('eval', 'msmarco_eval', ['qrels', 'run']); "
            "r = pipeline.StageRunner('runs'); r.run(st); print(open('runs/logs/eval.log').read())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", code, str(site)], cwd=work, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "MRR @10: 0.75" in p.stdout
    assert json.loads((work / "runs" / "stages" / "eval.json").read_text())["command"] == \
        "python ./msmarco_eval.py qrels run"


@pytest.mark.slow
def test_the_test_setup_does_not_hide_gpus():
    """tests/conftest.py leaves CUDA_VISIBLE_DEVICES alone (the gpu tests need the GPUs); only the subprocesses
    that must run on the CPU get it empty (cpu_env)."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    code = ("import os, conftest; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')), "
            "conftest.cpu_env()['CUDA_VISIBLE_DEVICES'] == '')")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO / "tests", env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["None", "True"]
