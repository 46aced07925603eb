"""GPT-NeoX checkpoints in (tools/convert_neox.py) and out (tools/export_neox.py).

The GPT-NeoX files here are written and read by straightforward code in this test that follows
GPT-NeoX's own layouts (its transformer.py attention/MLP and its checkpoint converters), not by
the tools' helpers, so a layout mistake in the tools cannot cancel out."""

import os
import shutil

import pytest
import torch
import transformers
import yaml
from conftest import tiny_cfg

from neox.interop import (
    convert_codellama,
    convert_neox,
    export_neox,
)
from neox.model import partition
from neox.model.hf_compat import shard_hf_weights

SEQ = 24
THETA = 10000.0


def make_hf(kv_heads, seed=0):
    """hidden 64, 8 query heads (head_dim 8), vocab 128, MLP 96, random norms."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=kv_heads, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=THETA,
        tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


# ----------------------------------------------------------------------------- independent GPT-NeoX writer


def neox_qkv(q, k, v, layout, n, hd):
    """One rank's fused query_key_value in GPT-NeoX's layouts (q, k, v: this rank's rows)."""
    H = q.shape[1]
    if layout == "per-rank":  # main since PR #1315: [q; k; v] per rank
        return torch.cat([q, k, v])
    # llemma branch: the rank's output viewed as [n, hd * (1 + 2 m/n)], split [hd, s, s] per query head
    # (per-head MHA is the case m == n: [q_h; k_h; v_h])
    s = k.shape[0] // n
    return torch.cat([q.view(n, hd, H), k.view(n, s, H), v.view(n, s, H)], 1).reshape(-1, H)


def neox_modules(hf, tp, rank, layout, mlp):
    """{module index: {name: tensor}} of one TP rank, from the HF state dict."""
    sd, c = hf.state_dict(), hf.config
    L, hd = c.num_hidden_layers, c.hidden_size // c.num_attention_heads
    n = c.num_attention_heads // tp

    def rows(t):
        return t.chunk(tp, 0)[rank].clone()

    def cols(t):
        return t.chunk(tp, 1)[rank].clone()

    mods = {0: {"word_embeddings.weight": rows(sd["model.embed_tokens.weight"])}}
    for i in range(L):
        p = f"model.layers.{i}."
        m = {"input_layernorm.scale": sd[p + "input_layernorm.weight"].clone(),
             "post_attention_layernorm.scale": sd[p + "post_attention_layernorm.weight"].clone(),
             "attention.query_key_value.weight": neox_qkv(rows(sd[p + "self_attn.q_proj.weight"]),
                                                          rows(sd[p + "self_attn.k_proj.weight"]),
                                                          rows(sd[p + "self_attn.v_proj.weight"]), layout, n, hd),
             "attention.dense.weight": cols(sd[p + "self_attn.o_proj.weight"])}
        gate, up, down = (sd[p + f"mlp.{x}_proj.weight"] for x in ("gate", "up", "down"))
        if mlp == "w123":
            m.update({"mlp.w1.weight": rows(gate), "mlp.w3.weight": rows(up), "mlp.w2.weight": cols(down),
                      "attention.rotary_emb.inv_freq": 1.0 / THETA ** (torch.arange(0, hd, 2).float() / hd)})
        else:  # main: linear1 = [up; gate] per rank
            m.update({"mlp.linear1.weight": torch.cat([rows(up), rows(gate)]), "mlp.linear2.weight": cols(down)})
        mods[i + 2] = m
    mods[L + 3] = {"norm.scale": sd["model.norm.weight"].clone()}
    mods[L + 4] = {"final_linear.weight": rows(sd["lm_head.weight"])}
    return mods


def write_neox(path, hf, tp, layout, mlp="linear1", pipeline=False, config=None, record_logits=True):
    """A GPT-NeoX save dir: latest, global_step7/{mp_rank_XX,layer_XX-model_XX}*.pt, configs/."""
    tag = os.path.join(path, "global_step7")
    os.makedirs(tag)
    logits = None
    if record_logits:  # checkpoint_validation_logits: tokens 0..seq-1, vocab-parallel per rank
        with torch.no_grad():
            logits = hf(torch.arange(SEQ)[None]).logits[0]
    for r in range(tp):
        mods = neox_modules(hf, tp, r, layout, mlp)
        client = {"iteration": 7, "mp_world_size": tp, "dp_world_size": 1}
        if logits is not None:
            client["checkpoint_validation_logits"] = logits.chunk(tp, -1)[r].clone()
        if pipeline:
            for i, m in mods.items():
                torch.save(m, os.path.join(tag, f"layer_{i:02d}-model_{r:02d}-model_states.pt"))
            client["module"] = None
        else:
            client["module"] = {f"sequential.{i}.{k}": v for i, m in mods.items() for k, v in m.items()}
        torch.save(client, os.path.join(tag, f"mp_rank_{r:02d}_model_states.pt"))
    if config is not None:
        os.makedirs(os.path.join(tag, "configs"))
        with open(os.path.join(tag, "configs", "run.yml"), "w") as f:
            yaml.safe_dump(config, f)
    with open(os.path.join(path, "latest"), "w") as f:
        f.write("global_step7")
    return str(path)


def neox_config(hf, tp, **extra):
    c = hf.config
    return {"pipe_parallel_size": 0, "model_parallel_size": tp, "num_layers": c.num_hidden_layers,
            "hidden_size": c.hidden_size, "num_attention_heads": c.num_attention_heads, "seq_length": SEQ,
            "max_position_embeddings": 64, "rotary_emb_base": THETA, "rms_norm_epsilon": 1e-5,
            "norm": "rmsnorm", "pos_emb": "rotary", "no_weight_tying": True, **extra}


# ----------------------------------------------------------------------------- helpers


def load_ours(ckpt, rank=0):
    return torch.load(os.path.join(ckpt, "global_step0", f"mp_rank_{rank:02d}_model_states.pt"),
                      weights_only=False)


def our_logits(ckpt, tokens):
    """Our model started the way ``finetune: true`` starts it from ``ckpt``."""
    from neox.checkpoint.files import load_finetune_weights
    from neox.model.llama import LlamaModel

    keys = dict(load_ours(ckpt)["neox_conversion"]["neox_model_keys"])
    keys.pop("max_position_embeddings")
    cfg = tiny_cfg(**{**keys, "seq_length": 32, "load": ckpt, "finetune": True})
    model = LlamaModel(cfg).eval()
    load_finetune_weights(model, cfg)
    with torch.no_grad():
        return model.gather_logits(model(tokens))


def expected_shards(hf, tp):
    names = partition.expected_names(hf.config.num_hidden_layers)
    return [shard_hf_weights(hf.state_dict().__getitem__, names, 128, 128, r, tp) for r in range(tp)]


def convert(ckpt, out, *extra, tp=1):
    return convert_neox.main(["--ckpt", ckpt, "--out", out, "--tp", str(tp), "--dtype", "fp32", *extra])


CASES = {  # name: (kv heads, layout written, mlp names, pipeline, source TP, config extras, --layout)
    "llemma-34b-style-gqa": (2, "llemma-gqa", "w123", False, 2, {"attention_type": "groupedquery",
                                                                 "num_kv_heads": 2}, None),
    "llemma-7b-style-mha": (8, "per-head", "w123", False, 2, {}, None),
    "main-gqa-per-rank": (2, "per-rank", "linear1", False, 2, {"num_kv_heads": 2}, "per-rank"),
    "main-gqa-pipeline": (2, "per-rank", "linear1", True, 2, {"num_kv_heads": 2}, "per-rank"),
    "main-pre-1315-gqa": (2, "llemma-gqa", "linear1", False, 1, {"num_kv_heads": 2}, "llemma-gqa"),
    "main-mha-pipeline": (8, "per-head", "linear1", True, 1, {}, None),
}


@pytest.mark.processes
@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_transformers(tmp_path, case, single_process_group):
    kv, layout, mlp, pipeline, src_tp, extra, given = CASES[case]
    hf = make_hf(kv, seed=len(case))
    src = write_neox(tmp_path / "neox", hf, src_tp, layout, mlp, pipeline, neox_config(hf, src_tp, **extra))
    out1, out2 = str(tmp_path / "tp1"), str(tmp_path / "tp2")
    layout_args = ["--layout", given] if given else []
    assert convert(src, out1, *layout_args, "--reference-tokens", "16") == 0
    meta = load_ours(out1)["neox_conversion"]
    assert meta["qkv_layout"] == layout and meta["source_tensor_parallel_size"] == src_tp
    assert meta["checks"] and all(c["value"] < 1e-5 for c in meta["checks"])  # the recorded logits
    tokens = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
    diff = (our_logits(out1, tokens) - expected).abs().max().item()
    assert diff < 1e-5, diff
    # at TP 2 every rank holds exactly what the HF -> trainer converter gives it
    assert convert(src, out2, *layout_args, "--reference-tokens", "0", tp=2) == 0
    for r, want in enumerate(expected_shards(hf, 2)):
        got = load_ours(out2, r)["module"]
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), r


@pytest.mark.parametrize("kv,written,wrong", [(2, "per-rank", "llemma-gqa"), (2, "llemma-gqa", "per-rank"),
                                               (8, "per-rank", "per-head"), (8, "per-head", "per-rank")])
def test_same_shape_wrong_layout_fails_the_check(tmp_path, capsys, kv, written, wrong):
    hf = make_hf(kv, seed=3)
    # main's names with no saved config: the layout cannot be read from the checkpoint
    src = write_neox(tmp_path / "neox", hf, 2, written, "linear1", config=None)
    cfg = tmp_path / "run.yml"
    cfg.write_text(yaml.safe_dump(neox_config(hf, 2, num_kv_heads=kv)))
    out = str(tmp_path / "out")
    assert convert(src, out, "--config", str(cfg)) == 1
    assert "cannot tell the query_key_value layout" in capsys.readouterr().err
    assert convert(src, out, "--config", str(cfg), "--layout", wrong) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: layout {wrong} (given with --layout) fails the check: GPT-NeoX's recorded "
                          "checkpoint_validation_logits")
    assert f"other layouts that fit: {written}" in err
    assert not os.path.exists(out) and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    assert convert(src, out, "--config", str(cfg), "--layout", written) == 0


def test_wrong_layout_fails_against_a_hugging_face_reference(tmp_path, capsys):
    hf = make_hf(2, seed=4)
    hf_dir = str(tmp_path / "hf")
    hf.save_pretrained(hf_dir)
    src = write_neox(tmp_path / "neox", hf, 2, "per-rank", "linear1", config=neox_config(hf, 2, num_kv_heads=2),
                     record_logits=False)
    out = str(tmp_path / "out")
    assert convert(src, out, "--layout", "llemma-gqa", "--verify-hf", hf_dir) == 1
    assert f"fails the check: logits of {hf_dir}, relative error" in capsys.readouterr().err
    assert convert(src, out, "--layout", "per-rank", "--verify-hf", hf_dir) == 0
    assert "check: logits of" in capsys.readouterr().out
    # without any reference the layout is taken as given, with a warning
    assert convert(src, out + "2", "--layout", "per-rank") == 0
    assert "warning: nothing to check layout per-rank against" in capsys.readouterr().err


def test_the_checkpoint_config_decides_and_contradictions_are_errors(tmp_path, capsys):
    hf = make_hf(2, seed=5)
    src = write_neox(tmp_path / "neox", hf, 2, "llemma-gqa", "w123",
                     config=neox_config(hf, 2, num_kv_heads=2, attention_type="groupedquery"))
    out = str(tmp_path / "out")
    assert convert(src, out, "--layout", "per-rank") == 1
    assert ("error: --layout per-rank contradicts the checkpoint: llemma-gqa (config attention_type: groupedquery"
            in capsys.readouterr().err)


def test_config_errors_are_one_line(tmp_path, capsys):
    hf = make_hf(8, seed=6)
    cfg = neox_config(hf, 1)
    del cfg["rotary_emb_base"]
    src = write_neox(tmp_path / "a", hf, 1, "per-head", "linear1", config=cfg)
    assert convert(src, str(tmp_path / "out")) == 1
    assert "config has no rotary_emb_base (GPT-NeoX would have used 10000); pass --rope-theta" in capsys.readouterr().err
    src = write_neox(tmp_path / "b", hf, 1, "per-head", "w123", config={**neox_config(hf, 1), "rotary_emb_base": 1e6})
    assert convert(src, str(tmp_path / "out")) == 1
    assert "saved rotary_emb.inv_freq means theta 10000, config says rotary_emb_base 1000000.0" in capsys.readouterr().err
    src = write_neox(tmp_path / "c", hf, 1, "per-head", "linear1", config={**neox_config(hf, 1), "norm": "layernorm"})
    assert convert(src, str(tmp_path / "out")) == 1
    assert "config key 'norm: layernorm' is not supported (only rmsnorm)" in capsys.readouterr().err
    src = write_neox(tmp_path / "e", hf, 1, "per-head", "linear1", config={**neox_config(hf, 1), "num_kv_heads": 2})
    assert convert(src, str(tmp_path / "out")) == 1
    assert ("query_key_value has 192 rows per rank, but num_attention_heads 8 and num_kv_heads 2 at TP 1 need 96"
            in capsys.readouterr().err)
    src = write_neox(tmp_path / "d", hf, 1, "per-head", "linear1", config=neox_config(hf, 1))
    path = os.path.join(src, "global_step7", "mp_rank_00_model_states.pt")
    state = torch.load(path, weights_only=False)
    state["module"]["sequential.3.attention.qk_layernorm.scale"] = torch.ones(8)
    torch.save(state, path)
    assert convert(src, str(tmp_path / "out")) == 1
    assert "unsupported tensors ['3.attention.qk_layernorm.scale']" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


# ----------------------------------------------------------------------------- export


def read_like_convert_neox_to_hf(tag_dir, config):
    """HF tensors the way GPT-NeoX main's convert_neox_to_hf.py --architecture llama reads a
    sequential checkpoint: QKV split per rank, linear1 halves = [up; gate], norms from rank 0."""
    tp, L = config["model_parallel_size"], config["num_layers"]
    H, heads = config["hidden_size"], config["num_attention_heads"]
    kv = config["num_kv_heads"] * H // heads
    mods = [torch.load(os.path.join(tag_dir, f"mp_rank_{r:02d}_model_states.pt"), weights_only=False)["module"]
            for r in range(tp)]

    def get(i, key):
        return [m[f"sequential.{i}.{key}"] for m in mods]

    out = {"model.embed_tokens.weight": torch.cat(get(0, "word_embeddings.weight")),
           "model.norm.weight": get(L + 3, "norm.scale")[0], "lm_head.weight": torch.cat(get(L + 4, "final_linear.weight"))}
    for i in range(L):
        p, j = f"model.layers.{i}.", i + 2
        q, k, v = torch.split(torch.stack(get(j, "attention.query_key_value.weight")), [H // tp, kv // tp, kv // tp], 1)
        halves = [t.chunk(2) for t in get(j, "mlp.linear1.weight")]
        out.update({p + "self_attn.q_proj.weight": q.reshape(-1, H), p + "self_attn.k_proj.weight": k.reshape(-1, H),
                    p + "self_attn.v_proj.weight": v.reshape(-1, H),
                    p + "self_attn.o_proj.weight": torch.cat(get(j, "attention.dense.weight"), 1),
                    p + "mlp.up_proj.weight": torch.cat([h[0] for h in halves]),
                    p + "mlp.gate_proj.weight": torch.cat([h[1] for h in halves]),
                    p + "mlp.down_proj.weight": torch.cat(get(j, "mlp.linear2.weight"), 1),
                    p + "input_layernorm.weight": get(j, "input_layernorm.scale")[0],
                    p + "post_attention_layernorm.weight": get(j, "post_attention_layernorm.scale")[0]})
    return out


def main_mlp_width(config):
    """GPT-NeoX main's gated MLP width from its config (megatron/model/transformer.py ParallelMLP)."""
    inner = int(config["intermediate_size"] * 2 / 3) // 2
    m = config["mlp_multiple_of"]
    return m * ((inner + m - 1) // m)


@pytest.mark.parametrize("kv,tp_out", [(2, 2), (2, 1), (8, 2)])
def test_export_is_read_by_gptneox_and_round_trips_bit_identically(tmp_path, capsys, kv, tp_out):
    hf = make_hf(kv, seed=7)
    hf_dir, ours, neox, back = (str(tmp_path / x) for x in ("hf", "ours", "neox", "back"))
    hf.save_pretrained(hf_dir)
    assert convert_codellama.main(["--hf-dir", hf_dir, "--out", ours, "--tp", "2", "--dtype", "fp32",
                                   "--reference-tokens", "0"]) == 0
    assert export_neox.main(["--ckpt", ours, "--out", neox, "--tp", str(tp_out), "--reference-tokens", "16"]) == 0
    assert ("multi-head attention written per rank" in capsys.readouterr().err) == (kv == 8)
    with open(os.path.join(neox, "convert_neox_to_hf.yml")) as f:
        conv_cfg = yaml.safe_load(f)
    with open(os.path.join(neox, "global_step0", "configs", "model.yml")) as f:
        train_cfg = yaml.safe_load(f)
    assert conv_cfg["intermediate_size"] == 96 and main_mlp_width(train_cfg) == 96
    assert conv_cfg["pipe_parallel_size"] == 0 and conv_cfg["model_parallel_size"] == tp_out
    assert conv_cfg["num_kv_heads"] == kv and conv_cfg["use_bias_in_attn_linear"] is False
    assert open(os.path.join(neox, "latest")).read() == "global_step0"
    got = read_like_convert_neox_to_hf(os.path.join(neox, "global_step0"), conv_cfg)
    want = hf.state_dict()
    assert got.keys() == {k for k in want if "rotary" not in k}
    assert all(torch.equal(got[k], want[k]) for k in got)
    # read back by the importer (the layout and reference loss recorded by the export are checked)
    assert convert(neox, back, "--reference-tokens", "0", tp=2) == 0
    meta = load_ours(back)["neox_conversion"]
    assert meta["qkv_layout"] == "per-rank" and "recorded by tools/export_neox.py" in meta["qkv_layout_reason"]
    assert [c["check"] for c in meta["checks"]] == ["recorded reference loss, absolute difference"]
    for r in range(2):
        a, b = load_ours(ours, r)["module"], load_ours(back, r)["module"]
        assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_export_layout_choice_for_gptneox_training(tmp_path):
    """--layout per-head writes multi-head attention the way GPT-NeoX's training code reads it."""
    hf = make_hf(8, seed=8)
    hf_dir, ours, neox = (str(tmp_path / x) for x in ("hf", "ours", "neox"))
    hf.save_pretrained(hf_dir)
    assert convert_codellama.main(["--hf-dir", hf_dir, "--out", ours, "--tp", "1", "--dtype", "fp32",
                                   "--reference-tokens", "0"]) == 0
    assert export_neox.main(["--ckpt", ours, "--out", neox, "--tp", "2", "--layout", "per-head"]) == 0
    for r in range(2):
        got = torch.load(os.path.join(neox, "global_step0", f"mp_rank_{r:02d}_model_states.pt"),
                         weights_only=False)["module"]
        want = neox_modules(hf, 2, r, "per-head", "linear1")
        for i, m in want.items():
            for k, v in m.items():
                assert torch.equal(got[f"sequential.{i}.{k}"], v), (r, i, k)


TOKENIZER_TEXT = "Let $x^2 + y^2 = 1$; then (x + y)^2 <= 2."


def tiny_bpe_json(path):
    """A byte-level BPE tokenizer.json (the kind Llama 3 and Qwen2.5 ship), trained on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TOKENIZER_TEXT, "x^2 + y^2", "then 1 <= 2"] * 5,
                            trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(path)
    return tok


@pytest.mark.processes
@pytest.mark.parametrize("source", ["converter_copy", "vocab_file", "tokenizer_json"])
def test_export_copies_its_tokenizer_and_both_configs_name_it(tmp_path, toy_data, source):
    """The converter's copy in <ckpt>/tokenizer/, a trained run's checkpoint (no tokenizer/ folder,
    the run's vocab_file) and a tokenizer/ with only tokenizer.json: the configs' vocab_file loads
    the same tokenizer (before the fix: never copied, a TypeError, an IsADirectoryError)."""
    import sentencepiece as spm
    from tokenizers import Tokenizer

    from neox.checkpoint.files import model_file

    hf_dir, ours, neox = (str(tmp_path / x) for x in ("hf", "ours", "neox"))
    make_hf(2, seed=9).save_pretrained(hf_dir)
    assert convert_codellama.main(["--hf-dir", hf_dir, "--out", ours, "--tp", "1", "--dtype", "fp32",
                                   "--reference-tokens", "0"]) == 0
    sp_model = os.path.join(toy_data, "tokenizer.model")
    tok_dir = os.path.join(ours, "tokenizer")
    if source == "converter_copy":
        os.makedirs(tok_dir, exist_ok=True)
        shutil.copyfile(sp_model, os.path.join(tok_dir, "tokenizer.model"))
    elif source == "vocab_file":
        shutil.rmtree(tok_dir, ignore_errors=True)
        path = model_file(ours, "global_step0", 0)
        state = torch.load(path, weights_only=False)
        state["neox_conversion"]["neox_model_keys"]["vocab_file"] = sp_model
        torch.save(state, path)
    else:
        shutil.rmtree(tok_dir, ignore_errors=True)
        os.makedirs(tok_dir)
        bpe = tiny_bpe_json(os.path.join(tok_dir, "tokenizer.json"))
    assert export_neox.main(["--ckpt", ours, "--out", neox, "--reference-tokens", "0"]) == 0
    for config in ("convert_neox_to_hf.yml", os.path.join("global_step0", "configs", "model.yml")):
        with open(os.path.join(neox, config)) as f:
            cfg = yaml.safe_load(f)
        assert cfg["vocab_file"].startswith(os.path.join(neox, "tokenizer")), cfg
        if source == "tokenizer_json":
            assert cfg["tokenizer_type"] == "HFTokenizer"
            assert Tokenizer.from_file(cfg["vocab_file"]).encode(TOKENIZER_TEXT).ids == bpe.encode(TOKENIZER_TEXT).ids
        else:
            assert cfg["tokenizer_type"] == "SPMTokenizer"
            got = spm.SentencePieceProcessor(model_file=cfg["vocab_file"]).encode(TOKENIZER_TEXT)
            assert got == spm.SentencePieceProcessor(model_file=sp_model).encode(TOKENIZER_TEXT) and got
