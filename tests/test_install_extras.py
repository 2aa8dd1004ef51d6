"""setup.py's extras: every install command we document gets exactly one faiss (the CPU and GPU wheels ship
the same ``faiss`` package, so an install with both keeps whichever unpacked last)."""
import ast
import re

import pytest

from conftest import REPO


def setup_kwargs():
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords
            if kw.arg in ("install_requires", "extras_require")}


def dist_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


def faiss_dists(extras):
    kw = setup_kwargs()
    reqs = list(kw["install_requires"]) + [r for e in extras for r in kw["extras_require"][e]]
    return sorted({dist_name(r) for r in reqs if dist_name(r).startswith("faiss")})


def test_test_extra_pulls_no_faiss():
    assert faiss_dists([]) == []
    assert faiss_dists(["test"]) == []


def test_cpu_gets_faiss_cpu_and_gpu_gets_a_gpu_faiss_only():
    assert faiss_dists(["cpu"]) == ["faiss-cpu"]
    gpu = faiss_dists(["gpu"])
    assert len(gpu) == 1 and gpu[0].startswith("faiss-gpu")


def documented_installs():
    """(where, extras) of every `pip install ... -e ".[...]"` in the README and CI."""
    found = []
    for name in ("README.md", ".ci/run"):
        path = REPO / name
        if path.exists():
            for m in re.finditer(r"""pip install[^\n]*?-e\s+["']?\.\[([a-z,]+)\]""", path.read_text()):
                found.append((name, m.group(1).split(",")))
    return found


def test_every_documented_install_gets_exactly_one_faiss():
    installs = documented_installs()
    assert ("README.md", ["gpu", "test"]) in installs and ("README.md", ["cpu", "test"]) in installs
    for where, extras in installs:
        if extras == ["test"]:
            continue  # documented for users who bring their own faiss
        assert len(faiss_dists(extras)) == 1, (where, extras, faiss_dists(extras))


@pytest.mark.parametrize("extras", [["cpu", "test"], ["gpu", "test"]])
def test_the_readme_says_who_runs_which_install(extras):
    text = (REPO / "README.md").read_text()
    assert f'pip install -e ".[{",".join(extras)}]"' in text
