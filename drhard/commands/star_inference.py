"""STAR inference: embed passages and queries with a trained model, retrieve exactly, write the run.

    python ./star/inference.py --data_type passage --max_doc_length 256 --mode dev

Writes in ``--output_dir`` (default ``./data/<data_type>/evaluate/star``) the passage and
``--mode`` query embeddings with their offset ids, the mode's rank file
(``qoffset\\tpoffset\\trank``) and the lineage record ``star-inference-<mode>.manifest.json``
(drhard/lineage.py); docs/formats.md has the names.  Complete passage embeddings of the same
model are reused across modes.  A model whose tokenizer files differ from the tokenizer that
made ``--preprocess_dir`` is refused (``--allow_tokenizer_mismatch`` goes on anyway).

Before any encoding: flags are range-checked (exit 2), both token caches are read
and checked (an empty query set is an error naming its file), the model is loaded
and its weights checked for NaN/inf, the output folder must take files and the
disk must hold both embedding files.  An embedding that comes out non-finite stops
the run with nothing written.  Failures are one ``error:`` line (exit 1).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from ..cli import run, setup_logging
from ..io import PASSAGES, query_name
from ..lineage import preprocess_inputs, write_manifest
from ..retrieval import (check_not_preprocess_dir, dense_retrieval, dense_retrieval_outputs, load_encoder,
                         open_token_cache, passage_count, prepare_output_dir)
from .flags import DataTypeParser, add_encoding_flags, add_lengths, add_mode, add_search_flags

logger = logging.getLogger(__name__)

DIRS = {"model_path": ("trained_models/star", ""), "preprocess_dir": ("preprocess", ""),
        "output_dir": ("evaluate/star", "")}


def build_parser() -> argparse.ArgumentParser:
    parser = DataTypeParser(DIRS, description=__doc__.split("\n")[0])
    add_lengths(parser)
    add_mode(parser)
    add_search_flags(parser, topk_default=100)
    add_encoding_flags(parser, "eval_batch_size", 32)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    # every input is checked before the long work: token caches, model, output folder
    check_not_preprocess_dir(args.output_dir, args.preprocess_dir)
    for name in (PASSAGES, query_name(args.mode)):
        open_token_cache(args.preprocess_dir, name)
    enc = load_encoder(args.model_path, args.preprocess_dir, args.eval_batch_size, args.no_cuda,
                       args.allow_tokenizer_mismatch)
    prepare_output_dir(args.output_dir)
    poffsets = dense_retrieval(enc.model, args.preprocess_dir, args.output_dir, args.mode, args.max_query_length,
                               args.max_doc_length, enc.batch_size, enc.device, args.topk,
                               faiss_gpus=args.faiss_gpus, fp16=args.fp16, bf16=args.bf16)
    query = query_name(args.mode)
    write_manifest(args.output_dir, f"star-inference-{args.mode}",
                   preprocess_inputs(args.preprocess_dir, [PASSAGES, query]), args=args,
                   model_dir=args.model_path, model=enc.model, tokenizer=enc.tokenizer,
                   outputs=dense_retrieval_outputs(args.output_dir, args.mode),
                   rows={PASSAGES: passage_count(args.preprocess_dir), query: len(poffsets)})
    return 0


def console() -> int:
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
