"""Map a rank file of preprocess offsets back to official MS MARCO ids.

    python ./cvt_back.py --input_dir ./data/passage/evaluate/adore-star/ \
        --preprocess_dir ./data/passage/preprocess \
        --output_dir ./data/passage/official_runs/adore-star --mode dev --dataset passage

Reads the ``--mode`` rank file of ``--input_dir`` (``qoffset\\tpoffset\\trank``), maps the
query offset through the inverse of the mode's query id map of ``--preprocess_dir``
and the passage offset through the inverse of the passage id map (``D`` prefix for
``--dataset doc``) and writes the rank file of the same name into ``--output_dir``
(``qid\\tpid\\trank``); docs/formats.md has the names and formats.

``--output_format trec`` writes ``<output_dir>/<mode>.rank.trec`` instead and
``both`` writes both.  TREC lines are ``qid Q0 pid rank score tag``; rank files
carry no scores, so the score is the pseudo-score ``-rank`` (decreasing with the
rank, never tied), which gives trec_eval the same order.

An existing output file is never overwritten (as in the original); outputs are
written atomically, so a killed run leaves nothing behind.  A directory where a
file is expected (the rank file, an id map) or a file where a folder is expected
is a usage error (exit 2); a data error, a full disk or a read-only output folder
is one ``error:`` line (exit 1), with no output file left.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Dict, List, Optional, Sequence

from tqdm import tqdm

from ..cli import dir_path, naming_output, run
from ..io import (MODES, DataError, atomic_write, data_error, iter_rank_lines, load_offset_map, pid2offset_path,
                  qid2offset_path, rank_path, trec_run_path)


def inverse_map(path: str) -> Dict[int, int]:
    """offset -> id from an ``id -> offset`` pickle; two ids on one offset is an error."""
    forward = load_offset_map(path)
    inverse: Dict[int, int] = {}
    for ident, offset in forward.items():
        if offset in inverse:
            raise data_error(path, None, f"ids {inverse[offset]} and {ident} share offset {offset}")
        inverse[offset] = ident
    return inverse


def output_paths(output_dir: str, mode: str, output_format: str) -> List[str]:
    paths = {"tsv": [rank_path], "trec": [trec_run_path], "both": [rank_path, trec_run_path]}
    return [path(output_dir, mode) for path in paths[output_format]]


def map_paths(preprocess_dir: str, mode: str) -> List[str]:
    """The id maps of ``mode``: the mode's query map and the passage map."""
    return [qid2offset_path(preprocess_dir, mode), pid2offset_path(preprocess_dir)]


def convert(input_path: str, preprocess_dir: str, mode: str, dataset: str, outputs: List[str],
            tag: str = "DRhard") -> int:
    """Write ``outputs`` (``.tsv`` and/or ``.trec``) from ``input_path``; return the line count."""
    qmap_path, pmap_path = map_paths(preprocess_dir, mode)
    offset2qid = inverse_map(qmap_path)
    offset2pid = inverse_map(pmap_path)
    prefix = "D" if dataset == "doc" else ""
    n = 0
    with contextlib.ExitStack() as stack:
        files = [(p, stack.enter_context(atomic_write(p))) for p in outputs]
        lines = iter_rank_lines(input_path, offsets=True)
        for lineno, qoff, poff, rank in tqdm(lines, desc="cvt_back", unit=" lines"):
            if qoff not in offset2qid:
                raise data_error(input_path, lineno, f"query offset {qoff} is not in {qmap_path} "
                                 f"(is this a --mode {mode} run of this preprocess dir?)")
            if poff not in offset2pid:
                raise data_error(input_path, lineno, f"passage offset {poff} is not in {pmap_path}")
            qid, pid = offset2qid[qoff], f"{prefix}{offset2pid[poff]}"
            for path, f in files:
                if path.endswith(".trec"):
                    f.write(f"{qid} Q0 {pid} {rank} {-rank} {tag}\n")
                else:
                    f.write(f"{qid}\t{pid}\t{rank}\n")
            n += 1
        if n == 0:
            raise data_error(input_path, None, "no ranked lines (empty rank file)")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input_dir", type=dir_path, required=True)
    parser.add_argument("--preprocess_dir", type=dir_path, required=True)
    parser.add_argument("--mode", type=str, choices=list(MODES), required=True)
    parser.add_argument("--output_dir", type=dir_path, required=True)
    parser.add_argument("--dataset", type=str, choices=["passage", "doc"], required=True)
    parser.add_argument("--output_format", choices=["tsv", "trec", "both"], default="tsv",
                        help="tsv: <mode>.rank.tsv (default); trec: <mode>.rank.trec; both")
    parser.add_argument("--run_tag", default="DRhard", help="tag column of TREC lines")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    input_path = rank_path(args.input_dir, args.mode)
    for path in [input_path] + map_paths(args.preprocess_dir, args.mode):
        if os.path.isdir(path):
            parser.error(f"{path} is a directory, expected a file")
    outputs = output_paths(args.output_dir, args.mode, args.output_format)
    existing = [p for p in outputs if os.path.lexists(p)]
    if existing:
        raise DataError(f"{existing[0]} already exists; cvt_back.py does not overwrite "
                        "(remove it or choose another --output_dir)")
    with naming_output(outputs[0]):  # a full disk names the output
        n = convert(input_path, args.preprocess_dir, args.mode, args.dataset, outputs, args.run_tag)
    print(f"wrote {n} lines to {', '.join(outputs)}", file=sys.stderr)
    return 0


def console() -> int:
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
