"""Static hard negatives for STAR: retrieve with the warmup model, keep the top non-relevant passages.

    python ./star/prepare_hardneg.py --data_type passage --max_query_length 32 \\
        --max_doc_length 256 --mode dev --topk 200

STAR trains on the training queries, so ``hard.json`` is always built from the
``train`` queries: ``{"<qoffset>": [topk non-relevant poffsets in rank order]}``
for every training query (relevance from the train qrels).  ``--mode``
(default ``train``) names the query set whose retrieval is also evaluated and
printed; ``--mode dev`` as in the original README therefore writes the dev run
and its MRR (a check of the warmup model) *and* the train run + ``hard.json``.
(The original wrote hard.json from the ``--mode`` queries, so the README
command produced negatives for dev queries that STAR cannot use.)

Outputs in ``--output_dir`` (default ``./data/<data_type>/warmup_retrieve``):
``passages.memmap``, ``passages-id.memmap``, ``<mode>-query.memmap``,
``<mode>-query-id.memmap``, ``<mode>.rank.tsv`` (top ``topk+10``) for each
retrieved mode, ``hard.json`` and the lineage record ``prepare_hardneg.manifest.json``
(drhard/lineage.py).  A model whose tokenizer files differ from the tokenizer that made
``--preprocess_dir`` is refused (``--allow_tokenizer_mismatch`` goes on anyway).

Before any encoding: flags are range-checked (exit 2), the train qrels and the qrels
of the mode to evaluate are read (offsets must be rows of the caches), every
token cache is checked (an empty query set is an error naming its file), the model is
loaded and its weights checked for NaN/inf, and the output folder must take files.
The printed MRR is the official one (every qrels line relevant, as ``msmarco_eval.py``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from ..cli import run, setup_logging
from ..dataset import check_qrels_offsets
from ..index import visible_faiss_gpus
from ..io import HARD_JSON, PASSAGES, hard_json_path, qrel_name, qrel_path, query_name, read_offset_qrels
from ..lineage import preprocess_inputs, write_manifest
from ..retrieval import (check_not_preprocess_dir, dense_retrieval, dense_retrieval_outputs, evaluate_offsets,
                         hard_negatives, load_encoder, open_token_cache, passage_count, prepare_output_dir,
                         read_eval_qrels, write_hard_json)
from .flags import DataTypeParser, add_encoding_flags, add_lengths, add_mode, add_search_flags

logger = logging.getLogger(__name__)

HARD_MODE = "train"
DIRS = {"model_path": ("warmup", ""), "preprocess_dir": ("preprocess", ""), "output_dir": ("warmup_retrieve", "")}


def build_parser() -> argparse.ArgumentParser:
    parser = DataTypeParser(DIRS, description=__doc__.split("\n")[0])
    add_lengths(parser)
    add_mode(parser, default=HARD_MODE, help="query set to retrieve and evaluate (default train); hard.json always "
             "comes from the train queries")
    add_search_flags(parser, topk_default=200, faiss_gpus=False)
    parser.add_argument("--not_faiss_cuda", action="store_true", help="search on the CPU")
    add_encoding_flags(parser, "eval_batch_size", 128)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    modes = [args.mode] + ([HARD_MODE] if args.mode != HARD_MODE else [])
    # every input is checked before the long work: qrels, token caches, model, output folder
    train_qrels_file = qrel_path(args.preprocess_dir, HARD_MODE)
    train_qrels = read_offset_qrels(train_qrels_file)
    check_not_preprocess_dir(args.output_dir, args.preprocess_dir)
    n_passages = len(open_token_cache(args.preprocess_dir, PASSAGES))
    n_queries = {m: len(open_token_cache(args.preprocess_dir, query_name(m))) for m in modes}
    check_qrels_offsets(train_qrels_file, train_qrels, n_queries[HARD_MODE], n_passages)
    eval_qrels = {m: read_eval_qrels(qrel_path(args.preprocess_dir, m)) for m in modes}
    enc = load_encoder(args.model_path, args.preprocess_dir, args.eval_batch_size, args.no_cuda,
                       args.allow_tokenizer_mismatch)
    prepare_output_dir(args.output_dir)
    gpus = [] if args.not_faiss_cuda else visible_faiss_gpus()
    if args.mode != HARD_MODE:
        logger.info("--mode %s: retrieving %s queries for evaluation, and train queries for hard.json "
                    "(STAR trains on train queries)", args.mode, args.mode)
    k = 100 if args.data_type == "doc" else 10
    outputs, rows = {}, {PASSAGES: passage_count(args.preprocess_dir)}
    for mode in modes:
        poffsets = dense_retrieval(enc.model, args.preprocess_dir, args.output_dir, mode, args.max_query_length,
                                   args.max_doc_length, enc.batch_size, enc.device, args.topk + 10, faiss_gpus=gpus,
                                   fp16=args.fp16, bf16=args.bf16)
        outputs.update({f"{mode}:{label}": p for label, p in dense_retrieval_outputs(args.output_dir, mode).items()})
        rows[query_name(mode)] = len(poffsets)
        if eval_qrels[mode] is not None:
            metrics = evaluate_offsets(eval_qrels[mode], poffsets, k)
            print(f"warmup model on {mode} queries:")
            for name in sorted(metrics):
                print(f"{name}: {metrics[name]}")
        if mode == HARD_MODE:
            negatives = hard_negatives(poffsets, train_qrels, args.topk)
            short = sum(1 for n in negatives if len(n) < args.topk)
            if short:
                logger.warning("%d train queries have fewer than %d hard negatives (relevant passages in "
                               "their top %d)", short, args.topk, args.topk + 10)
            hard_path = hard_json_path(args.output_dir)
            write_hard_json(hard_path, negatives)
            logger.info("wrote %s: %d training queries, %d negatives each", hard_path, len(negatives), args.topk)
            outputs[HARD_JSON] = hard_path
    write_manifest(args.output_dir, "prepare_hardneg",
                   preprocess_inputs(args.preprocess_dir, [PASSAGES] + [query_name(m) for m in modes],
                                     [qrel_name(m) for m in modes]),
                   args=args, model_dir=args.model_path, model=enc.model, tokenizer=enc.tokenizer, outputs=outputs,
                   rows=rows)
    return 0


def console() -> int:
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
