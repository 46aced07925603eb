"""The command-line programs: ``python deepy.py train.py ...`` and ``python tools/X.py ...`` in a
checkout, ``llemma-neox train ...`` and ``llemma-neox X ...`` from an installed wheel. Both forms
run the same ``main(argv)``; the table below is the one list of them (modules are imported only
when their command runs: importing this package costs nothing)."""

import importlib
import sys
from collections.abc import Sequence

# command -> (module with main(argv), one line of help); the command is the tools/ file's name
COMMANDS = {
    "train": ("neox.cli.deepy", "launch training: llemma-neox train CONFIG.yml = python deepy.py train.py CONFIG.yml"),
    "convert_codellama": ("neox.interop.convert_codellama", "Hugging Face Llama -> trainer checkpoint at TP N"),
    "verify_conversion": ("neox.interop.verify_conversion", "compare a trainer checkpoint's logits with transformers'"),
    "export_hf": ("neox.interop.export_hf", "trainer checkpoint -> Hugging Face directory"),
    "convert_neox": ("neox.interop.convert_neox", "GPT-NeoX checkpoint -> trainer checkpoint"),
    "export_neox": ("neox.interop.export_neox", "trainer checkpoint -> GPT-NeoX checkpoint"),
    "preprocess_data": ("neox.cli.preprocess_data", "JSON lines / Parquet / HF datasets -> tokenized .bin/.idx"),
    "prepare_proof_pile_2": ("neox.cli.prepare_proof_pile_2", "tokenize Proof-Pile-2's components for the recipe"),
    "prepare_mixture": ("neox.cli.prepare_mixture", "a mixture recipe: dedup, tokenize, decontaminate, config"),
    "build_index_cache": ("neox.cli.build_index_cache", "build the trainer's dataset index caches ahead of a run"),
    "check_overlap": ("neox.cli.check_overlap", "n-gram overlap of test sets with training data"),
    "dedup": ("neox.cli.dedup", "near-duplicate removal before tokenization (MinHash LSH)"),
    "run_eval": ("llemma_eval.cli", "evaluate a Hugging Face model (MATH, GSM8k, perplexity, ...)"),
    "sweep": ("neox.cli.sweep", "mixture sweeps: short runs per mixture, then compare"),
    "plot_run": ("neox.cli.plot_run", "plot a run's metrics (PNG / HTML)"),
    "make_toy_data": ("neox.cli.make_toy_data", "the toy corpus, tokenizer and tokenized splits (data/toy)"),
    "make_toy_corpus": ("neox.cli.make_toy_corpus", "the toy corpus only"),
    "train_toy_tokenizer": ("neox.cli.train_toy_tokenizer", "the toy SentencePiece tokenizer only"),
    "make_stand_in_codellama": ("neox.cli.make_stand_in_codellama", "a tiny random Hugging Face Llama"),
    "toy_pipeline": ("neox.cli.toy_pipeline", "the whole pipeline at toy scale on CPU"),
}
ALIASES = {"evaluate": "run_eval", "deepy": "train"}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return ("usage: llemma-neox COMMAND [ARGS ...]   (llemma-neox COMMAND --help for its options)\n\n"
            "commands (each also runs from a checkout as python tools/COMMAND.py, train as deepy.py):\n"
            + "\n".join(lines) + "\n")


def resolve(name: str) -> str | None:
    name = name.replace("-", "_")
    name = ALIASES.get(name, name)
    return name if name in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0 if argv else 2
    name = resolve(argv[0])
    if name is None:
        print(f"error: unknown command '{argv[0]}'\n\n{usage()}", end="", file=sys.stderr)
        return 2
    rest = argv[1:]
    if name == "train":
        rest = ["train.py", *rest]  # deepy's first argument: the packaged trainer where no train.py file is
    sys.argv[0] = f"llemma-neox {name}"  # argparse's usage lines name the command the user typed
    from neox.errors import one_line_errors

    with one_line_errors(f"llemma-neox {name}"):
        status = importlib.import_module(COMMANDS[name][0]).main(rest)
    return status if isinstance(status, int) else 0
