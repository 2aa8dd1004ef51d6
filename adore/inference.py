"""ADORE inference: embed the --mode queries, search the passage embeddings of --dmemmap_path.

Runs ``drhard.commands.adore_inference`` (also ``drhard-adore-inference``) with this command line.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout that is not installed
    from drhard.commands.adore_inference import console
    sys.exit(console())
