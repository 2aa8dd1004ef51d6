"""The command-line programs of DRhard, one module each, runnable without the repository.

Every module here has ``build_parser()`` (or its arguments dataclass), ``main(argv) -> int``
and ``console()`` (what ``sys.exit`` gets: ``drhard.cli.run(main)``, the one exit-status
table), and runs as ``python -m drhard.commands.<name>`` or as the console script
``drhard-<name>`` (setup.py).  The original scripts (``preprocess.py``,
``star/train.py``, ...) are thin wrappers that call the same ``main`` with the same argv,
so their flags, defaults and outputs are these modules'.

``COMMANDS`` names each one: its module, the original script as the README shows it
(``python ./star/train.py ...``; what ``drhard.pipeline`` prints) and its console script.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class Command:
    name: str     # module drhard.commands.<name>
    script: str   # the original script, as the README runs it: "python <script> ..."

    @property
    def module(self) -> str:
        return f"{__name__}.{self.name}"

    @property
    def console_script(self) -> str:
        return "drhard-" + self.name.replace("_", "-")


COMMANDS: Dict[str, Command] = {c.name: c for c in (
    Command("preprocess", "preprocess.py"),
    Command("star_bm25_hardneg", "./star/bm25_hardneg.py"),
    Command("star_train", "./star/train.py"),
    Command("star_prepare_hardneg", "./star/prepare_hardneg.py"),
    Command("star_inference", "./star/inference.py"),
    Command("adore_train", "./adore/train.py"),
    Command("adore_inference", "./adore/inference.py"),
    Command("cvt_back", "./cvt_back.py"),
    Command("msmarco_eval", "./msmarco_eval.py"),
    Command("quickstart", "quickstart.py"),
    Command("reproduce", "reproduce.py"),
)}
