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
import argparse
import logging
import os
import sys

try:
    import drhard  # noqa: F401
except ImportError:  # run from a checkout without `pip install .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from drhard.cli import dir_path, int_at_least, run
from drhard.device import resolve_device
from drhard.finite import check_model_finite
from drhard.index import visible_faiss_gpus
from drhard.io import HARD_JSON, MODES, PASSAGES, hard_json_path, qrel_name, qrel_path, query_name, read_offset_qrels
from drhard.lineage import OVERRIDE_FLAG, check_tokenizer_lineage, preprocess_inputs, write_manifest
from drhard.model import RobertaDot
from drhard.retrieval import (check_not_preprocess_dir, check_qrels_offsets, dense_retrieval, dense_retrieval_outputs,
                              evaluate_offsets, hard_negatives, open_token_cache, passage_count, prepare_output_dir,
                              read_eval_qrels, total_batch_size, write_hard_json)

logger = logging.getLogger("star.prepare_hardneg")

HARD_MODE = "train"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_type", choices=["passage", "doc"], type=str, required=True)
    parser.add_argument("--max_query_length", type=int_at_least(2), default=32)
    parser.add_argument("--max_doc_length", type=int_at_least(2), default=512)
    parser.add_argument("--eval_batch_size", type=int_at_least(1), default=128, help="per GPU (or on the CPU)")
    parser.add_argument("--mode", type=str, choices=list(MODES), default=HARD_MODE,
                        help="query set to retrieve and evaluate (default train); hard.json always comes from "
                             "the train queries")
    parser.add_argument("--topk", type=int_at_least(1), default=200)
    parser.add_argument("--not_faiss_cuda", action="store_true", help="search on the CPU")
    parser.add_argument("--no_cuda", action="store_true", help="encode on the CPU")
    parser.add_argument("--model_path", type=dir_path, default=None, help="default ./data/<data_type>/warmup")
    parser.add_argument("--preprocess_dir", type=dir_path, default=None,
                        help="default ./data/<data_type>/preprocess")
    parser.add_argument("--output_dir", type=dir_path, default=None,
                        help="default ./data/<data_type>/warmup_retrieve")
    parser.add_argument("--fp16", action="store_true", help="fp16 autocast for encoding (GPU only)")
    parser.add_argument(OVERRIDE_FLAG, action="store_true",
                        help="encode even when the model's tokenizer differs from the preprocess dir's")
    args = parser.parse_args(argv)
    root = os.path.join(".", "data", args.data_type)
    args.model_path = args.model_path or os.path.join(root, "warmup")
    args.preprocess_dir = args.preprocess_dir or os.path.join(root, "preprocess")
    args.output_dir = args.output_dir or os.path.join(root, "warmup_retrieve")
    for flag in ("model_path", "preprocess_dir", "output_dir"):  # the defaults too
        path = getattr(args, flag)
        if os.path.exists(path) and not os.path.isdir(path):
            parser.error(f"argument --{flag}: {path} is not a directory")
    return args


def main(argv=None):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    modes = [args.mode] + ([HARD_MODE] if args.mode != HARD_MODE else [])
    # every input is checked before the long work: qrels, token caches, model, output folder
    train_qrels_file = qrel_path(args.preprocess_dir, HARD_MODE)
    train_qrels = read_offset_qrels(train_qrels_file)
    check_not_preprocess_dir(args.output_dir, args.preprocess_dir)
    n_passages = len(open_token_cache(args.preprocess_dir, PASSAGES))
    n_queries = {m: len(open_token_cache(args.preprocess_dir, query_name(m))) for m in modes}
    check_qrels_offsets(train_qrels_file, train_qrels, n_queries[HARD_MODE], n_passages)
    eval_qrels = {m: read_eval_qrels(qrel_path(args.preprocess_dir, m)) for m in modes}
    tokenizer = check_tokenizer_lineage(args.preprocess_dir, args.model_path, args.allow_tokenizer_mismatch)
    device = resolve_device(args.no_cuda)
    model = RobertaDot.from_pretrained(args.model_path)
    check_model_finite(model, args.model_path)
    prepare_output_dir(args.output_dir)
    batch_size = total_batch_size(args.eval_batch_size, device)
    gpus = [] if args.not_faiss_cuda else visible_faiss_gpus()
    if args.mode != HARD_MODE:
        logger.info("--mode %s: retrieving %s queries for evaluation, and train queries for hard.json "
                    "(STAR trains on train queries)", args.mode, args.mode)
    k = 100 if args.data_type == "doc" else 10
    outputs, rows = {}, {PASSAGES: passage_count(args.preprocess_dir)}
    for mode in modes:
        poffsets = dense_retrieval(model, args.preprocess_dir, args.output_dir, mode, args.max_query_length,
                                   args.max_doc_length, batch_size, device, args.topk + 10, faiss_gpus=gpus,
                                   fp16=args.fp16)
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
                   args=args, model_dir=args.model_path, model=model, tokenizer=tokenizer, outputs=outputs, rows=rows)


if __name__ == "__main__":
    sys.exit(run(main))
