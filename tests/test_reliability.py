"""The reliability fault table (README, "Checkpoints and reliability"): each fault reproduced on
CPU and the trainer's answer asserted (error text naming the file or key, exit status, a time
bound for hangs and orphans, complete checkpoints kept). Pure checks run in-process; the few
DeepSpeed launches each carry several faults."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from neox.data_check import HEADER_BYTES, DataError, check_index, check_tokenizer

TOY = os.path.join(REPO, "data", "toy")
ARXIV = "arxiv_train_text_document"


def copy_component(toy_data, dest, name=ARXIV, manifest=True):
    os.makedirs(dest, exist_ok=True)
    exts = (".bin", ".idx", ".manifest.json") if manifest else (".bin", ".idx")
    for ext in exts:
        shutil.copy(os.path.join(toy_data, "tokenized", name + ext), os.path.join(dest, name + ext))
    return os.path.join(dest, name)


def deepy(tmp_path, *overrides, env=None, popen=False, run_dir="run"):
    cmd = [sys.executable, "deepy.py", "train.py", "llemma_configs/smoke.yml", "-o", "precision=fp32",
           "-o", "eval_iters=0", "-o", f"data_cache_dir={tmp_path}/cache", "-o", f"log_dir={tmp_path}/{run_dir}/logs",
           "-o", f"save={tmp_path}/{run_dir}/ckpt", "-o", "lr_decay_iters=40", "-o", "warmup_iters=2"]
    for o in overrides:
        cmd += ["-o", o]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, **(env or {})}, start_new_session=True)
    if popen:
        return p
    out, _ = p.communicate(timeout=600)
    return p.returncode, out


def error_lines(out):
    return [line for line in out.splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------------------- data before step 1


def test_idx_and_bin_faults_name_the_file(toy_data, tmp_path):
    prefix = copy_component(toy_data, tmp_path / "d")
    info = check_index(prefix)
    assert info["sequences"] == 329 and info["tokens"] == 253907 and info["dtype"] == "uint16"
    idx, binf = prefix + ".idx", prefix + ".bin"
    good_idx, good_bin = open(idx, "rb").read(), open(binf, "rb").read()
    n = info["sequences"]

    def garbled(offset, value, dtype):
        data = bytearray(good_idx)
        data[offset: offset + np.dtype(dtype).itemsize] = np.array([value], dtype=dtype).tobytes()
        open(idx, "wb").write(bytes(data))
        with pytest.raises(DataError) as e:
            check_index(prefix)
        open(idx, "wb").write(good_idx)
        return str(e.value)

    open(binf, "wb").write(good_bin[:-100])  # truncated .bin
    with pytest.raises(DataError, match=rf"{binf}: 507714 bytes, but {idx} indexes 507814 bytes \(truncated .bin\)"):
        check_index(prefix)
    open(binf, "wb").write(good_bin)
    # a garbled length (the one that made megatron write a 3 GB index cache) and a garbled pointer
    assert garbled(HEADER_BYTES + 4 * 7, 1 << 30, np.int32).startswith(f"{idx}: sequence 8 starts at byte")
    assert garbled(HEADER_BYTES + 4 * 7, -5, np.int32) == f"{idx}: sequence 7 has negative length -5: the index is garbled"
    assert "the index pointers are garbled" in garbled(HEADER_BYTES + 4 * n + 8 * 3, 12345, np.int64)
    open(idx, "wb").write(good_idx[:-8])  # truncated .idx
    with pytest.raises(DataError, match=rf"{idx}: {len(good_idx) - 8} bytes, but its header promises 329 sequences"):
        check_index(prefix)
    open(idx, "wb").write(b"garbage")
    with pytest.raises(DataError, match=rf"{idx}: not a megatron .idx file"):
        check_index(prefix)


def test_tokenizer_of_the_data_must_be_the_runs(toy_data, tmp_path):
    prefix = copy_component(toy_data, tmp_path / "d")
    tok = os.path.join(toy_data, "tokenizer.model")
    assert check_tokenizer(prefix, tok, 3001, False) is None
    other = tmp_path / "other.model"
    other.write_bytes(open(tok, "rb").read() + b"\0")  # another tokenizer file (another hash)
    with pytest.raises(DataError) as e:
        check_tokenizer(prefix, str(other), 3001, False)
    assert str(e.value).startswith(f"{prefix}.bin was tokenized with ../tokenizer.model (vocabulary 3001, sha256 fbc6483b73b4)")
    assert f"but vocab_file is {other} (vocabulary 3001" in str(e.value)
    with pytest.raises(DataError, match="vocabulary 3001, sha256 fbc6483b73b4.*vocabulary 32000"):
        check_tokenizer(prefix, tok, 32000, False)
    os.remove(prefix + ".manifest.json")
    with pytest.raises(DataError, match=rf"{prefix}.manifest.json not found: .* set data_without_manifest: true"):
        check_tokenizer(prefix, tok, 3001, False)
    assert "is not checked against" in check_tokenizer(prefix, tok, 3001, True)


def test_deepy_refuses_bad_data_before_spawning(toy_data, tmp_path):
    """Garbled lengths: one error line naming the .idx, exit 1, nothing spawned, no index cache."""
    prefix = copy_component(toy_data, tmp_path / "d")
    data = bytearray(open(prefix + ".idx", "rb").read())
    pointer2, pointer3 = np.frombuffer(data, np.int64, 2, HEADER_BYTES + 4 * 329 + 16).tolist()
    data[HEADER_BYTES + 8: HEADER_BYTES + 12] = np.array([1 << 30], dtype=np.int32).tobytes()
    open(prefix + ".idx", "wb").write(bytes(data))
    t0 = time.time()
    code, out = deepy(tmp_path, f"train_data_paths=[{prefix}]", "train_data_weights=[1]")
    assert code == 1 and error_lines(out) == [
        f"error: {prefix}.idx: sequence 3 starts at byte {pointer3}, expected {pointer2 + 2 ** 31}: the index "
        "pointers are garbled"], out
    assert "deepy: 2 processes" not in out and time.time() - t0 < 120
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "ckpt").exists()


def test_token_ids_beyond_the_vocabulary_stop_the_run_naming_samples_and_file(toy_data, tmp_path):
    """No manifest (data_without_manifest: true) and ids >= 3001 in the .bin: the on-device check
    stops step 1 with exit 1, naming the global samples and the data file; nothing is saved."""
    prefix = copy_component(toy_data, tmp_path / "d", manifest=False)
    tokens = np.fromfile(prefix + ".bin", dtype=np.uint16)
    tokens[::100] = 3500  # as if tokenized with a larger vocabulary: in every sample of 129 tokens
    tokens.tofile(prefix + ".bin")
    code, out = deepy(tmp_path, f"train_data_paths=[{prefix}]", "train_data_weights=[1]", "data_without_manifest=true",
                      "train_iters=4", "checkpoint_factor=1")
    assert code == 1, out[-3000:]
    assert f"warning: {prefix}.manifest.json not found" in out
    errors = error_lines(out)
    assert len(errors) == 1 and errors[0].startswith(
        "error: step 1: token ids outside the vocabulary (0..3000) in global samples [0, "), out[-3000:]
    samples = json.loads(errors[0].split("global samples ")[1].split("]")[0] + "]")
    assert samples == list(range(8))  # the whole first global batch
    assert f"from data file {prefix}.bin:" in errors[0]
    assert not list((tmp_path / "run" / "ckpt").glob("global_step*"))
