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
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from ..cli import dir_path, file_path, int_at_least, run, setup_logging
from ..encode import sidecar_path
from ..io import PASSAGES, qembed_path, query_name, rank_path
from ..lineage import preprocess_inputs, write_manifest
from ..retrieval import (check_embedding_space, embed_queries, load_encoder, open_passage_embeddings,
                         open_token_cache, passage_count, passage_index, prepare_output_dir, search_index,
                         write_offset_rank)
from .flags import add_encoding_flags, add_mode, add_search_flags

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", type=dir_path, required=True)
    parser.add_argument("--output_dir", type=dir_path, required=True)
    parser.add_argument("--preprocess_dir", type=dir_path, required=True)
    add_mode(parser)
    parser.add_argument("--dmemmap_path", type=file_path, required=True,
                        help="passage embeddings (float32 [N, dim])")
    add_search_flags(parser, topk_default=100)
    parser.add_argument("--max_seq_length", type=int_at_least(2), default=64, help="queries are cut to this many "
                        "tokens (<s> and </s> included)")
    add_encoding_flags(parser, "pergpu_eval_batch_size", 32)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    # every input is checked before the long work: query cache, model, passage embeddings (their values as the
    # index is filled), output folder
    queries = open_token_cache(args.preprocess_dir, query_name(args.mode))
    enc = load_encoder(args.model_dir, args.preprocess_dir, args.pergpu_eval_batch_size, args.no_cuda,
                       args.allow_tokenizer_mismatch)
    p_emb = open_passage_embeddings(args.dmemmap_path, enc.model.output_embedding_size,
                                    passage_count(args.preprocess_dir))
    qembed = qembed_path(args.output_dir, args.mode)
    prepare_output_dir(args.output_dir)
    max_query_length = args.max_seq_length  # the original's flag name for the query length
    check_embedding_space(enc.model, args.output_dir, [(qembed, queries, max_query_length)])
    index = passage_index(p_emb, args.dmemmap_path, gpus=args.faiss_gpus)  # NaN/inf rows: refused here
    q_emb = embed_queries(enc.model, args.preprocess_dir, args.mode, max_query_length, enc.batch_size, enc.device,
                          qembed, fp16=args.fp16, bf16=args.bf16)
    _, poffsets = search_index(index, q_emb, args.topk)
    out = rank_path(args.output_dir, args.mode)
    write_offset_rank(out, poffsets)
    logger.info("wrote %s (%d queries, top %d)", out, len(poffsets), args.topk)
    query = query_name(args.mode)
    inputs = preprocess_inputs(args.preprocess_dir, [query])
    inputs.update({"dmemmap": args.dmemmap_path, "dmemmap_info": sidecar_path(args.dmemmap_path)})
    write_manifest(args.output_dir, f"adore-inference-{args.mode}", inputs, args=args, model_dir=args.model_dir,
                   model=enc.model, tokenizer=enc.tokenizer, outputs={query: qembed, "rank": out},
                   rows={PASSAGES: len(p_emb), query: len(poffsets)})
    return 0


def console() -> int:
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
