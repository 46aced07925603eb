"""HF -> trainer -> HF converters: bit-identical round trips, logit parity, clear failures."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import REPO
from safetensors.torch import load_file

from neox.checkpoint.files import HFWeights
from neox.cli.make_stand_in_codellama import make
from neox.interop import (
    convert_codellama,
    export_hf,
)
from neox.model import partition

TOOLS = os.path.join(REPO, "tools")


def tiny_hf(path, vocab=101, theta=1e6, dtype="fp32", seed=0):
    """GQA 6 query / 2 KV heads, an odd vocab (TP=2 must pad it), theta 1e6."""
    make(str(path), layers=2, hidden=48, heads=6, kv_heads=2, intermediate=96, vocab=vocab,
         theta=theta, max_positions=64, seed=seed, dtype=dtype)
    return str(path)


def hf_tensors(d):
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, f)))
    return out


def cli(script, *args):
    return subprocess.run([sys.executable, os.path.join(TOOLS, script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("tp", [1, 2])
def test_round_trip_is_bit_identical(tmp_path, tp):
    """fp32 source, converter defaults (--dtype auto keeps fp32)."""
    src = tiny_hf(tmp_path / "hf")
    ckpt, back = str(tmp_path / "neox"), str(tmp_path / "back")
    assert convert_codellama.main(["--hf-dir", src, "--out", ckpt, "--tp", str(tp), "--reference-tokens", "16"]) == 0
    meta = json.load(open(os.path.join(ckpt, "neox_conversion.json")))
    assert meta["dtype"] == "fp32"
    assert meta["vocab_size"] == 101 and meta["padded_vocab_size"] == (102 if tp == 2 else 101)
    assert meta["rope_theta_source"] == meta["rope_theta"] == 1e6
    rank0 = torch.load(os.path.join(ckpt, "global_step0", "mp_rank_00_model_states.pt"), weights_only=False)
    # fused q (48 rows), k (16) and v (16), each split over the ranks
    assert rank0["module"]["layers.0.attention.qkv_proj.weight"].shape == (80 // tp, 48)
    assert rank0["module"]["embed.weight"].shape == ((102 if tp == 2 else 101) // tp, 48)

    assert export_hf.main(["--ckpt", ckpt, "--out", back]) == 0
    a, b = hf_tensors(src), hf_tensors(back)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    ca = transformers.AutoConfig.from_pretrained(src).to_dict()
    cb = transformers.AutoConfig.from_pretrained(back).to_dict()
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "rope_parameters", "max_position_embeddings",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "head_dim"):
        assert ca[key] == cb[key], key
    model, info = transformers.LlamaForCausalLM.from_pretrained(back, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys


def test_bf16_round_trip_and_theta_change_is_recorded(tmp_path):
    src = tiny_hf(tmp_path / "hf", dtype="bf16")
    ckpt, back = str(tmp_path / "neox"), str(tmp_path / "back")
    assert convert_codellama.main(["--hf-dir", src, "--out", ckpt, "--tp", "2", "--rope-theta", "10000",
                                   "--reference-tokens", "16"]) == 0
    meta = json.load(open(os.path.join(ckpt, "neox_conversion.json")))
    assert meta["dtype"] == "bf16"  # --dtype auto
    assert meta["rope_theta_source"] == 1e6 and meta["rope_theta"] == 1e4
    assert meta["neox_model_keys"]["rotary_emb_base"] == 1e4
    assert export_hf.main(["--ckpt", ckpt, "--out", back]) == 0
    a, b = hf_tensors(src), hf_tensors(back)
    assert all(b[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a)
    cfg = json.load(open(os.path.join(back, "config.json")))
    assert cfg["rope_theta"] == 1e4 and cfg["rope_parameters"]["rope_theta"] == 1e4


def test_auto_dtype_follows_the_tensors_and_names_a_disagreement(tmp_path, capsys):
    src = tiny_hf(tmp_path / "hf")  # fp32 tensors
    cfg = json.load(open(os.path.join(src, "config.json")))
    key = "dtype" if "dtype" in cfg else "torch_dtype"  # transformers 5 writes dtype
    json.dump({**cfg, key: "bfloat16"}, open(os.path.join(src, "config.json"), "w"))
    ckpt = str(tmp_path / "neox")
    assert convert_codellama.main(["--hf-dir", src, "--out", ckpt, "--tp", "1", "--reference-tokens", "0"]) == 0
    assert (f"warning: {src}/config.json says torch_dtype bfloat16 but the tensors are float32; "
            "following the tensors") in capsys.readouterr().err
    assert json.load(open(os.path.join(ckpt, "neox_conversion.json")))["dtype"] == "fp32"

    half, ckpt, back = str(tmp_path / "half"), str(tmp_path / "neox16"), str(tmp_path / "back16")
    transformers.LlamaForCausalLM.from_pretrained(src, dtype=torch.float16).save_pretrained(half)
    assert convert_codellama.main(["--hf-dir", half, "--out", ckpt, "--tp", "2", "--reference-tokens", "0"]) == 0
    err = capsys.readouterr().err
    assert "tensors are float16; converting to fp32, which holds them exactly" in err and "says" not in err
    assert export_hf.main(["--ckpt", ckpt, "--out", back]) == 0
    a, b = hf_tensors(half), hf_tensors(back)
    assert all(b[k].dtype == torch.float32 and torch.equal(a[k].float(), b[k]) for k in a)


@pytest.mark.processes
@pytest.mark.parametrize("tp,dtype", [(2, []), (1, ["--dtype", "bf16"])])
def test_verify_passes_and_catches_a_corrupted_checkpoint(tmp_path, tp, dtype):
    """fp32 sources: converter defaults at TP=2, and a deliberate bf16 conversion at TP=1 (compared
    with the HF weights rounded to bf16, so the default tolerance holds for both)."""
    src = tiny_hf(tmp_path / "hf", seed=tp)
    ckpt = str(tmp_path / "neox")
    r = cli("convert_codellama.py", "--hf-dir", src, "--out", ckpt, "--tp", str(tp), *dtype,
            "--verify", "--reference-tokens", "16")
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("verify_conversion.py", "--hf-dir", src, "--ckpt", ckpt)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("verify: max_abs_logit_diff=") and float(last.split("=")[1]) < 1e-4
    assert "layer 1: max_abs_diff=" in r.stdout
    notes = [line for line in r.stdout.splitlines() if line.startswith("note: the checkpoint holds bfloat16")]
    if dtype:  # the rounding is what an fp32 comparison would have failed on
        assert len(notes) == 1 and float(notes[0].rsplit(" ", 1)[1].rstrip(")")) > 1e-4, notes
    else:
        assert notes == []
    # corrupt one tensor of the last rank: verification must fail
    path = os.path.join(ckpt, "global_step0", f"mp_rank_{tp - 1:02d}_model_states.pt")
    state = torch.load(path, weights_only=False)
    w = state["module"]["layers.1.mlp.down_proj.weight"]
    w[0, :5] += 0.05
    torch.save(state, path)
    r = cli("verify_conversion.py", "--hf-dir", src, "--ckpt", ckpt)
    assert r.returncode == 1
    assert float(r.stdout.strip().splitlines()[-1].split("=")[1]) > 1e-4
    assert "exceeds tolerance" in r.stderr


@pytest.mark.processes
def test_reference_loss_is_the_source_models_loss(tmp_path, toy_data):
    from neox.interop.reference import reference_tokens, streamed_hf_loss

    hf = str(tmp_path / "hf")
    make(hf, tokenizer=os.path.join(toy_data, "tokenizer.model"), seed=5)
    tokens = reference_tokens(hf, 64, 3001)
    assert tokens[0] == 1 and len(tokens) == 64  # BOS + the reference text
    model = transformers.LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    x = torch.tensor([tokens])
    with torch.no_grad():
        expected = model(x, labels=x).loss.item()
    weights = HFWeights(hf)
    assert streamed_hf_loss(weights, tokens) == pytest.approx(expected, abs=1e-5)
    assert streamed_hf_loss(weights, tokens, rope_theta=1e4) != pytest.approx(expected, abs=1e-4)


@pytest.mark.processes
def test_converter_errors_are_one_line(tmp_path):
    src = tiny_hf(tmp_path / "hf")
    out = str(tmp_path / "out")
    r = cli("convert_codellama.py", "--hf-dir", str(tmp_path / "nope"), "--out", out, "--tp", "2")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: model directory not found")
    r = cli("convert_codellama.py", "--hf-dir", src, "--out", out, "--tp", "3")
    assert r.returncode == 1 and "--tp 3 does not divide num_kv_heads = 2" in r.stderr
    cfg = json.load(open(os.path.join(src, "config.json")))
    json.dump({**cfg, "mlp_bias": True}, open(os.path.join(src, "config.json"), "w"))
    r = cli("convert_codellama.py", "--hf-dir", src, "--out", out, "--tp", "1")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        f"error: {src}/config.json: mlp_bias = True: biases in the MLP is not supported")
    os.remove(os.path.join(src, "config.json"))
    r = cli("convert_codellama.py", "--hf-dir", src, "--out", out, "--tp", "1")
    assert r.returncode == 1 and "missing file:" in r.stderr and "config.json" in r.stderr
    assert not os.path.exists(out)  # nothing left behind by any failure
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


@pytest.mark.processes
def test_converter_refuses_to_overwrite(tmp_path):
    src = tiny_hf(tmp_path / "hf")
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    r = cli("convert_codellama.py", "--hf-dir", src, "--out", str(out), "--tp", "1")
    assert r.returncode == 1 and "exists and is not empty" in r.stderr
    assert (out / "precious.txt").read_text() == "keep me"


class FakeWeights:
    """Shapes of a real Code Llama checkpoint, tensors on the meta device (no memory)."""

    def __init__(self, layers, hidden, heads, kv_heads, inter, vocab):
        hd = hidden // heads
        self.dir = "fake"
        self.shapes = {}
        for hf in partition.expected_hf_names(layers):
            if hf in ("model.embed_tokens.weight", "lm_head.weight"):
                s = (vocab, hidden)
            elif "q_proj" in hf:
                s = (heads * hd, hidden)
            elif "k_proj" in hf or "v_proj" in hf:
                s = (kv_heads * hd, hidden)
            elif "o_proj" in hf:
                s = (hidden, heads * hd)
            elif "gate_proj" in hf or "up_proj" in hf:
                s = (inter, hidden)
            elif "down_proj" in hf:
                s = (hidden, inter)
            else:
                s = (hidden,)
            self.shapes[hf] = s

    def shape(self, name):
        return self.shapes[name]

    def get(self, name):
        return torch.empty(self.shapes[name], device="meta")

    def get_slice(self, name, dim, start, end):
        return torch.empty(self.shapes[name], device="meta").narrow(dim, start, end - start)


@pytest.mark.parametrize("model,tp", [("7b", 2), ("7b", 8), ("34b", 2), ("34b", 8)])
def test_code_llama_shard_shapes(model, tp):
    layers, hidden, heads, kv, inter, vocab = {"7b": (32, 4096, 32, 32, 11008, 32016),
                                               "34b": (48, 8192, 64, 8, 22016, 32000)}[model]
    w = FakeWeights(layers, hidden, heads, kv, inter, vocab)
    names = partition.expected_names(layers)
    for rank in (0, tp - 1):
        s = convert_codellama.rank_state(w, names, rank, tp, vocab, vocab, torch.bfloat16)
        hd = 128
        assert s["embed.weight"].shape == (vocab // tp, hidden)
        assert s["lm_head.weight"].shape == (vocab // tp, hidden)
        assert s["layers.0.attention.qkv_proj.weight"].shape == ((heads + 2 * kv) // tp * hd, hidden)
        assert s["layers.5.attention.o_proj.weight"].shape == (hidden, heads // tp * hd)
        assert s["layers.5.mlp.gate_up_proj.weight"].shape == (2 * inter // tp, hidden)
        assert s["layers.5.mlp.down_proj.weight"].shape == (hidden, inter // tp)
        assert s["final_norm.weight"].shape == (hidden,)
        assert len(s) == 6 * layers + 3
    # 34B at TP=8: one KV head per rank, serving its 8 query heads
    if model == "34b" and tp == 8:
        assert kv // tp == 1 and heads // tp == 8
