"""The declared layers (neox.LAYERS): every import of neox/ and llemma_eval/, inside functions too,
goes down or sideways within a room, and no module imports itself through others (no cycle)."""

import ast
import os
import re
import shutil

import neox

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("neox", "llemma_eval")


def modules(root: str) -> dict[str, str]:
    """Dotted name -> file, for every module of the two packages under ``root``."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(root, package)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
                    found[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, name)
    return found


def imports(module: str, path: str, known: dict) -> set[str]:
    """The project modules ``module`` imports anywhere in its file (a name imported from a package
    counts as the submodule when it is one)."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    out = set()
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != module:
                out.add(target)
    return out


def graph(root: str) -> dict[str, set[str]]:
    known = modules(root)
    return {m: imports(m, p, known) for m, p in known.items()}


def layer_violations(g: dict) -> list[str]:
    bad = []
    for module, targets in sorted(g.items()):
        room = neox.room_of(module)
        for target in sorted(targets):
            if neox.room_of(target) not in neox.may_import(room):
                bad.append(f"{module} imports {target}: room {room} may not import room {neox.room_of(target)} "
                           f"({room} builds on: {', '.join(neox.LAYERS[room]) or 'nothing'})")
    return bad


def cycles(g: dict) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def check(root: str) -> list[str]:
    g = graph(root)
    return layer_violations(g) + [f"import cycle: {' -> '.join(c)}" for c in cycles(g)]


def test_every_room_is_declared_and_every_import_follows_the_layers():
    g = graph(REPO)
    assert len(g) > 90  # the reader finds the modules ...
    assert "neox.train.run_state" in g["neox.train.trainer"]  # ... and their imports, function-level too
    assert "neox.launch.local_launch" in g["neox.cli.deepy"]
    assert {neox.room_of(m) for m in g} == set(neox.LAYERS) == set(neox.ROOMS)
    assert check(REPO) == []


def test_a_planted_upward_import_and_a_planted_cycle_are_caught_naming_the_modules(tmp_path):
    for package in PACKAGES:
        shutil.copytree(os.path.join(REPO, package), tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    model = tmp_path / "neox" / "model" / "partition.py"
    model.write_text(model.read_text() + "\n\ndef late():\n    from neox.train import step  # noqa\n")
    errors = check(str(tmp_path))
    assert errors == ["neox.model.partition imports neox.train.step: room model may not import room train "
                      "(model builds on: base)"]
    flops = tmp_path / "neox" / "model" / "flops.py"
    flops.write_text(flops.read_text() + "\nfrom neox.model.planner import plan  # noqa\n")
    assert check(str(tmp_path))[1:] == ["import cycle: neox.model.flops -> neox.model.planner"]


def test_the_diagram_in_the_readme_and_docs_is_the_declared_layers():
    for doc in ("README.md", os.path.join("docs", "design.md")):
        with open(os.path.join(REPO, doc)) as f:
            blocks = re.findall(r"```mermaid\n.*?```", f.read(), re.S)
        assert blocks == [neox.mermaid()], f"{doc}: paste neox.mermaid() (python -c 'import neox; print(neox.mermaid())')"
    with open(os.path.join(REPO, "README.md")) as f:
        assert neox.room_list() in f.read(), "README.md: paste neox.room_list()"


def test_no_function_over_80_lines_and_cli_modules_only_parse_arguments():
    long, big = [], []
    for package in (*PACKAGES, "tools"):
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in (n for n in files if n.endswith(".py")):
                path = os.path.join(folder, name)
                with open(path) as f:
                    text = f.read()
                for node in ast.walk(ast.parse(text)):
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        length = node.end_lineno - node.lineno + 1
                        if length > 80:
                            long.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name}: {length} lines")
                if folder == os.path.join(REPO, "neox", "cli") and len(text.splitlines()) > 200:
                    big.append(f"{os.path.relpath(path, REPO)}: {len(text.splitlines())} lines")
    assert long == [] and big == []


def unannotated_public_functions(root: str = REPO) -> list[str]:
    """Public functions and methods (no leading underscore) of neox/ and llemma_eval/ with a parameter
    or the return value not annotated (``__init__`` returns nothing to annotate)."""
    found = []
    for module, path in sorted(modules(root).items()):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_") \
                    and node.name != "__init__":
                continue
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            params = [a.arg for a in args if a.annotation is None and a.arg not in ("self", "cls")]
            params += [f"*{a.arg}" for a in (node.args.vararg, node.args.kwarg) if a is not None and a.annotation is None]
            if params or (node.returns is None and node.name != "__init__"):
                what = ", ".join(params) + ("; return" if node.returns is None and node.name != "__init__" else "")
                found.append(f"{os.path.relpath(path, root)}:{node.lineno} {node.name}: {what.strip('; ')}")
    return found


def test_public_functions_are_annotated():
    assert unannotated_public_functions() == []
