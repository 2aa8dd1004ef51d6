"""The full-scale recipe: reproduce the paper's table on MS MARCO, command by command.

    python reproduce.py --data_type passage --gpus 4 --dry_run    # print every command, in order
    python reproduce.py --data_type passage --gpus 4              # run them (days on GPUs; see README)

The commands are the ones in README.md ("Reproducing the paper at full scale"),
which lists the expected output after each.  --gpus picks the device flags:
0 = CPU only (no --fp16, CPU faiss), 1 = model and index share one GPU (needs
~40 GB for the 26 GB passage index), 2 = model on GPU 0 and index on GPU 1,
4 = index sharded over GPUs 1-3 (the original README's layout).  STAR and the
warmups train on GPU 0 alone, as in the paper (CUDA_VISIBLE_DEVICES=0 when
--gpus > 1), with the paper's schedule: 100 epochs planned, stopped at step
50,000 (--stop_at_step 50000; --max_steps 50000 would decay the rate to 0 there).
--rows limits the run to some rows of the table.
"""
import argparse
import os
import subprocess
import sys
from typing import List

try:
    import drhard  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from drhard.io import qrel_name
from drhard.rawdata import INPUT_FILES

ROWS = ("inbatch", "random", "star", "adore-inbatch", "adore-random", "adore-star")


def commands(data_type: str, gpus: int, rows=ROWS) -> List[str]:
    doc = data_type == "doc"
    d = f"./data/{data_type}"
    max_doc = 512 if doc else 256
    train_doc = 512 if doc else 120
    k = " 100" if doc else ""
    fp16 = " --gradient_checkpointing --fp16" if gpus > 0 else ""
    # STAR and the warmups train on one GPU, as in the paper (star/train.py would use only one anyway)
    one_gpu = "CUDA_VISIBLE_DEVICES=0 " if gpus > 1 else ""
    # the paper's schedule: 100 epochs planned (linear decay from 1e-4), stopped at step 50k
    steps = "--stop_at_step 50000"
    faiss_inf = {0: "", 1: " --faiss_gpus 0", 2: " --faiss_gpus 1", 4: " --faiss_gpus 1 2 3"}[gpus]
    faiss_adore = {0: "", 1: " --model_gpu_index 0 --faiss_gpu_index 0",
                   2: " --model_gpu_index 0 --faiss_gpu_index 1",
                   4: " --model_gpu_index 0 --faiss_gpu_index 1 2 3"}[gpus]
    no_cuda_hard = " --not_faiss_cuda" if gpus == 0 else ""
    cmds = [
        f"bash download_data.sh --{data_type}",
        f"python preprocess.py --data_type {0 if doc else 1}",
        # the warmup model: BM25 negatives on roberta-base (or put ANCE's warmup checkpoint in {d}/warmup)
        f"python ./star/bm25_hardneg.py --data_type {data_type} --topk 200",
        f"{one_gpu}python ./star/train.py --do_train --max_query_length 24 --max_doc_length {train_doc} "
        f"--preprocess_dir {d}/preprocess --hardneg_path {d}/bm25_retrieve/hard.json --init_path roberta-base "
        f"--output_dir {d}/warmup --logging_dir {d}/warmup_log --optimizer_str lamb --learning_rate 1e-4 "
        f"{steps}{fp16}",
        f"python ./star/prepare_hardneg.py --data_type {data_type} --max_query_length 32 --max_doc_length {max_doc} "
        f"--mode dev --topk 200{no_cuda_hard}",
    ]

    def evaluate(name: str) -> List[str]:
        return [f"python ./msmarco_eval.py {d}/preprocess/{qrel_name('dev')} {d}/evaluate/{name}/dev.rank.tsv{k} --recall 100",
                f"python ./msmarco_eval.py {d}/preprocess/{qrel_name('test')} {d}/evaluate/{name}/test.rank.tsv{k} --ndcg"]

    def dense(name: str, model: str) -> List[str]:
        out = [f"python ./star/inference.py --data_type {data_type} --max_doc_length {max_doc} --mode {m} "
               f"--model_path {model} --output_dir {d}/evaluate/{name}{faiss_inf}" for m in ("dev", "test")]
        return out + evaluate(name)

    for row, neg in (("inbatch", "inbatch"), ("random", "random")):
        if row in rows or f"adore-{row}" in rows:
            cmds.append(f"{one_gpu}python ./star/train.py --do_train --max_query_length 24 "
                        f"--max_doc_length {train_doc} --preprocess_dir {d}/preprocess --negative_type {neg} --init_path roberta-base "
                        f"--output_dir {d}/{row}_train/models --logging_dir {d}/{row}_train/log "
                        f"--optimizer_str lamb --learning_rate 1e-4 {steps}{fp16}")
            cmds += dense(row, f"{d}/{row}_train/models")
    if "star" in rows or "adore-star" in rows:
        cmds.append(f"{one_gpu}python ./star/train.py --do_train --max_query_length 24 --max_doc_length {train_doc} "
                    f"--preprocess_dir {d}/preprocess --hardneg_path {d}/warmup_retrieve/hard.json "
                    f"--init_path {d}/warmup --output_dir {d}/star_train/models --logging_dir {d}/star_train/log "
                    f"--optimizer_str lamb --learning_rate 1e-4 {steps}{fp16}")
        cmds.append(f"mkdir -p {d}/trained_models && cp -r {d}/star_train/models {d}/trained_models/star")
        cmds += [f"python ./star/inference.py --data_type {data_type} --max_doc_length {max_doc} --mode {m}{faiss_inf}"
                 for m in ("dev", "test")]
        cmds += evaluate("star")
    for base in ("inbatch", "random", "star"):
        name = f"adore-{base}"
        if name not in rows:
            continue
        init = f"{d}/trained_models/star" if base == "star" else f"{d}/{base}_train/models"
        cmds.append(f"python ./adore/train.py --metric_cut 200 --init_path {init} "
                    f"--pembed_path {d}/evaluate/{base}/passages.memmap --model_save_dir {d}/{name}_train/models "
                    f"--log_dir {d}/{name}_train/log --preprocess_dir {d}/preprocess{faiss_adore}")
        cmds.append(f"mkdir -p {d}/trained_models && cp -r {d}/{name}_train/models/epoch-6 {d}/trained_models/{name}")
        cmds += [f"python ./adore/inference.py --model_dir {d}/trained_models/{name} --output_dir {d}/evaluate/{name} "
                 f"--preprocess_dir {d}/preprocess --mode {m} --dmemmap_path {d}/evaluate/{base}/passages.memmap"
                 + (faiss_inf if gpus else "") for m in ("dev", "test")]
        cmds += evaluate(name)
    if "adore-star" in rows:
        cmds.append(f"python ./cvt_back.py --input_dir {d}/evaluate/adore-star/ --preprocess_dir {d}/preprocess "
                    f"--output_dir {d}/official_runs/adore-star --mode dev --dataset {data_type}")
        qrels = f"{d}/dataset/{INPUT_FILES[data_type]['dev'][1]}"
        cmds.append(f"python ./msmarco_eval.py {qrels} {d}/official_runs/adore-star/dev.rank.tsv"
                    + (" doc" if doc else ""))
    return cmds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_type", default="passage", choices=["passage", "doc"])
    p.add_argument("--gpus", type=int, default=4, choices=[0, 1, 2, 4])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--dry_run", action="store_true", help="print the commands and exit")
    a = p.parse_args(argv)
    cmds = commands(a.data_type, a.gpus, a.rows)
    if a.dry_run:
        print("\n".join(cmds))
        return 0
    for i, cmd in enumerate(cmds, 1):
        print(f"[{i}/{len(cmds)}] {cmd}", flush=True)
        if subprocess.run(cmd, shell=True).returncode != 0:
            print(f"failed: {cmd}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
