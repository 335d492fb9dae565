"""The one-way architecture, read from the source with ``ast``: prediction and serving never
import the training side, scikit-learn, matplotlib, tqdm or torchvision (not at import time,
and not for a plain prediction), and no two faceattr modules import each other in a cycle.
A last check runs a real prediction in a fresh interpreter and lists what it loaded."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "faceattr"

# What answers `faceattr predict photo.jpg` and `faceattr serve`, and what they build on.
INFERENCE = {
    "predictor", "inference", "onnxmodel", "serve", "align", "imageio", "mtcnn", "pretrained", "calibration",
    "runs", "labels", "checkpoint", "device", "model", "tasks", "age", "bulk", "inputs", "writers", "drawing",
    "atomic", "inputerror", "cli",
}  # fmt: skip
TRAINING_SIDE = {
    "train", "config", "augment", "sampling", "split", "cache", "preprocess", "evaluation", "report",
    "datareport", "explain", "clusters", "prepare", "readers", "dedupe", "release", "metrics", "figures",
    "teacher", "agerefit", "originals",
}  # fmt: skip
HEAVY = {"sklearn", "matplotlib", "tqdm", "torchvision"}
# Lazy imports that are allowed to reach the training side: Grad-CAM on demand (serve's
# ?explain=true) and the CLI's training, evaluation, export and audit commands (the audit's
# report draws plots).
ON_DEMAND = {("serve", "explain")} | {("cli", m) for m in TRAINING_SIDE | {"audit"}}


def module_imports(path: Path, package: str = "faceattr") -> tuple[set[str], set[str]]:
    """(eager, lazy) imports of one module: eager ones run when it is imported (module level,
    class bodies, ``try``/``if`` blocks), lazy ones inside functions. Names are the top-level
    package for outside imports and ``faceattr.<module>`` for the package's own."""
    tree = ast.parse(path.read_text(), filename=str(path))
    eager: set[str] = set()
    lazy: set[str] = set()

    def names(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Import):
            return {_own(a.name, package) for a in node.names}
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == package:  # from faceattr import x: x may be a module
                return {f"{package}.{a.name}" for a in node.names}
            return {_own(node.module, package)}
        return set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            (lazy if in_function else eager).update(names(child))
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, nested)

    visit(tree, False)
    return eager, lazy


def _own(name: str, package: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == package else parts[0]


def import_graph(folder: Path, package: str = "faceattr") -> dict[str, tuple[set[str], set[str]]]:
    """module name -> (eager, lazy) imports, for every module of the package folder."""
    graph = {}
    for path in sorted(folder.glob("*.py")):
        name = package if path.stem == "__init__" else f"{package}.{path.stem}"
        graph[name] = module_imports(path, package)
    return graph


def reachable(graph: dict, start: str, lazy: bool, allowed: set[tuple[str, str]] = frozenset()) -> set[str]:
    """Everything ``start`` loads: eager imports transitively, plus (``lazy``) the imports its
    functions make, except the edges in ``allowed``. A module's import also runs its package's
    __init__."""
    seen, todo = set(), [start]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        eager, inner = graph.get(mod, (set(), set()))
        for dep in eager | (inner if lazy else set()):
            if (mod.split(".")[-1], dep.split(".")[-1]) not in allowed:
                todo.append(dep)
    return seen - {start}


def violations(graph: dict, inference: set[str], forbidden: set[str], package: str = "faceattr") -> list[str]:
    """One line per inference module that reaches a forbidden module or library."""
    bad = []
    for short in sorted(inference):
        name = f"{package}.{short}"
        if name not in graph:
            continue
        for lazy, label in ((False, "at import"), (True, "in a call")):
            allowed = ON_DEMAND if lazy else set()
            hit = {m for m in reachable(graph, name, lazy, allowed) if m.split(".")[-1] in forbidden or m in forbidden}
            if hit:
                bad.append(f"{name} reaches {sorted(hit)} {label}")
    return bad


def cycles(graph: dict) -> list[list[str]]:
    """Import cycles among the package's modules (eager and lazy edges alike)."""
    found, state = [], {}

    def walk(mod: str, stack: list[str]) -> None:
        state[mod] = "open"
        eager, lazy = graph[mod]
        for dep in sorted(eager | lazy):
            if dep not in graph or dep == "faceattr":
                continue
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                walk(dep, [*stack, dep])
        state[mod] = "done"

    for mod in graph:
        if mod not in state:
            walk(mod, [mod])
    return found


def test_inference_never_reaches_the_training_side_or_heavy_libraries():
    graph = import_graph(PACKAGE)
    assert {f"faceattr.{m}" for m in INFERENCE} <= set(graph), "a listed inference module no longer exists"
    assert violations(graph, INFERENCE, TRAINING_SIDE | HEAVY) == []


def test_no_import_cycles():
    assert cycles(import_graph(PACKAGE)) == []


def test_the_rule_check_catches_a_violation_and_a_cycle(tmp_path):
    pkg = tmp_path / "faceattr"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "predictor.py").write_text("import numpy\n\ndef run():\n    from faceattr import train\n")
    (pkg / "serve.py").write_text("try:\n    import sklearn.metrics\nexcept ImportError:\n    pass\n")
    (pkg / "train.py").write_text("import torch\nfrom faceattr.predictor import run\n")
    graph = import_graph(pkg)
    assert graph["faceattr.serve"][0] == {"sklearn"}  # inside try: still at import time
    found = violations(graph, {"predictor", "serve"}, {"train", "sklearn"})
    assert found == [
        "faceattr.predictor reaches ['faceattr.train'] in a call",
        "faceattr.serve reaches ['sklearn'] at import",
        "faceattr.serve reaches ['sklearn'] in a call",
    ]
    assert cycles(graph) == [["faceattr.predictor", "faceattr.train", "faceattr.predictor"]]


PROBE = """
import json, sys
import numpy as np
from PIL import Image
from faceattr import Predictor
predictor = Predictor.from_pretrained()
faces = predictor.predict(Image.new("RGB", (64, 48), (120, 100, 90)))
print(json.dumps({"faces": len(faces), "backend": predictor.backend, "modules": sorted(sys.modules)}))
"""


def test_a_plain_prediction_loads_no_torch_and_no_training_code():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    loaded = set(result["modules"])
    assert result["backend"] == "onnx" and result["faces"] == 0
    assert "onnxruntime" in loaded and "faceattr.mtcnn" in loaded  # the probe did detect
    heavy = {m for m in loaded if m.split(".")[0] in HEAVY | {"torch", "scipy"}}
    training = {m for m in loaded if m.startswith("faceattr.") and m.split(".")[1] in TRAINING_SIDE}
    assert heavy == set() and training == set()


@pytest.mark.parametrize("command", [["--help"], ["predict", "--help"]])
def test_the_command_line_starts_without_torch(command):
    probe = (
        "import sys, runpy; sys.argv = ['faceattr', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('faceattr', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'faceattr.predictor' in sys.modules, file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, timeout=60)
    assert "usage: faceattr" in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "False False"
