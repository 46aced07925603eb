"""OCW Courses, MMLU-STEM, SAT, MATH-500 and AIME (llemma_eval.stem, llemma_eval.upstream_tasks): loaders,
task YAMLs through lm-eval's TaskManager, the OCW numeric rule and multiple-choice extraction. No model."""

import glob
import json
import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llemma_eval import TASKS_DIR, stem, task_fns  # noqa: E402
from llemma_eval.data import DataError  # noqa: E402

# ------------------------------------------------------------------------------------------ data


def _jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_data(root):
    """Small invented files in each --data-dir layout."""
    root = str(root)
    _jsonl(f"{root}/ocw/test.jsonl", [
        {"problem": "A wire carries 2 A for 3 s. How much charge passes, in coulombs?",
         "solution": "Charge is current times time: $Q = \\boxed{6}$.", "answer": "6"},
        {"problem": "Give the speed of a wave of frequency f and wavelength L.", "solution": "$v = fL$",
         "answer": "v = f L"}])
    for i, s in enumerate(stem.MMLU_STEM_SUBJECTS):
        os.makedirs(f"{root}/mmlu/test", exist_ok=True)
        with open(f"{root}/mmlu/test/{s}_test.csv", "w") as f:
            f.write(f'"Which, of these, is {i}?",{i},{i + 1},{i + 2},{i + 3},A\n')
            f.write(f"What is {i} + 1?,{i},{i + 1},{i + 2},{i + 3},B\n")
    _jsonl(f"{root}/sat/test.jsonl", [
        {"question": "If 2x = 10, what is x?", "options": ["2", "5", "8", "10"], "answer": "B"},
        {"question": "What is 3 squared?", "options": {"A": "6", "B": "3", "C": "9", "D": "12"}, "answer": "(C)"}])
    _jsonl(f"{root}/MATH-500/test.jsonl", [
        {"problem": "What is $4 \\cdot 5$?", "solution": "We get $\\boxed{20}$.", "answer": "20"}])
    _jsonl(f"{root}/aime/aime.jsonl", [{"Question": "Find the number of sides of a hexagon.", "Answer": 6}])
    _jsonl(f"{root}/aime/aime24.jsonl", [{"Problem": "Find twice 21.", "Answer": 42}])
    _jsonl(f"{root}/aime/aime25.jsonl", [{"problem": "Find 3 cubed.", "answer": "27"}])
    return root


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path)


def test_ocw_loader_reads_the_layout_and_reports_missing_file_and_field(data, tmp_path):
    ds = stem.ocw_test(data_dir=data)["test"]
    assert len(ds) == 2 and ds[1]["answer"] == "v = f L" and ds[0]["solution"].endswith("$.")
    with pytest.raises(DataError, match=r"ocw/test\.jsonl") as e:
        stem.ocw_test(data_dir=str(tmp_path / "nothing"))
    assert "\n" not in str(e.value)
    _jsonl(f"{data}/ocw/test.jsonl", [{"problem": "p", "solution": "s"}])
    with pytest.raises(DataError, match=r"lacks field\(s\) \['answer'\]"):
        stem.ocw_test(data_dir=data)


def test_mmlu_stem_subjects_are_lm_evals_stem_group():
    from lm_eval.tasks._yaml_loader import load_yaml

    from llemma_eval.upstream_tasks import upstream_path

    root = os.path.dirname(upstream_path("mmlu/default/_mmlu_stem.yaml"))
    tagged = sorted(load_yaml(p, resolve_func=False, recursive=False)["dataset_name"]
                    for p in glob.glob(os.path.join(root, "mmlu_*.yaml"))
                    if load_yaml(p, resolve_func=False, recursive=False).get("tag") == "mmlu_stem_tasks")
    assert stem.MMLU_STEM_SUBJECTS == tagged and len(tagged) == 19


def test_mmlu_loader_reads_csvs_and_names_a_missing_subject(data):
    rows = stem.mmlu_stem_test(data_dir=data)["test"]
    assert len(rows) == 2 * 19
    first = rows[0]
    assert first["question"] == "Which, of these, is 0?" and first["choices"] == ["0", "1", "2", "3"]
    assert [r["answer"] for r in rows][:2] == ["A", "B"] and first["subject"] == "abstract_algebra"
    os.remove(f"{data}/mmlu/test/machine_learning_test.csv")
    with pytest.raises(DataError, match="machine_learning_test.csv"):
        stem.mmlu_stem_test(data_dir=data)
    assert stem.missing_task_data("llemma_mmlu_stem_majk", data).endswith("for machine_learning_test.csv")


def test_sat_loader_list_and_dict_options_and_errors(data, tmp_path):
    rows = stem.sat_test(data_dir=data)["test"]
    assert rows[0]["choices"] == ["2", "5", "8", "10"] and rows[0]["answer"] == "B"
    assert rows[1]["choices"] == ["6", "3", "9", "12"] and rows[1]["answer"] == "C"
    with pytest.raises(DataError, match="--data-dir") as e:
        stem.sat_test()
    assert "\n" not in str(e.value)
    _jsonl(f"{data}/sat/test.jsonl", [{"question": "q", "options": ["1", "2", "3", "4"], "answer": "E"}])
    with pytest.raises(DataError, match="not one of A, B, C, D"):
        stem.sat_test(data_dir=data)
    _jsonl(f"{data}/sat/test.jsonl", [{"question": "q", "answer": "A"}])
    with pytest.raises(DataError, match=r"lacks field\(s\) \['options'\]"):
        stem.sat_test(data_dir=data)
    assert stem.missing_task_data("llemma_sat", str(tmp_path / "none")).endswith("/sat/test.jsonl")


def test_math500_and_aime_loaders_add_problem_and_boxed_solution(data):
    assert stem.math500_test(data_dir=data)["test"][0]["answer"] == "20"
    a = stem.aime_test(data_dir=data)["test"][0]
    assert (a["Question"], a["Answer"], a["problem"], a["solution"]) == (
        "Find the number of sides of a hexagon.", "6", "Find the number of sides of a hexagon.", "\\boxed{6}")
    b = stem.aime24_test(data_dir=data)["test"][0]
    assert (b["Problem"], b["solution"]) == ("Find twice 21.", "\\boxed{42}")
    c = stem.aime25_test(data_dir=data)["test"][0]
    assert (c["problem"], c["answer"], c["solution"]) == ("Find 3 cubed.", "27", "\\boxed{27}")
    _jsonl(f"{data}/aime/aime24.jsonl", [{"Problem": "no answer here"}])
    with pytest.raises(DataError, match="aime24.jsonl.*Answer"):
        stem.aime24_test(data_dir=data)
    os.remove(f"{data}/MATH-500/test.jsonl")
    with pytest.raises(DataError, match="MATH-500/test.jsonl"):
        stem.math500_test(data_dir=data)


# ------------------------------------------------------------------------------------- task YAMLs


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    from lm_eval.tasks import TaskManager

    from llemma_eval.upstream_tasks import write_upstream_task_yamls

    upstream_dir = str(tmp_path_factory.mktemp("upstream"))
    write_upstream_task_yamls(upstream_dir)
    data = write_data(tmp_path_factory.mktemp("data"))
    return TaskManager(include_path=[TASKS_DIR, upstream_dir], include_defaults=False,
                       metadata={"data_dir": data}), data


def _prompt(manager, name, i=0):
    task = manager[0].load([name])["tasks"][name]
    task.build_all_requests(limit=i + 1, rank=0, world_size=1)
    inst = [x for x in task.instances if x.doc_id == i][0]
    return task, inst.args[0], inst.doc


def test_ocw_yaml_renders_minerva_format_with_our_exemplars(manager):
    task, prompt, doc = _prompt(manager, "llemma_ocw")
    assert prompt.startswith("Problem:\n" + stem.OCW_FEWSHOT[0]["problem"] + "\n\nSolution:\n")
    assert prompt.count("Final Answer: The final answer is") == 4
    assert "I hope it is correct.\n\nProblem:\nSolve $\\dot{x} + 3x = 0$" in prompt
    assert prompt.endswith("\n\nProblem:\nA wire carries 2 A for 3 s. How much charge passes, in coulombs?\n\nSolution:")
    assert stem.OCW.problem_reference(doc) == (doc["problem"], "6")
    majk, _, _ = _prompt(manager, "llemma_ocw_majk")
    assert majk.config.repeats == 100 and majk.config.generation_kwargs["temperature"] == 0.6
    assert majk.config.generation_kwargs["top_p"] == 0.95 and majk.config.generation_kwargs["do_sample"] is True


def test_mmlu_and_sat_yamls_render_answer_choices(manager):
    _, prompt, doc = _prompt(manager, "llemma_mmlu_stem", 1)
    assert prompt.endswith("\n\nProblem:\nWhat is 0 + 1?\nAnswer Choices: (A) 0 (B) 1 (C) 2 (D) 3\nSolution:")
    assert prompt.startswith("Problem:\nWhat is the slope of the tangent line to $y = x^3$ at $x = 2$?\n"
                             "Answer Choices: (A) 6 (B) 8 (C) 12 (D) 24\nSolution: The derivative is $3x^2$")
    assert [f"The final answer is ({x})." in prompt for x in "CBAD"] == [True] * 4
    assert stem.MC.problem_reference(doc) == ("What is 0 + 1?\nAnswer Choices: (A) 0 (B) 1 (C) 2 (D) 3", "B")
    _, sat_prompt, _ = _prompt(manager, "llemma_sat", 1)
    assert sat_prompt.endswith("Problem:\nWhat is 3 squared?\nAnswer Choices: (A) 6 (B) 3 (C) 9 (D) 12\nSolution:")
    assert sat_prompt[:-80] == prompt[:len(sat_prompt) - 80]  # same exemplars
    majk, _, _ = _prompt(manager, "llemma_sat_majk")
    assert majk.config.repeats == 16 and majk.config.generation_kwargs["do_sample"] is True


def _upstream_prompt(relpath, doc):
    """The installed lm-eval task (its own YAML) on the same doc."""
    import datasets
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    from llemma_eval.upstream_tasks import upstream_path

    cfg = load_yaml(upstream_path(relpath))
    cfg["custom_dataset"] = lambda **_: datasets.DatasetDict({cfg["test_split"]: datasets.Dataset.from_list([doc])})
    task = ConfigurableTask(config=cfg)
    task.build_all_requests(limit=1, rank=0, world_size=1)
    return task.instances[0].args[0]


@pytest.mark.parametrize("name,relpath,raw", [
    ("llemma_math500", "minerva_math/minerva_math500.yaml",
     {"problem": "What is $4 \\cdot 5$?", "solution": "We get $\\boxed{20}$.", "answer": "20"}),
    ("llemma_aime", "aime/aime.yaml", {"Question": "Find the number of sides of a hexagon.", "Answer": "6"}),
    ("llemma_aime24", "aime/aime24.yaml", {"Problem": "Find twice 21.", "Answer": "42"}),
    ("llemma_aime25", "aime/aime25.yaml", {"problem": "Find 3 cubed.", "answer": "27"}),
])
def test_upstream_tasks_load_through_include_and_keep_the_upstream_prompt(manager, name, relpath, raw):
    task, prompt, doc = _prompt(manager, name)
    assert prompt == _upstream_prompt(relpath, raw)
    assert task.config.metadata["kind"] == "math" and task.config.generation_kwargs["do_sample"] is False
    assert doc["solution"] == raw.get("solution", "\\boxed{%s}" % list(raw.values())[1])
    if name == "llemma_math500":
        assert prompt.count("Problem:") == 5 and prompt.endswith("Problem:\nWhat is $4 \\cdot 5$?\n\nSolution:")
    majk, _, _ = _prompt(manager, name + "_majk")
    assert majk.config.repeats == (256 if name == "llemma_math500" else 64)


def test_upstream_yamls_include_the_installed_files(tmp_path):
    from llemma_eval.upstream_tasks import UPSTREAM, upstream_path, write_upstream_task_yamls

    write_upstream_task_yamls(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted([f"{t}.yaml" for t in UPSTREAM] + [f"{t}_majk.yaml" for t in UPSTREAM])
    text = (tmp_path / "llemma_aime24.yaml").read_text()
    assert f"include: \"{upstream_path('aime/aime24.yaml')}\"" in text and os.path.isabs(upstream_path("aime/aime.yaml"))


def test_process_results_defers_scoring_under_run_eval(monkeypatch):
    monkeypatch.setenv("LLEMMA_EVAL_DEFER_SCORING", "1")
    assert task_fns.mc_results({"answer": "B"}, ["The final answer is (B)."]) == {"exact_or_equiv": 0, "maj_at_k": 0}


# ---------------------------------------------------------------------------------------- scoring


class NoSymbolic:
    """A checker that fails the test if a symbolic comparison is asked for."""

    def equal(self, a, b):
        raise AssertionError(f"symbolic comparison of {a!r} and {b!r}")

    llemma_equal = equal


@pytest.mark.parametrize("pred,gold,same", [
    ("101", "100", True), ("102", "100", False), ("99", "100", True), ("98.9", "100", False),
    ("32000", "3.2\\times10^{4}", True), ("3.2 \\times 10^{4}", "32000", True), ("3.3e4", "3.2\\times10^{4}", False),
    ("$6.02 \\times 10^{23}$", "6.022\\times 10^{23} \\mathrm{~mol}^{-1}", True),
    ("1.6\\times10^{-19}\\,\\mathrm{C}", "1.6 \\times 10^{-19}", True), ("49.3\\text{ L}", "49.26 L", True),
    ("5m/s", "5 \\mathrm{~m/s}", True), ("v \\approx 4.95", "5 \\mathrm{~m/s}", True), ("0", "0", True),
    ("0.001", "0", False), ("\\frac{1}{4}", "0.25", True), ("x+1", "2", False), (None, "2", False),
])
def test_ocw_numeric_rule_one_percent(pred, gold, same):
    assert stem.ocw_answer_type(gold) == "numeric"
    for protocol in ("default", "llemma"):
        assert stem.OCW.equal(pred, gold, protocol, NoSymbolic()) is same


def test_ocw_answer_types():
    assert stem.ocw_number("3.2\\times10^{4}") == pytest.approx(32000)
    assert stem.ocw_number("10^{-3}") == pytest.approx(1e-3) and stem.ocw_number("1,250") == 1250
    assert stem.ocw_number("2x") is None and stem.ocw_number("2x", strict=False) == 2  # a glued unit in a pred
    assert [stem.ocw_answer_type(g) for g in ("y = 2 e^{-3t}", "\\frac{k}{m}", "2\\pi", "1/3", "F = 12 N",
                                                "\\frac{1}{2} m v^2", "2 x", "4 kg m/s")] == [
        "equation", "expression", "expression", "expression", "numeric", "expression", "expression", "numeric"]


@pytest.fixture(scope="module")
def checker():
    from llemma_eval.checker import Checker

    with Checker(timeout=60) as c:
        yield c


@pytest.mark.processes
def test_ocw_symbolic_answers_default_protocol(checker):
    eq = stem.OCW.equal
    assert eq("x(t) = 2e^{-3t}", "y = 2 e^{-3 t}", "default", checker)  # right-hand sides compared
    assert not eq("x(t) = 3e^{-3t}", "y = 2 e^{-3 t}", "default", checker)
    assert eq("\\frac{m v^{2}}{2}", "\\frac{1}{2} m v^2", "default", checker)
    assert not eq("m v^{2}", "\\frac{1}{2} m v^2", "default", checker)


@pytest.mark.processes
def test_ocw_symbolic_answers_llemma_protocol(checker):
    assert stem.OCW.equal("x(t)=2e^{-3t}", "y = 2 e^{-3 t}", "llemma", checker)
    assert not stem.OCW.equal("3e^{-3t}", "y = 2 e^{-3 t}", "llemma", checker)


def test_ocw_extraction_by_protocol():
    gen = ("The charge is $Q = It = \\boxed{6}$ C.\n"
           "Final Answer: The final answer is $6 \\mathrm{~C}$. I hope it is correct.")
    assert stem.OCW.extract(gen, "default") == "$6 \\mathrm{~C}$"
    assert stem.OCW.extract(gen, "llemma") == "6\\mathrm{~C}"  # Minerva-normalised (spaces removed)
    boxed_only = "So the speed is $\\boxed{3.2\\times10^{4}}$ m/s."
    assert stem.OCW.extract(boxed_only, "default") == "3.2\\times10^{4}"
    assert stem.OCW.extract(boxed_only, "llemma") is None
    two = ("Final Answer: The final answer is $5$. I hope it is correct.\n"
           "Final Answer: The final answer is $7$. I hope it is correct.")
    assert (stem.OCW.extract(two, "default"), stem.OCW.extract(two, "llemma")) == ("$7$", "5")


@pytest.mark.parametrize("gen,default,llemma", [
    ("Final Answer: The final answer is (B). I hope it is correct.", "B", "B"),
    # two phrases: default takes the last, llemma the first
    ("The final answer is (A). Wait, recheck.\nFinal Answer: The final answer is (C). I hope it is correct.", "C", "A"),
    # only a trailing "(B)": default falls back, llemma has no answer
    ("Doubling 5 gives 10, which is choice (B)", "B", None),
    ("Both (A) and (D) look close, so the answer is D", "D", None),
    ("The final answer is D. I hope it is correct.", "D", None),  # no brackets: llemma wants "(X)"
    ("The final answer is Avogadro's number.", None, None),
    ("I am not sure.", None, None),
])
def test_mc_extraction_by_protocol(gen, default, llemma):
    assert stem.MC.extract(gen, "default") == default
    assert stem.MC.extract(gen, "llemma") == llemma


def test_mc_gold_and_equal():
    assert [stem.MC.gold(r, "default") for r in ("B", "(c)", "AB", "E")] == ["B", "C", None, None]
    assert stem.MC.equal("b", "B", "llemma", None) and not stem.MC.equal("A", "B", "default", None)
    assert not stem.MC.equal(None, "B", "default", None)


def test_voting_keys():
    assert stem.OCW.key("$\\boxed{3.2 \\times 10^{4}}$", "default") == stem.OCW.key("3.2\\times10^{4}", "default")
    assert stem.OCW.key("$6$", "llemma") == "$6$" and stem.MC.key("b", "default") == "B"


def test_llemma_math_prompt_puts_each_solution_on_its_own_line(manager, tmp_path):
    """The Llemma paper's MATH prompt has "Solution:\\nThe ..."; lm-eval's default delimiter gave "Solution: The"."""
    from lm_eval.tasks import TaskManager

    from llemma_eval.toy_bench import write_math

    write_math(str(tmp_path))
    m = TaskManager(include_path=TASKS_DIR, include_defaults=False, metadata={"data_dir": str(tmp_path)})
    _, prompt, _ = _prompt((m, None), "llemma_math")
    assert prompt.startswith("Problem:\nFind the domain of the expression") and "\n\nSolution:\nThe expressions" in prompt
    assert "Solution: The" not in prompt and prompt.endswith("\n\nSolution:")
    mmlu_majk, _, _ = _prompt(manager, "llemma_mmlu_stem_majk")
    assert mmlu_majk.config.repeats == 16 and mmlu_majk.config.generation_kwargs["temperature"] == 0.3
