"""Tokenize MS MARCO into DRhard's token-id memmaps (the original's flags and defaults).

    python preprocess.py --data_type 0; python preprocess.py --data_type 1

reads ``./data/{doc,passage}/dataset`` and writes ``./data/{doc,passage}/preprocess``
(``--data_dir`` / ``--out_data_dir`` change that).  ``--model_name_or_path roberta-base``
(the default) is not downloaded: it resolves to ``$DRHARD_TOKENIZER`` or ``./data/roberta-base``;
otherwise pass a local directory with vocab.json and merges.txt.  See drhard/preprocess.py for
the outputs and docs/bad-input.md for what is rejected.

Exit status: 0 done; 1 one ``error:`` line (bad input data, no tokenizer, too little disk
space, an output folder the system refuses); 2 a bad flag (a length below 2, a file where a
folder is expected, ...), before any work.
"""
import argparse
import logging
import os
import sys

import drhard.cli
from drhard.preprocess import PreprocessArgs, parse_data_type, preprocess


def _int_at_least(low: int, why: str = ""):
    """An argparse ``type``: an integer >= ``low`` (the flag's range, checked before any work)."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}{why}, got {n}")
        return n
    return parse


def get_arguments(argv=None) -> PreprocessArgs:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default="roberta-base", type=str,
                        help="local tokenizer directory; 'roberta-base' resolves to $DRHARD_TOKENIZER "
                             "or ./data/roberta-base")
    parser.add_argument("--max_seq_length", default=512, type=_int_at_least(2, " (<s> and </s>)"),
                        help="The maximum total input sequence length after tokenization. Sequences longer "
                             "than this will be truncated, sequences shorter will be padded.")
    parser.add_argument("--max_query_length", default=64, type=_int_at_least(2, " (<s> and </s>)"),
                        help="The maximum total input sequence length after tokenization. Sequences longer "
                             "than this will be truncated, sequences shorter will be padded.")
    parser.add_argument("--max_doc_character", default=10000, type=_int_at_least(1),
                        help="used before tokenizer to save tokenizer latency")
    parser.add_argument("--data_type", default="1", type=str, help="0 (or doc) for doc, 1 (or passage) for passage")
    parser.add_argument("--threads", type=_int_at_least(1), default=32,
                        help="worker processes (capped at the usable cores)")
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
    data_dir = a.data_dir or f"./data/{kind}/dataset"
    out_dir = a.out_data_dir or f"./data/{kind}/preprocess"
    if not os.path.isdir(data_dir):
        parser.error(f"--data_dir {data_dir}: " + ("not a directory" if os.path.exists(data_dir)
                                                   else "no such directory"))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        parser.error(f"--out_data_dir {out_dir}: not a directory")
    if os.path.isfile(a.model_name_or_path):
        parser.error(f"--model_name_or_path {a.model_name_or_path}: a file; expected a tokenizer directory")
    return PreprocessArgs(
        data_dir=data_dir, out_data_dir=out_dir,
        data_type=kind, model_name_or_path=a.model_name_or_path, max_seq_length=a.max_seq_length,
        max_query_length=a.max_query_length, max_doc_character=a.max_doc_character, threads=a.threads,
        tokenizer_compat=a.tokenizer_compat, overwrite=a.overwrite,
        command=["preprocess.py"] + list(sys.argv[1:] if argv is None else argv))


def main(argv=None) -> int:
    """Errors: a bad flag exits 2 (argparse); bad data, a missing tokenizer, a full disk or an output
    the system refuses raise, and ``drhard.cli.run`` prints them as one ``error:`` line (exit 1)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = get_arguments(argv)
    manifest = preprocess(args)
    for name, n in manifest["rows"].items():
        print(f"{name}: {n} rows")
    for name, rec in manifest["extra_columns"].items():
        print(f"{name}: {rec['lines']} line(s) had more tab-separated columns than used; the first columns "
              f"were used, as the original did (first on lines {', '.join(map(str, rec['first_lines']))})")
    return 0


if __name__ == "__main__":
    sys.exit(drhard.cli.run(main))
