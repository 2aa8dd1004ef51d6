"""Map a rank file of preprocess offsets back to official MS MARCO ids: ``python ./cvt_back.py ...``.

Runs ``drhard.commands.cvt_back`` (also ``drhard-cvt-back``) with this command line.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # a checkout that is not installed
    from drhard.commands.cvt_back import console
    sys.exit(console())
