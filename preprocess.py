"""Tokenize MS MARCO into DRhard's token-id memmaps: ``python preprocess.py --data_type 0|1``.

Runs ``drhard.commands.preprocess`` (also ``drhard-preprocess``) with this command line.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # a checkout that is not installed
    from drhard.commands.preprocess import console
    sys.exit(console())
