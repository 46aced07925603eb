"""What the exported Hugging Face directory holds: file modes and a tokenizer equal to SentencePiece."""

import json
import os
import stat

import pytest
import sentencepiece as spm
import torch
import transformers

from neox.checkpoint.files import model_file
from neox.cli.make_stand_in_codellama import make
from neox.interop import (
    convert_codellama,
    export_hf,
)

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)

HF_TOKENIZER_FILES = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}

BATTERY = [
    "Let $f(x) = \\frac{1}{\\sqrt{2\\pi}} e^{-x^2/2}$, so $\\int_{-\\infty}^{\\infty} f = 1$.",
    "\\begin{align} a &= b \\\\ c &\\leq d \\end{align}",
    "théorème d'Euler: e^{iπ} + 1 = 0, ∀ε>0 ∃δ — ≤ ≥ ≠ ∑ 🙂 日本語",
    "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n",
    "theorem foo : ∀ n : ℕ, n + 0 = n := by\n\tsimp",
    " 5", "  5", " leading space", "   three leading", "trailing  ", "a  b   c    d", "\n\nnewlines first",
    "\t tab", " ", "", "x", "<s>", "a <s> b </s> c", "<unk>", "</s>x", "12345 + 678 = 13023",
]


def _modes(tree):
    return {os.path.relpath(os.path.join(root, n), tree): stat.S_IMODE(os.stat(os.path.join(root, n)).st_mode)
            for root, dirs, files in os.walk(tree) for n in dirs + files}


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_written_files_follow_the_umask(tmp_path, toy_data, umask, file_mode, dir_mode):
    src = str(tmp_path / "hf")
    make(src, tokenizer=os.path.join(toy_data, "tokenizer.model"), layers=1, hidden=32, heads=2, kv_heads=2,
         intermediate=64)
    for f in os.listdir(src):  # the converter's copies must not keep these
        os.chmod(os.path.join(src, f), 0o600)
    ckpt, out = str(tmp_path / "neox"), str(tmp_path / "out")
    old = os.umask(umask)
    try:
        assert convert_codellama.main(["--hf-dir", src, "--out", ckpt, "--tp", "2", "--reference-tokens", "0"]) == 0
        assert export_hf.main(["--ckpt", ckpt, "--out", out]) == 0
    finally:
        os.umask(old)
    for tree, written in ((ckpt, {"tokenizer/tokenizer.json", "global_step0/mp_rank_01_model_states.pt"}),
                          (out, {"model.safetensors", "tokenizer.json", "config.json"})):
        modes = _modes(tree)
        assert written <= set(modes)
        wrong = {p: oct(m) for p, m in modes.items()
                 if m != (dir_mode if os.path.isdir(os.path.join(tree, p)) else file_mode)}
        assert not wrong, (tree, wrong)
        assert stat.S_IMODE(os.stat(tree).st_mode) == dir_mode


@pytest.fixture(scope="module")
def exported(tmp_path_factory, toy_data):
    """The stand-in Code Llama converted and exported twice: with the converter's tokenizer copy,
    and as a trained run's checkpoint would be (no <ckpt>/tokenizer/, the run's vocab_file)."""
    tmp = tmp_path_factory.mktemp("export")
    model = os.path.join(toy_data, "tokenizer.model")
    src, ckpt = str(tmp / "hf"), str(tmp / "neox")
    make(src, tokenizer=model, layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64)
    assert convert_codellama.main(["--hf-dir", src, "--out", ckpt, "--tp", "1", "--reference-tokens", "0"]) == 0
    assert export_hf.main(["--ckpt", ckpt, "--out", str(tmp / "from_copy")]) == 0
    for f in os.listdir(os.path.join(ckpt, "tokenizer")):
        os.remove(os.path.join(ckpt, "tokenizer", f))
    path = model_file(ckpt, "global_step0", 0)
    state = torch.load(path, weights_only=False)
    state["neox_conversion"]["neox_model_keys"]["vocab_file"] = model
    torch.save(state, path)
    assert export_hf.main(["--ckpt", ckpt, "--out", str(tmp / "from_vocab_file")]) == 0
    return tmp, model


@pytest.mark.parametrize("which", ["from_copy", "from_vocab_file"])
def test_exported_tokenizer_equals_sentencepiece(exported, which):
    tmp, model = exported
    out = str(tmp / which)
    assert HF_TOKENIZER_FILES <= set(os.listdir(out))
    sp = spm.SentencePieceProcessor(model_file=model)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    version = f"transformers {transformers.__version__}"
    for text in BATTERY:
        ids = tok.encode(text)
        assert ids == [sp.bos_id()] + sp.encode(text), (version, text, tok.convert_ids_to_tokens(ids))
        assert tok.decode(ids, skip_special_tokens=True) == sp.decode(ids) == text, (version, text)
    assert tok(["a b"], ["c"])["input_ids"] == [[1] + sp.encode("a b") + [1] + sp.encode("c")]


def test_special_token_ids_agree_everywhere(exported):
    tmp, model = exported
    out = str(tmp / "from_copy")
    sp = spm.SentencePieceProcessor(model_file=model)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    config = json.load(open(os.path.join(out, "config.json")))
    generation = transformers.GenerationConfig.from_pretrained(out)
    ids = (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id)
    assert ids == (sp.bos_id(), sp.eos_id(), sp.unk_id()) == (1, 2, 0)
    assert config["bos_token_id"] == generation.bos_token_id == 1
    assert config["eos_token_id"] == generation.eos_token_id == 2
    assert sp.pad_id() == -1 and tok.pad_token_id is None and config["pad_token_id"] is None
    assert generation.pad_token_id is None
    assert json.load(open(os.path.join(out, "special_tokens_map.json"))) == {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    for f in HF_TOKENIZER_FILES:  # both exports write the same tokenizer
        assert open(os.path.join(out, f), "rb").read() == open(os.path.join(tmp, "from_vocab_file", f), "rb").read(), f


def test_user_defined_pieces_are_emitted_whole_like_sentencepiece(tmp_path, toy_data):
    """Code Llama's kind of vocabulary: pieces such as '▁<PRE>' that SentencePiece never splits."""
    import io

    from neox.cli import train_toy_tokenizer
    from neox.data.hf_tokenizer import write_hf_tokenizer

    lines = list(train_toy_tokenizer.iter_train_lines(os.path.join(toy_data, "corpus")))[:2000]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=400, minloglevel=2,
                                   user_defined_symbols=["▁<PRE>", "▁<SUF>", "<MID>"],
                                   **train_toy_tokenizer.TRAINER_OPTIONS)
    model = str(tmp_path / "ud.model")
    open(model, "wb").write(buf.getvalue())
    assert write_hf_tokenizer(model, str(tmp_path), 64) == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}
    sp = spm.SentencePieceProcessor(model_file=model)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in BATTERY + [" <PRE> x", "<PRE>", "a<MID>b<MID><MID>", "x <SUF>y", "  <PRE>def f():"]:
        ids = tok.encode(text)
        assert ids == [1] + sp.encode(text), (text, tok.convert_ids_to_tokens(ids))
        assert tok.decode(ids, skip_special_tokens=True) == sp.decode(ids) == text, text
    assert sp.encode("<PRE>", out_type=str) == ["▁<PRE>"]  # the case above is not vacuous
