"""Static hard negatives for STAR from the warmup model: ``python ./star/prepare_hardneg.py ...``.

Runs ``drhard.commands.star_prepare_hardneg`` (also ``drhard-star-prepare-hardneg``) with this command line.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout that is not installed
    from drhard.commands.star_prepare_hardneg import console
    sys.exit(console())
