"""The paper's whole pipeline in miniature, offline, on a CPU: ``python quickstart.py [--budget tiny]``.

Runs ``drhard.commands.quickstart`` (also ``drhard-quickstart``) with this command line.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # a checkout that is not installed
    from drhard.commands.quickstart import console
    sys.exit(console())
