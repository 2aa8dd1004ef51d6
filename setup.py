from setuptools import find_packages, setup

setup(
    name="drhard",
    version="0.1.0",
    description="STAR and ADORE dense retrieval training (Zhan et al., SIGIR 2021), faithful to DRhard",
    packages=find_packages(include=["drhard", "drhard.*"]),
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
