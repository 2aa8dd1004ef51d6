"""Flag groups that several commands share, defined once (names, defaults and help are the original's).

- ``DataTypeParser`` (``add_data_type_dirs`` / ``resolve_data_type_dirs``): ``--data_type passage|doc``
  and folders that default to ``./data/<data_type>/<sub folder>`` (star/inference.py,
  star/prepare_hardneg.py, star/bm25_hardneg.py);
- ``add_mode``: ``--mode`` (a query set of the preprocess folder);
- ``add_lengths``: ``--max_query_length`` / ``--max_doc_length`` (star/inference.py, star/prepare_hardneg.py);
- ``add_encoding_flags``: the per-device batch size, ``--no_cuda``, ``--fp16``, ``--bf16``,
  ``--allow_tokenizer_mismatch`` and ``--embedding_dtype`` of the scripts that embed with a model
  (star/inference.py, star/prepare_hardneg.py, adore/inference.py);
- ``add_search_flags``: ``--topk``, ``--faiss_gpus`` (star/inference.py, adore/inference.py),
  ``--exact_search`` and ``--search_chunk_rows`` (all three).
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, Optional, Tuple

from ..cli import dir_path, int_at_least
from ..io import EMBEDDING_DTYPES, MODES
from ..lineage import OVERRIDE_FLAG

DATA_TYPES = ("passage", "doc")
SEARCH_MODES = ("auto", "faiss", "stream")


def add_data_type_dirs(parser: argparse.ArgumentParser, dirs: Dict[str, Tuple[str, str]],
                       data_type=None, required: bool = True) -> None:
    """``--data_type`` and one folder flag per ``dirs`` entry ``flag: (sub folder, help)``, default
    ``./data/<data_type>/<sub folder>`` (filled in by ``resolve_data_type_dirs``)."""
    if data_type is None:
        parser.add_argument("--data_type", choices=list(DATA_TYPES), type=str, required=required)
    else:
        parser.add_argument("--data_type", type=data_type, required=required, help="passage|doc (or 1|0)")
    for name, (sub, help_text) in dirs.items():
        parser.add_argument(f"--{name}", type=dir_path, default=None,
                            help=f"{help_text + '; ' if help_text else ''}default ./data/<data_type>/{sub}")


def resolve_data_type_dirs(parser: argparse.ArgumentParser, args: argparse.Namespace,
                           dirs: Dict[str, Tuple[str, str]]) -> argparse.Namespace:
    """Fill the folders left unset with their defaults; a default that is an existing file is a usage error
    too (exit 2), as a given one is."""
    root = os.path.join(".", "data", args.data_type)
    for name, (sub, _) in dirs.items():
        path = getattr(args, name) or os.path.join(root, *sub.split("/"))
        setattr(args, name, path)
        if os.path.exists(path) and not os.path.isdir(path):
            parser.error(f"argument --{name}: {path} is not a directory")
    return args


class DataTypeParser(argparse.ArgumentParser):
    """A parser with ``--data_type`` and folder flags that default to ``./data/<data_type>/<sub folder>``
    (``add_data_type_dirs``); its ``parse_args`` fills them in (``resolve_data_type_dirs``)."""

    def __init__(self, dirs: Dict[str, Tuple[str, str]], data_type=None, **kwargs):
        super().__init__(**kwargs)
        self.dirs = dirs
        add_data_type_dirs(self, dirs, data_type)

    def parse_args(self, args=None, namespace=None):  # noqa: D102 - argparse's
        return resolve_data_type_dirs(self, super().parse_args(args, namespace), self.dirs)


def add_mode(parser: argparse.ArgumentParser, default: Optional[str] = None, help: Optional[str] = None) -> None:
    parser.add_argument("--mode", type=str, choices=list(MODES), required=default is None, default=default,
                        help=help)


def add_lengths(parser: argparse.ArgumentParser) -> None:
    """``--max_query_length`` / ``--max_doc_length``: tokens kept per query / passage when encoding."""
    parser.add_argument("--max_query_length", type=int_at_least(2), default=32)
    parser.add_argument("--max_doc_length", type=int_at_least(2), default=512)


def add_encoding_flags(parser: argparse.ArgumentParser, batch_flag: str = "eval_batch_size",
                       batch_default: int = 32) -> None:
    """The per-device batch size, the device and precision, and ``--allow_tokenizer_mismatch``
    (``drhard.retrieval.load_encoder`` takes them)."""
    parser.add_argument(f"--{batch_flag}", type=int_at_least(1), default=batch_default,
                        help="per GPU (or on the CPU)")
    parser.add_argument("--no_cuda", action="store_true", help="encode on the CPU")
    parser.add_argument("--fp16", action="store_true", help="fp16 autocast for encoding (GPU only)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for encoding (GPU only)")
    parser.add_argument(OVERRIDE_FLAG, action="store_true",
                        help="encode even when the model's tokenizer differs from the one that made --preprocess_dir")
    parser.add_argument("--embedding_dtype", choices=list(EMBEDDING_DTYPES), default="float32",
                        help="how embedding files are stored: float32 (default, the original's format) or float16 "
                        "(half the disk; computed in float32, rounded when stored; recorded in <file>.info.json)")


def add_search_flags(parser: argparse.ArgumentParser, topk_default: int, faiss_gpus: bool = True) -> None:
    """``--topk``, ``--faiss_gpus`` (where asked), and how the exact search runs: ``--exact_search`` and
    ``--search_chunk_rows`` (``drhard.retrieval.search_passages``)."""
    parser.add_argument("--topk", type=int_at_least(1), default=topk_default)
    if faiss_gpus:
        parser.add_argument("--faiss_gpus", type=int_at_least(0), default=None, nargs="+",
                            help="GPU ids to shard the faiss index over (default: CPU)")
    parser.add_argument("--exact_search", choices=list(SEARCH_MODES), default="auto",
                        help="faiss: an in-memory faiss index (on GPUs when asked); stream: read the passage "
                        "embeddings from disk in chunks (exact, memory bounded by the chunk, for embeddings larger "
                        "than RAM); auto (default): faiss when GPUs are asked or the index fits in the available "
                        "memory, else stream")
    parser.add_argument("--search_chunk_rows", type=int_at_least(1), default=None,
                        help="rows per chunk of the streamed search (default: from the available memory, at most "
                        "256 MB)")
