"""ADORE: train the query encoder against a frozen passage index: ``python ./adore/train.py ...``.

Runs ``drhard.commands.adore_train`` (also ``drhard-adore-train``) with this command line.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout that is not installed
    from drhard.commands.adore_train import console
    sys.exit(console())
