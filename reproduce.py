"""The full-scale recipe: ``python reproduce.py --data_type passage --gpus 4 --dry_run`` prints it.

Runs ``drhard.commands.reproduce`` (also ``drhard-reproduce``) with this command line.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # a checkout that is not installed
    from drhard.commands.reproduce import console
    sys.exit(console())
