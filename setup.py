from setuptools import find_packages, setup

EVAL = ["lm-eval[hf,math]==0.4.13", "math-verify==0.9.0"]  # [math] pins antlr4 4.11 and its math-verify grammar

setup(
    name="llemma-neox",
    version="0.1.0",
    description="GPT-NeoX-style continued pretraining of Llama models on math (the Llemma recipe)",
    packages=find_packages(include=["neox", "neox.*", "llemma_eval", "llemma_eval.*"]),
    package_data={"llemma_eval": ["tasks/*.yaml", "tasks/*.txt"]},
    python_requires=">=3.10",
    install_requires=[
        # CPU CI installs torch==2.13.0 first (see README); GPU users bring their own CUDA torch.
        "torch>=2.5",
        "deepspeed==0.19.8",
        "megatron-core==0.16.1",
        "sentencepiece>=0.2",
        "transformers>=4.45",
        "protobuf>=4",  # transformers needs it to read a SentencePiece tokenizer.model
        "safetensors>=0.4",
        "zstandard>=0.22",
        "lm-dataformat>=0.0.20",
        "pyyaml>=6",
        "tqdm>=4.60",
        "numpy>=1.24",
    ],
    extras_require={
        # lm-eval's math extra pins antlr4 4.11 and asks for math-verify's matching grammar build
        # (its antlr4 4.13 build clashes); naming that extra here too trips pip 23's extra spelling.
        # matplotlib (and its pillow) for the plot tests.
        "test": ["pytest>=8", "matplotlib>=3.8,<4", *EVAL],
        "eval": EVAL,
        "eval-gpu": [*EVAL, "vllm==0.33.0"],
        "plot": ["matplotlib>=3.8,<4"],  # tools/plot_run.py, tools/sweep.py compare
        "gpu": ["flash-attn>=2.5"],
        # bench/train_throughput.py's LitGPT peer; on its own venv: litgpt caps huggingface-hub
        # below 1.4, so pip settles on an older transformers 5 there than the test venv gets
        "bench": ["litgpt==0.5.13"],
        "tensorboard": ["tensorboard>=2.14"],
        "wandb": ["wandb>=0.16"],
    },
)
