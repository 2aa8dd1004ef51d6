"""ADORE inference: embed the queries of ``--mode`` with an ADORE query encoder and search precomputed
passage embeddings (e.g. STAR's ``passages.memmap``).

    python ./adore/inference.py --model_dir ./data/passage/trained_models/adore-star \\
        --output_dir ./data/passage/evaluate/adore-star --preprocess_dir ./data/passage/preprocess \\
        --mode dev --dmemmap_path ./data/passage/evaluate/star/passages.memmap

Writes the query embeddings ``<output_dir>/<mode>.qembed.memmap`` and the mode's rank file
(``qoffset\\tpoffset\\trank`` for every query of the mode), both atomically.
The embedding size comes from the model; a passage memmap of another size is refused, and so is
a model whose tokenizer files differ from the tokenizer that made ``--preprocess_dir``
(``--allow_tokenizer_mismatch`` goes on anyway).  The lineage record is
``<output_dir>/adore-inference-<mode>.manifest.json`` (drhard/lineage.py).

Before any encoding: flags are range-checked (exit 2), the query cache is checked
(an empty query set is an error naming its file), the model is loaded and its
weights checked for NaN/inf, ``--dmemmap_path`` is checked for size, dimension and
NaN/inf (read in chunks), and the output folder must take files and hold the query
embeddings.  Failures are one ``error:`` line (exit 1) and leave no output.
"""
import argparse
import logging
import os
import sys

try:
    import drhard  # noqa: F401
except ImportError:  # run from a checkout without `pip install .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from drhard.cli import dir_path, file_path, int_at_least, run
from drhard.device import resolve_device
from drhard.encode import sidecar_path
from drhard.finite import check_model_finite
from drhard.io import MODES, PASSAGES, qembed_path, query_name, rank_path
from drhard.lineage import OVERRIDE_FLAG, check_tokenizer_lineage, preprocess_inputs, write_manifest
from drhard.model import RobertaDot
from drhard.retrieval import (check_embedding_space, embed_queries, open_passage_embeddings, open_token_cache,
                              passage_count, prepare_output_dir, retrieve, total_batch_size, write_offset_rank)

logger = logging.getLogger("adore.inference")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", type=dir_path, required=True)
    parser.add_argument("--output_dir", type=dir_path, required=True)
    parser.add_argument("--preprocess_dir", type=dir_path, required=True)
    parser.add_argument("--mode", type=str, choices=list(MODES), required=True)
    parser.add_argument("--dmemmap_path", type=file_path, required=True,
                        help="passage embeddings (float32 [N, dim])")
    parser.add_argument("--topk", type=int_at_least(1), default=100)
    parser.add_argument("--max_seq_length", type=int_at_least(2), default=64)
    parser.add_argument("--pergpu_eval_batch_size", type=int_at_least(1), default=32)
    parser.add_argument("--no_cuda", action="store_true")
    parser.add_argument("--faiss_gpus", type=int_at_least(0), default=None, nargs="+",
                        help="GPU ids to shard the faiss index over (default: CPU)")
    parser.add_argument("--fp16", action="store_true", help="fp16 autocast for encoding (GPU only)")
    parser.add_argument(OVERRIDE_FLAG, action="store_true",
                        help="encode even when the model's tokenizer differs from the preprocess dir's")
    return parser.parse_args(argv)


def main(argv=None):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    # every input is checked before the long work: query cache, model, passage embeddings, output folder
    queries = open_token_cache(args.preprocess_dir, query_name(args.mode))
    tokenizer = check_tokenizer_lineage(args.preprocess_dir, args.model_dir, args.allow_tokenizer_mismatch)
    device = resolve_device(args.no_cuda)
    model = RobertaDot.from_pretrained(args.model_dir)
    check_model_finite(model, args.model_dir)
    dim = model.output_embedding_size
    p_emb = open_passage_embeddings(args.dmemmap_path, dim, passage_count(args.preprocess_dir), check_finite=True)
    batch_size = total_batch_size(args.pergpu_eval_batch_size, device)
    qembed = qembed_path(args.output_dir, args.mode)
    prepare_output_dir(args.output_dir)
    check_embedding_space(model, args.output_dir, [(qembed, queries, args.max_seq_length)])
    q_emb = embed_queries(model, args.preprocess_dir, args.mode, args.max_seq_length, batch_size, device, qembed,
                          fp16=args.fp16)
    _, poffsets = retrieve(p_emb, q_emb, args.topk, gpus=args.faiss_gpus)
    out = rank_path(args.output_dir, args.mode)
    write_offset_rank(out, poffsets)
    logger.info("wrote %s (%d queries, top %d)", out, len(poffsets), args.topk)
    query = query_name(args.mode)
    inputs = preprocess_inputs(args.preprocess_dir, [query])
    inputs.update({"dmemmap": args.dmemmap_path, "dmemmap_info": sidecar_path(args.dmemmap_path)})
    write_manifest(args.output_dir, f"adore-inference-{args.mode}", inputs, args=args, model_dir=args.model_dir,
                   model=model, tokenizer=tokenizer, outputs={query: qembed, "rank": out},
                   rows={PASSAGES: len(p_emb), query: len(poffsets)})


if __name__ == "__main__":
    sys.exit(run(main))
