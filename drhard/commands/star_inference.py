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

from ..cli import int_at_least, run, setup_logging
from ..device import resolve_device
from ..finite import check_model_finite
from ..io import PASSAGES, query_name
from ..lineage import check_tokenizer_lineage, preprocess_inputs, write_manifest
from ..model import RobertaDot
from ..retrieval import (check_not_preprocess_dir, dense_retrieval, dense_retrieval_outputs, open_token_cache,
                         passage_count, prepare_output_dir, total_batch_size)
from .flags import (add_data_type_dirs, add_encoding_flags, add_mode, add_search_flags, add_tokenizer_mismatch_flag,
                    parse_with_dirs)

logger = logging.getLogger(__name__)

DIRS = {"model_path": ("trained_models/star", ""), "preprocess_dir": ("preprocess", ""),
        "output_dir": ("evaluate/star", "")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_type_dirs(parser, DIRS)
    parser.add_argument("--max_query_length", type=int_at_least(2), default=32)
    parser.add_argument("--max_doc_length", type=int_at_least(2), default=512)
    add_mode(parser)
    add_search_flags(parser, topk_default=100)
    add_encoding_flags(parser, "eval_batch_size", 32, no_cuda_help="encode on the CPU")
    add_tokenizer_mismatch_flag(parser)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return parse_with_dirs(build_parser(), argv, DIRS)


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()
    args = parse_args(argv)
    # every input is checked before the long work: token caches, model, output folder
    check_not_preprocess_dir(args.output_dir, args.preprocess_dir)
    for name in (PASSAGES, query_name(args.mode)):
        open_token_cache(args.preprocess_dir, name)
    tokenizer = check_tokenizer_lineage(args.preprocess_dir, args.model_path, args.allow_tokenizer_mismatch)
    device = resolve_device(args.no_cuda)
    model = RobertaDot.from_pretrained(args.model_path)
    check_model_finite(model, args.model_path)
    prepare_output_dir(args.output_dir)
    batch_size = total_batch_size(args.eval_batch_size, device)
    logger.info("model %s on %s, batch size %d", args.model_path, device, batch_size)
    poffsets = dense_retrieval(model, args.preprocess_dir, args.output_dir, args.mode, args.max_query_length,
                               args.max_doc_length, batch_size, device, args.topk, faiss_gpus=args.faiss_gpus,
                               fp16=args.fp16, bf16=args.bf16)
    query = query_name(args.mode)
    write_manifest(args.output_dir, f"star-inference-{args.mode}",
                   preprocess_inputs(args.preprocess_dir, [PASSAGES, query]), args=args,
                   model_dir=args.model_path, model=model, tokenizer=tokenizer,
                   outputs=dense_retrieval_outputs(args.output_dir, args.mode),
                   rows={PASSAGES: passage_count(args.preprocess_dir), query: len(poffsets)})
    return 0


def console() -> int:
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
