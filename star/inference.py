"""STAR inference (embed, search exactly, write the run): ``python ./star/inference.py --mode dev ...``.

Runs ``drhard.commands.star_inference`` (also ``drhard-star-inference``) with this command line.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout that is not installed
    from drhard.commands.star_inference import console
    sys.exit(console())
