#!/usr/bin/env python
"""Seconds of the pre-flight .idx/.bin check (neox.data.check.check_index) at Proof-Pile-2's
scale: a synthetic index of 15M documents (megatron-core's format, written with numpy) over a
sparse .bin of the matching size. Prints one JSON object.

    python bench/data_check_scale.py [--documents 15000000]
"""

import argparse
import json
import os
import struct
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from neox.data.check import _INDEX_HEADER, check_index  # noqa: E402

UINT16_CODE = 8  # megatron-core's dtype code for uint16


def write_index(prefix: str, documents: int, seed: int = 0) -> int:
    lengths = np.random.default_rng(seed).integers(200, 8000, documents, dtype=np.int32)
    pointers = np.zeros(documents, dtype=np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * 2, out=pointers[1:])
    with open(prefix + ".idx", "wb") as f:
        f.write(_INDEX_HEADER + struct.pack("<QBQQ", 1, UINT16_CODE, documents, documents + 1))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(np.arange(documents + 1, dtype=np.int64).tobytes())
    size = int(pointers[-1] + lengths[-1] * 2)
    with open(prefix + ".bin", "wb") as f:
        f.truncate(size)  # sparse: the check reads only its size
    return size


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--documents", type=int, default=15_000_000)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        prefix = os.path.join(d, "synthetic_text_document")
        write_index(prefix, args.documents)
        idx_bytes = os.path.getsize(prefix + ".idx")
        t0 = time.perf_counter()
        info = check_index(prefix)
        seconds = time.perf_counter() - t0
    print(json.dumps({"documents": info["documents"], "tokens": info["tokens"], "idx_bytes": idx_bytes,
                      "check_seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
