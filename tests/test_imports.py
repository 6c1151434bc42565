"""The shape of the package: imports run one way (no cycles, lazy imports included), and no module
reaches into another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "detoxrl"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every ``from detoxrl[.module] import names`` and ``import detoxrl.module`` in a
    file, at any depth (a lazy import inside a function is still an edge of the graph)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from .x import y
                base = node.module or ""
            elif node.module and (node.module == "detoxrl" or node.module.startswith("detoxrl.")):
                base = node.module[len("detoxrl."):] if node.module != "detoxrl" else ""
            else:
                continue
            names = [a.name for a in node.names]
            if base:
                out.append((base.split(".")[0], names))
            else:  # from detoxrl import compare, runfiles
                out += [(n, []) for n in names]
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".")[1], []) for a in node.names if a.name.startswith("detoxrl.")]
    return out


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return {p.stem: {m for m, _ in _imports(p) if m in modules and m != p.stem} for p in PACKAGE.glob("*.py")}


def test_no_import_cycle():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for module, names in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and module != path.stem:
                offenders.append(f"{path.stem} imports {', '.join(private)} from {module}")
    assert not offenders, offenders


def test_only_the_command_line_imports_the_trainer():
    """Training sits above the stages: the trainer wires them, and only cli (the top) builds a trainer."""
    importers = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "trainer" and "trainer" in _graph()[p.stem])
    assert importers == ["cli"], importers


def test_no_function_over_100_lines_but_the_argument_parser():
    long = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 100:
                long.append(f"{path.stem}.{node.name}")
    assert long == ["cliargs.build_parser"], long


def _reachable(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_training_never_imports_reporting():
    """The trainers save the adapter; the workflow that ends a run (cli, demo) writes its card and report,
    so a change to the report cannot break training, and training can run without matplotlib's import."""
    graph = _graph()
    reporting = {"modelcard", "report", "report_pages", "report_plots"}
    for trainer in ("trainer", "sft", "runfolder", "checkpoint", "collection"):
        reached = _reachable(trainer, graph) & reporting
        assert not reached, f"{trainer} reaches {sorted(reached)}"


def test_benchmarks_use_no_private_names_of_the_package():
    offenders = []
    for path in sorted((PACKAGE.parents[1] / "benchmarks").glob("*.py")):
        for module, names in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                offenders.append(f"{path.name} imports {', '.join(private)} from {module}")
        text = path.read_text(encoding="utf-8")
        for mod in {p.stem for p in PACKAGE.glob("*.py")}:
            if f"{mod}._" in text.replace(f"{mod}.__", ""):
                offenders.append(f"{path.name} uses a private name of {mod}")
    assert not offenders, offenders


def test_the_public_api_is_importable_from_the_package_without_loading_torch_first():
    import subprocess
    import sys

    code = ("import sys, detoxrl; assert 'torch' not in sys.modules; "
            "from detoxrl import Trainer, SupervisedTrainer, PreferenceTrainer, load_config, FunctionScorer, RewardFunction, evaluate_adapter, "
            "write_report, refresh_model_card, DetoxError, DetoxConfig; print(Trainer.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "Trainer", out.stderr


#: The package's floors, lowest first: a module imports only from its own floor or those below
#: (docs/design.md shows the same table). A new module must be given its floor here.
LAYERS = {
    "foundations": ["errors", "config", "runtime", "collective", "runfiles", "packaged", "scores"],
    "math": ["tokenstats", "advantages", "losses", "stats", "schedule", "sampling"],
    "models": ["keras_bilstm", "hatesonar", "modelcheck", "rewards", "policy", "quality"],
    "data": ["prompts", "selection"],
    "run folder": ["checkpoint", "trained", "runfolder"],
    "stages": ["rollout", "collection", "update", "preflight", "compare", "tiny"],
    "evaluation and outputs": ["evaluate", "report_plots", "report_pages", "report", "modelcard", "summarize", "export"],
    "workflows": ["trainer", "sft", "dpo", "demo"],
    "command line": ["cliargs", "cli", "__main__", "__init__"],
}


def test_imports_run_down_the_floors():
    floor = {m: i for i, names in enumerate(LAYERS.values()) for m in names}
    graph = _graph()
    assert sorted(graph) == sorted(floor), f"modules without a floor: {sorted(set(graph) - set(floor))}"
    upward = [f"{a} ({list(LAYERS)[floor[a]]}) imports {b} ({list(LAYERS)[floor[b]]})"
              for a, deps in graph.items() for b in deps if floor[b] > floor[a]]
    assert not upward, upward
