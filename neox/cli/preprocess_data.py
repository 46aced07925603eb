#!/usr/bin/env python
"""Tokenize documents (JSON lines, Parquet, Hugging Face datasets) into a megatron-core indexed dataset (.bin/.idx).

    python tools/preprocess_data.py --input PATH [PATH ...] --output-prefix PREFIX
        --tokenizer-model FILE [--workers N] [--append-eod] [--prepend-bos | --no-prepend-bos]
        [--text-key text] [--allow-empty]

FILE is a SentencePiece .model or a Hugging Face tokenizer.json (told apart by content: a JSON
object is a tokenizer.json), whose tokenizer_config.json beside it names EOS and BOS. Without
--prepend-bos/--no-prepend-bos a document starts with BOS exactly when the model's tokenizer adds
one (never with SentencePiece, whose encode adds none).

PATH is a file, a directory (searched recursively) or a glob. `.jsonl`, `.jsonl.zst` and
`.jsonl.gz` are read here, so errors name the line; other lm_dataformat archives
(`.jsonl.zst.tar`, `.json.zst`, `.json.gz`, ...) are read with lm_dataformat.Reader, and
their error "line" is the document number. `.parquet` files (a hub snapshot folder: its Parquet
files under config and split folders) are streamed row group by row group, only the text column
read; a folder written by a Hugging Face dataset's save_to_disk is read from its Arrow files. A
null or empty text in Parquet or Arrow is skipped and counted (one warning line). Files are taken
in argument order, sorted within a directory or glob. One json line or row is one document; the
text is under --text-key (--jsonl-key is the same option). Outputs (GPT-NeoX naming):

    PREFIX_text_document.bin / .idx        MMIDIDX files, readable by megatron IndexedDataset
    PREFIX_text_document.manifest.json     tokenizer hash, eod policy, per-input counts

Each input file is tokenized by one worker into its own shard under
PREFIX_text_document.shards/; the shards are then merged in input order. A rerun with the
same arguments reuses finished shards, so a crash loses only the files in progress. The
output is byte-identical whatever --workers is. Paths inside the manifest are relative to
the manifest's directory, so a tokenized tree can be moved as a whole.
"""

import argparse
import sys
from collections.abc import Sequence

from neox.data.preprocess import PreprocessError, preprocess


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", nargs="+", required=True, help="files, directories or globs")
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--tokenizer-model", required=True,
                   help="SentencePiece .model, or Hugging Face tokenizer.json with tokenizer_config.json beside it")
    p.add_argument("--append-eod", action="store_true", help="append the tokenizer's EOS id to each document")
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=None,
                   help="prepend the tokenizer's BOS id to each document (default: when the tokenizer adds it)")
    p.add_argument("--text-key", "--jsonl-key", dest="text_key", default="text",
                   help="the key of a JSON line or the Parquet/Arrow column that holds the text (default: text)")
    p.add_argument("--workers", type=int, default=1, help="processes (one input file each)")
    p.add_argument("--allow-empty", action="store_true",
                   help="skip empty input files (recorded with 0 documents) instead of failing")
    args = p.parse_args(argv)
    try:
        m = preprocess(args.input, args.output_prefix, args.tokenizer_model, append_eod=args.append_eod,
                       prepend_bos=args.prepend_bos, key=args.text_key, workers=args.workers,
                       allow_empty=args.allow_empty)
    except (PreprocessError, OSError) as e:  # OSError: e.g. disk full while writing
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted (finished shards are kept; rerun to resume)", file=sys.stderr)
        sys.exit(130)
    skipped = [f"{m[key]} {what}" for key, what in (("skipped_null_texts", "null texts"),
                                                     ("skipped_empty_documents", "empty documents")) if m[key]]
    if skipped:
        print(f"warning: skipped {' and '.join(skipped)} (counted per input in "
              f"{args.output_prefix}_{args.text_key}_document.manifest.json)", file=sys.stderr)
    print(f"wrote {args.output_prefix}_{args.text_key}_document.{{bin,idx}}: "
          f"{m['documents']} documents, {m['tokens']} tokens ({m['reused_shards']} shards reused)")


if __name__ == "__main__":
    main()
