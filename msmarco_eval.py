"""Evaluate a run on MS MARCO as the official script does: ``python msmarco_eval.py REF RUN [K|doc]``.

Runs ``drhard.commands.msmarco_eval`` (also ``drhard-msmarco-eval``) with this command line.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # a checkout that is not installed
    from drhard.commands.msmarco_eval import console
    sys.exit(console())
