"""The import graph of ``anomaly_vlm``: no circle between modules, no arrow from a lower layer up.

Every import counts, also those inside functions or under ``TYPE_CHECKING``: a deferred import is
still a dependency, just a hidden one.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "anomaly_vlm"

#: Lower layers never import higher ones; a package may import its own modules and any lower layer.
LAYERS: dict[str, int] = {
    # how counts read in messages ("1 image", "2 images"): below the utilities, which use it
    "wording": -1,
    # utilities: know nothing of the rest
    "runtime": 0,
    "compat": 0,
    "resolvers": 0,
    "untrusted": 0,  # reading handed-over files: size/depth-limited JSON, checksums, pickle-free loads
    "cache": 0,  # content-addressed feature store (data digests files with it)
    # the typed schema of the run config (registers the resolvers it interpolates)
    "config": 1,
    # foundations
    "backbones": 1,
    "data": 1,
    "metrics": 1,
    # built on one foundation each
    "prompts": 2,
    "reporting": 2,
    # methods: backbone + prompts + typed batches
    "methods": 3,
    # analyses over many runs' results.json (runs train.py in a subprocess, so it imports no task); it
    # reads the method catalog
    "analysis": 4,
    # what runs around a method: the evaluation path, efficiency probe, loggers
    "callbacks": 4,
    "loggers": 4,
    # thresholds and decisions on finished categories; saved detectors built on them
    "decisions": 5,
    "deploy": 6,
    # entry-point tasks; export of saved detectors beside them
    "tasks": 7,
    "export": 7,
    # checks of the command line before Hydra starts (train.py, evaluate.py)
    "entry": 8,
    # the inspection service over saved detectors (their ONNX graphs included)
    "serve": 8,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The ``anomaly_vlm`` modules ``path`` imports (``from pkg import module`` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


@functools.cache
def _graph() -> dict[str, frozenset[str]]:
    """Each module's ``anomaly_vlm`` imports, parsed once per process (three tests only read it)."""
    modules = _modules()
    return {name: frozenset(_imports(path, set(modules)) - {name}) for name, path in modules.items()}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "anomaly_vlm"


def test_every_area_has_a_layer():
    areas = {_area(module) for module in _modules()} - {"anomaly_vlm"}
    assert areas <= set(LAYERS), f"give {sorted(areas - set(LAYERS))} a layer in LAYERS"


def test_no_import_points_up_or_sideways_across_layers():
    wrong = []
    for module, targets in _graph().items():
        if _area(module) == "anomaly_vlm":
            continue  # the package root only re-exports its version
        for target in targets:
            source_area, target_area = _area(module), _area(target)
            if target_area == "anomaly_vlm" or source_area == target_area:
                continue
            if LAYERS[target_area] >= LAYERS[source_area]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_import_graph_has_no_circle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if node.startswith(f"{target}.") or target.startswith(f"{node}."):
                continue  # a package's __init__ re-exports its own modules: not a circle
            if state.get(target) == 1:
                circles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_task_function_is_longer_than_a_screen():
    """``tasks/`` reads top-down: small functions whose names say what they do (about 60 lines at most)."""
    long = []
    for path in sorted((PACKAGE / "tasks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "split these:\n" + "\n".join(long)


def test_only_the_backbone_touches_the_vision_tower():
    """Methods use the backbone's capabilities (blocks, taps, ln_pre/ln_post), never ``visual.*``."""
    import re

    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "backbones" not in path.relative_to(PACKAGE).parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bvisual\.", line)
    ]
    assert not found, "\n".join(found)


def test_only_the_backbone_touches_the_dinov2_model():
    """Methods read DINOv2 through ``patch_tokens`` (its declared capability), never its ``vit`` module."""
    import re

    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "backbones" not in path.relative_to(PACKAGE).parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.vit\b", line)
    ]
    assert not found, "\n".join(found)


def test_no_method_imports_another_method():
    """Each ``methods/<name>/`` stands alone; what two methods share lives in ``methods/ops.py``."""
    wrong = []
    for module, targets in _graph().items():
        parts = module.split(".")
        if len(parts) < 4 or parts[1] != "methods":
            continue
        for target in targets:
            other = target.split(".")
            is_method = (
                len(other) >= 3 and other[1] == "methods" and (PACKAGE / "methods" / other[2]).is_dir()
            )
            if is_method and other[2] != parts[2]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "methods importing other methods:\n" + "\n".join(sorted(wrong))
