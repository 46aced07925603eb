"""The two scoring protocols (default and llemma) and the answer-checker defects fixed at their root.

Each fixed pair is quoted as it was reported; every assertion here failed before the fix."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from llemma_eval import answers
from llemma_eval.checker import Checker
from llemma_eval.registry import kind
from llemma_eval.scoring import score_protocol, score_records, summarize
from llemma_eval.voting import majority_vote

TOOL = os.path.join(REPO, "tools", "run_eval.py")
FIXTURE = os.path.join(REPO, "tests", "fixtures", "protocol_samples.jsonl")


@pytest.fixture(scope="module")
def checker():
    with Checker(timeout=20) as c:
        yield c


def test_comma_lists_are_lists_before_sympy(checker):
    """'1, 2' vs '1, 3' was true: math-verify refused, SymPy's parse_latex("1,2") read 1."""
    for a, b in [("1, 2", "1, 3"), ("-2, 5", "-2, 7"), ("1, 2", "1"), ("1, 2, 3", "1, 2")]:
        assert not checker.equal(a, b), (a, b)
    for a, b in [("1, 2", "2, 1"), ("-2, \\frac{1}{2}", "0.5, -2"), ("x = 1, 2", "1,2"), ("1,000", "1000")]:
        assert checker.equal(a, b), (a, b)
    # maj@k: different lists are different votes ("1, 2" no longer absorbs the two "1, 3")
    samples = ["1, 2", "1, 3", "1, 3"]
    assert samples[majority_vote(samples, checker.equal, key=answers.normalize_math)] == "1, 3"


def test_units_and_text_are_removed_whole():
    assert answers.normalize_math("48\\text{ cm}^2") == "48"  # was "48^2": the unit went, its exponent stayed
    assert answers.normalize_math("2 \\text{ and } 3") == "2,3"  # was "23"
    assert answers.normalize_math("12 cm^{2}") == "12"


@pytest.mark.processes
def test_text_and_is_a_list_and_sqrt_reads_one_token(checker):
    assert not checker.equal("1 \\text{ and } 2", "12")  # was equal
    assert checker.equal("1 \\text{ and } 2", "1, 2")
    # TeX (and Minerva's normaliser) read \sqrt23 as \sqrt{2}3; it was read as \sqrt{23}
    assert answers.normalize_math("\\sqrt23") == "\\sqrt{2}3"
    assert checker.equal("\\sqrt23", "3\\sqrt{2}") and not checker.equal("\\sqrt23", "\\sqrt{23}")


@pytest.mark.processes
def test_equiv_command_takes_answers_that_start_with_a_minus():
    """`equiv '-\\frac12' '-0.5'` was an argparse usage error (exit 2): the answer looked like an option."""
    for args, out in [(["-\\frac{1}{2}", "-0.5"], "true"), (["-\\frac{1}{2}", "0.5"], "false"),
                      (["--timeout", "20", "-3", "-3.0"], "true"), (["--protocol", "llemma", "-\\frac12", "-0.5"], "true")]:
        r = subprocess.run([sys.executable, TOOL, "equiv", *args], capture_output=True, text=True, timeout=120)
        assert (r.stdout.strip(), r.returncode) == (out, 0 if out == "true" else 1), (args, r.stderr[-500:])


@pytest.mark.processes
def test_answers_that_normalise_to_nothing_vote_together_as_in_the_llemma_scorer(checker):
    """['5', '\\%', '\\%']: the Llemma scorer elects '\\%' (identical strings are one cluster); ours
    elected '5' ('\\%' normalises to '' and never equalled even itself). Now both elect '\\%'."""
    math = kind("math")
    gens = [f"Final Answer: The final answer is ${a}$. I hope it is correct." for a in ["5", "\\%", "\\%"]]
    for protocol in ("default", "llemma"):
        scored = score_protocol(math, protocol, "So $\\boxed{5}$.", gens, checker)
        assert scored["maj_answer"] in ("$\\%$", "\\%"), (protocol, scored)
        assert scored["correct"] == [True, False, False] and not scored["maj_correct"]


@pytest.mark.processes
def test_where_the_protocols_differ(checker):
    math, gsm = kind("math"), kind("gsm8k")
    only_boxed = "We get $\\boxed{7}$."  # no final-answer phrase: the default falls back, llemma is invalid
    assert math.extract(only_boxed, "default") == "7" and math.extract(only_boxed, "llemma") is None
    twice = ("Final Answer: The final answer is $3$. I hope it is correct.\n"
             "Final Answer: The final answer is $4$. I hope it is correct.")
    assert math.extract(twice, "default") == "$4$"  # the last
    assert math.extract(twice, "llemma") == "3"  # the first, as lm-eval and the Llemma fork take it
    assert gsm.extract("3 + 4 = 7 pens.", "default") == "7" and gsm.extract("3 + 4 = 7 pens.", "llemma") is None
    first = gsm.extract("The answer is 7. The answer is 8.", "llemma")
    assert first == "7." and gsm.key(first, "llemma") == "7"  # lm-eval's regex, then its exact match's ignores
    assert math.gold("$x = \\boxed{\\frac{1}{2}}$", "llemma") == "\\frac{1}{2}"
    assert math.equal("\\frac{1}{2}", "0.5", "llemma", checker)  # Minerva's SymPy check


@pytest.mark.processes
def test_results_list_both_protocols_and_the_docs_table_is_theirs():
    """The shipped sample set scored both ways; docs/evaluation.md's table is generated from it."""
    from llemma_eval.protocol_table import protocol_table

    records = [json.loads(line) for line in open(FIXTURE)]
    by_task = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    summaries = {t: summarize(score_records(rs, workers=2, timeout=20)) for t, rs in by_task.items()}
    for task, s in summaries.items():
        assert set(s["protocols"]) == {"default", "llemma"} and s["protocol"] == "default"
        assert s["value"] == s["protocols"]["default"]["value"]
    math, gsm = summaries["math_greedy"], summaries["gsm8k_greedy"]
    # the fixture is built so that the two differ: fallbacks and last-vs-first matches
    assert math["protocols"]["default"]["value"] > math["protocols"]["llemma"]["value"]
    assert gsm["protocols"]["default"]["value"] > gsm["protocols"]["llemma"]["value"]
    assert gsm["protocols"]["llemma"]["metrics"]["invalid"] > 0 == gsm["protocols"]["default"]["metrics"]["invalid"]
    table = protocol_table(summaries)
    assert table in open(os.path.join(REPO, "docs", "evaluation.md")).read(), (
        "docs/evaluation.md's protocol table is out of date; regenerate it with python -m llemma_eval.protocol_table")


@pytest.mark.processes
def test_bf16_perplexity_is_accumulated_in_float32(tmp_path, toy_data):
    """A bf16 export: lm-eval summed bf16 log-probabilities (0.8% above float32); the hf backend now
    returns float32 logits, so the sum equals float32 log-softmax over the same (bf16) logits."""
    import torch
    from lm_eval.api.instance import Instance
    from transformers import AutoTokenizer, LlamaForCausalLM

    from llemma_eval.models import make_lm
    from neox.cli.make_stand_in_codellama import make

    make(str(tmp_path / "hf"), os.path.join(toy_data, "tokenizer.model"), max_positions=512, dtype="bf16")
    text = " ".join(["The derivative of $x^2$ is $2x$, as the limit of the difference quotient shows."] * 4)
    lm = make_lm("hf", str(tmp_path / "hf"), dtype="bfloat16")
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    (ours,) = lm.loglikelihood_rolling([request], disable_tqdm=True)
    ours = ours[0] if isinstance(ours, (list, tuple)) else ours

    model = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    targets = ids[0, 1:]
    in_fp32 = torch.log_softmax(logits.float(), -1).gather(1, targets[:, None]).sum().item()
    in_bf16 = torch.log_softmax(logits, -1).gather(1, targets[:, None]).sum().item()
    assert ours == pytest.approx(in_fp32, rel=1e-5)
    assert abs(in_bf16 - in_fp32) > 1e-3 * abs(in_fp32)  # the test would catch a bf16 sum


@pytest.mark.processes
def test_first_use_on_the_toy_export_offline(tmp_path, toy_data):
    """The documented toy command (a 128-position model, toy benchmark files) runs: the generation
    length is clipped with one warning line, not a traceback; offline without --data-dir the run
    stops in one line naming --data-dir and the layout, in seconds, before loading the model."""
    import time

    from llemma_eval.toy_bench import write_all
    from neox.cli.make_stand_in_codellama import make

    make(str(tmp_path / "hf"), os.path.join(toy_data, "tokenizer.model"))  # max_position_embeddings 128
    write_all(str(tmp_path / "bench"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on 9
    env.pop("HF_DATASETS_OFFLINE", None)
    r = subprocess.run([sys.executable, TOOL, str(tmp_path / "hf"), "--data-dir", str(tmp_path / "bench"),
                        "--tasks", "llemma_math", "--limit", "1", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [line for line in r.stdout.splitlines() if line.startswith("warning: llemma_math: generation length")]
    assert warnings == ["warning: llemma_math: generation length 512 >= the model's context of 128 tokens: "
                        "generating at most 64; prompts are cut to their last 64 tokens (few-shot examples lost), "
                        "so the scores are not comparable to published ones"]
    assert "Left truncation applied" not in r.stdout + r.stderr and "Traceback" not in r.stderr
    start = time.time()
    r = subprocess.run([sys.executable, TOOL, str(tmp_path / "hf"), "--tasks", "llemma_gsm8k", "--out",
                        str(tmp_path / "out2")], capture_output=True, text=True, timeout=300, env=env)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "--data-dir D" in errors[0] and "D/gsm8k/test.jsonl" in errors[0] and "openai/gsm8k" in errors[0]
    assert time.time() - start < 30 and not os.path.exists(tmp_path / "out2" / "results.json")
