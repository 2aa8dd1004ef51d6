"""Tokenize MS MARCO into DRhard's token-id memmaps (the original's flags and defaults).

    python preprocess.py --data_type 0; python preprocess.py --data_type 1

reads ``./data/{doc,passage}/dataset`` and writes ``./data/{doc,passage}/preprocess``
(``--data_dir`` / ``--out_data_dir`` change that).  ``--model_name_or_path roberta-base``
(the default) is not downloaded: it resolves to ``$DRHARD_TOKENIZER`` or ``./data/roberta-base``;
otherwise pass a local directory with vocab.json and merges.txt, e.g.
``--model_name_or_path ../shared/data/roberta-base-tokenizer``.  See drhard/preprocess.py for
the outputs and docs/bad-input.md for what is rejected.
"""
import argparse
import logging
import sys

from drhard.io import DataError
from drhard.preprocess import PreprocessArgs, parse_data_type, preprocess
from drhard.tokenization import TokenizerNotFound


def get_arguments(argv=None) -> PreprocessArgs:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default="roberta-base", type=str,
                        help="local tokenizer directory; 'roberta-base' resolves to $DRHARD_TOKENIZER "
                             "or ./data/roberta-base")
    parser.add_argument("--max_seq_length", default=512, type=int,
                        help="The maximum total input sequence length after tokenization. Sequences longer "
                             "than this will be truncated, sequences shorter will be padded.")
    parser.add_argument("--max_query_length", default=64, type=int,
                        help="The maximum total input sequence length after tokenization. Sequences longer "
                             "than this will be truncated, sequences shorter will be padded.")
    parser.add_argument("--max_doc_character", default=10000, type=int,
                        help="used before tokenizer to save tokenizer latency")
    parser.add_argument("--data_type", default="1", type=str, help="0 (or doc) for doc, 1 (or passage) for passage")
    parser.add_argument("--threads", type=int, default=32, help="worker processes (capped at the usable cores)")
    parser.add_argument("--data_dir", default=None, help="default ./data/{doc,passage}/dataset")
    parser.add_argument("--out_data_dir", default=None, help="default ./data/{doc,passage}/preprocess")
    parser.add_argument("--tokenizer_compat", default="auto", choices=["auto", "drhard", "hf"],
                        help="drhard: transformers 2.8.0 RoBERTa rules (what the released checkpoints "
                             "need); hf: the tokenizer's own modern behaviour; auto: drhard for "
                             "RoBERTa-style vocab.json+merges.txt directories")
    parser.add_argument("--overwrite", action="store_true", help="rebuild passages even when complete")
    a = parser.parse_args(argv)
    try:
        kind = parse_data_type(a.data_type)
    except ValueError as e:
        parser.error(str(e))
    if a.threads < 1:
        parser.error("--threads must be at least 1")
    return PreprocessArgs(
        data_dir=a.data_dir or f"./data/{kind}/dataset",
        out_data_dir=a.out_data_dir or f"./data/{kind}/preprocess",
        data_type=kind, model_name_or_path=a.model_name_or_path, max_seq_length=a.max_seq_length,
        max_query_length=a.max_query_length, max_doc_character=a.max_doc_character, threads=a.threads,
        tokenizer_compat=a.tokenizer_compat, overwrite=a.overwrite,
        command=["preprocess.py"] + list(sys.argv[1:] if argv is None else argv))


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = get_arguments(argv)
    try:
        manifest = preprocess(args)
    except (DataError, TokenizerNotFound) as e:
        print(f"preprocess.py: error: {e}", file=sys.stderr)
        return 2
    for name, n in manifest["rows"].items():
        print(f"{name}: {n} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
