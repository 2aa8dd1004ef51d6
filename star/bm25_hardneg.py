"""BM25 negatives into hard.json for the BM25-Neg warmup: ``python ./star/bm25_hardneg.py ...``.

Runs ``drhard.commands.star_bm25_hardneg`` (also ``drhard-star-bm25-hardneg``) with this command line.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout that is not installed
    from drhard.commands.star_bm25_hardneg import console
    sys.exit(console())
