from setuptools import find_packages, setup

setup(
    name="drhard",
    version="0.1.0",
    description="STAR and ADORE dense retrieval training (Zhan et al., SIGIR 2021), faithful to DRhard",
    packages=find_packages(include=["drhard", "drhard.*"]),
    # one console script per program of drhard.commands (the original scripts call the same main)
    entry_points={"console_scripts": [
        "drhard-preprocess = drhard.commands.preprocess:console",
        "drhard-star-bm25-hardneg = drhard.commands.star_bm25_hardneg:console",
        "drhard-star-train = drhard.commands.star_train:console",
        "drhard-star-prepare-hardneg = drhard.commands.star_prepare_hardneg:console",
        "drhard-star-inference = drhard.commands.star_inference:console",
        "drhard-adore-train = drhard.commands.adore_train:console",
        "drhard-adore-inference = drhard.commands.adore_inference:console",
        "drhard-cvt-back = drhard.commands.cvt_back:console",
        "drhard-msmarco-eval = drhard.commands.msmarco_eval:console",
        "drhard-quickstart = drhard.commands.quickstart:console",
        "drhard-reproduce = drhard.commands.reproduce:console",
        "drhard-selfcheck = drhard.selfcheck:console",
    ]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "transformers>=4.40",
        "accelerate>=0.26",
        "tokenizers>=0.15",
        "tiktoken>=0.5",
        "safetensors",
        "numpy",
        "tqdm",
        "tensorboard",
        "pytrec_eval-terrier",
        "bm25s",
    ],
    # Exactly one faiss per install: faiss-cpu and faiss-gpu ship the same `faiss` package, so an
    # install that pulled both would leave whichever unpacked last.  `test` pulls none; pick
    # `[cpu,test]` (CPU machines, CI) or `[gpu,test]` (NVIDIA GPUs, CUDA 12, Python >= 3.10).
    extras_require={
        "cpu": ["faiss-cpu>=1.7.4"],
        "gpu": ["faiss-gpu>=1.14.3"],
        "test": ["pytest", "hypothesis"],
    },
)
