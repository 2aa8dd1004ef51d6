"""STAR inference: embed passages and queries with a trained model, retrieve exactly, write the run.

    python ./star/inference.py --data_type passage --max_doc_length 256 --mode dev

Writes in ``--output_dir`` (default ``./data/<data_type>/evaluate/star``):
``passages.memmap`` / ``passages-id.memmap``, ``<mode>-query.memmap`` /
``<mode>-query-id.memmap``, ``<mode>.rank.tsv`` (``qoffset\\tpoffset\\trank``) and the lineage
record ``star-inference-<mode>.manifest.json`` (drhard/lineage.py).
Complete passage embeddings of the same model are reused across modes.  A model whose
tokenizer files differ from the tokenizer that made ``--preprocess_dir`` is refused
(``--allow_tokenizer_mismatch`` goes on anyway).

Before any encoding: flags are range-checked (exit 2), both token caches are read
and checked (an empty query set is an error naming its file), the model is loaded
and its weights checked for NaN/inf, the output folder must take files and the
disk must hold both embedding files.  An embedding that comes out non-finite stops
the run with nothing written.  Failures are one ``error:`` line (exit 1).
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
from drhard.io import MODES, PASSAGES, query_name
from drhard.lineage import OVERRIDE_FLAG, check_tokenizer_lineage, preprocess_inputs, write_manifest
from drhard.model import RobertaDot
from drhard.retrieval import (check_not_preprocess_dir, dense_retrieval, dense_retrieval_outputs, open_token_cache,
                              passage_count, prepare_output_dir, total_batch_size)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_type", choices=["passage", "doc"], type=str, required=True)
    parser.add_argument("--max_query_length", type=int_at_least(2), default=32)
    parser.add_argument("--max_doc_length", type=int_at_least(2), default=512)
    parser.add_argument("--eval_batch_size", type=int_at_least(1), default=32, help="per GPU (or on the CPU)")
    parser.add_argument("--mode", type=str, choices=list(MODES), required=True)
    parser.add_argument("--topk", type=int_at_least(1), default=100)
    parser.add_argument("--no_cuda", action="store_true")
    parser.add_argument("--faiss_gpus", type=int_at_least(0), default=None, nargs="+",
                        help="GPU ids to shard the faiss index over (default: CPU)")
    parser.add_argument("--model_path", type=dir_path, default=None,
                        help="default ./data/<data_type>/trained_models/star")
    parser.add_argument("--preprocess_dir", type=dir_path, default=None,
                        help="default ./data/<data_type>/preprocess")
    parser.add_argument("--output_dir", type=dir_path, default=None, help="default ./data/<data_type>/evaluate/star")
    parser.add_argument("--fp16", action="store_true", help="fp16 autocast for encoding (GPU only)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for encoding (GPU only)")
    parser.add_argument(OVERRIDE_FLAG, action="store_true",
                        help="encode even when the model's tokenizer differs from the preprocess dir's")
    args = parser.parse_args(argv)
    root = os.path.join(".", "data", args.data_type)
    args.model_path = args.model_path or os.path.join(root, "trained_models", "star")
    args.preprocess_dir = args.preprocess_dir or os.path.join(root, "preprocess")
    args.output_dir = args.output_dir or os.path.join(root, "evaluate", "star")
    for flag in ("model_path", "preprocess_dir", "output_dir"):  # the defaults too
        path = getattr(args, flag)
        if os.path.exists(path) and not os.path.isdir(path):
            parser.error(f"argument --{flag}: {path} is not a directory")
    return args


def main(argv=None):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
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
    logging.getLogger("star.inference").info("model %s on %s, batch size %d", args.model_path, device, batch_size)
    poffsets = dense_retrieval(model, args.preprocess_dir, args.output_dir, args.mode, args.max_query_length,
                               args.max_doc_length, batch_size, device, args.topk, faiss_gpus=args.faiss_gpus,
                               fp16=args.fp16, bf16=args.bf16)
    query = query_name(args.mode)
    write_manifest(args.output_dir, f"star-inference-{args.mode}",
                   preprocess_inputs(args.preprocess_dir, [PASSAGES, query]), args=args,
                   model_dir=args.model_path, model=model, tokenizer=tokenizer,
                   outputs=dense_retrieval_outputs(args.output_dir, args.mode),
                   rows={PASSAGES: passage_count(args.preprocess_dir), query: len(poffsets)})


if __name__ == "__main__":
    sys.exit(run(main))
