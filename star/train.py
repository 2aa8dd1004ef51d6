"""Train a dense retriever with STAR or a warmup baseline: ``python ./star/train.py --do_train ...``.

Runs ``drhard.commands.star_train`` (also ``drhard-star-train``) with this command line.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout that is not installed
    from drhard.commands.star_train import console
    sys.exit(console())
