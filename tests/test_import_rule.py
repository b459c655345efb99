"""The import rule of docs/design.md ("The import rule"), held on the source tree: the decoding modules that
``save_pretrained`` copies into a checkpoint's ``custom_generate/generate.py`` import only the standard library, torch,
transformers and each other (earlier ones in ``SOURCE_MODULES``), never training code; and no two modules of the
package import each other in a circle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from t3d_trl.generation.custom_generate import REQUIREMENTS, SOURCE_MODULES, build_custom_generate_source

PACKAGE = Path(__file__).resolve().parent.parent / "t3d_trl"
#: third-party packages the shipped decoding code may import (with the standard library)
SHIPPED_DEPENDENCIES = {"torch", "transformers"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """``(absolute module, line)`` of every import in ``path``, relative ones resolved, at any depth of the file."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if node.module is None:  # from . import x: x may be a module
                found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((module, node.lineno))
    return found


SHIPPED = {f"t3d_trl.{name[:-3].replace('/', '.')}": name for name in SOURCE_MODULES}


@pytest.mark.parametrize("module", list(SHIPPED))
def test_shipped_decoding_modules_import_only_torch_transformers_and_earlier_shipped_modules(module):
    position = list(SHIPPED).index(module)
    earlier = set(list(SHIPPED)[:position])
    for name, line in _imports(PACKAGE / SHIPPED[module]):
        top = name.split(".")[0]
        if top == "t3d_trl":
            allowed = earlier | {"t3d_trl.models.sdar"}  # load_pretrained's SDAR mapping: loading, not decoding
            assert name in allowed, (
                f"{SHIPPED[module]}:{line} imports {name}, which custom_generate/generate.py does not hold before it "
                f"(shipped, in order: {list(SHIPPED)})"
            )
        else:
            assert top in SHIPPED_DEPENDENCIES or top in sys.stdlib_module_names, (
                f"{SHIPPED[module]}:{line} imports {name}: a checkpoint's decoding may need only torch and transformers"
            )


def test_the_generated_file_holds_decoding_code_only():
    source = build_custom_generate_source()
    for training_name in ("training_forward", "layout_mask", "window_statistics", "DataCollatorForTrajectory"):
        assert training_name not in source
    compile(source, "custom_generate/generate.py", "exec")


def test_custom_generate_requirements_are_the_package_floors():
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8")
    for line in REQUIREMENTS.splitlines():
        assert f'"{line}"' in pyproject, f"{line} is not the floor pyproject.toml declares"


def test_no_import_circle_between_modules():
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        graph[module] = {name for name, _ in _imports(path) if name.startswith("t3d_trl")} - {module}
    modules = set(graph)
    # an import of a package (t3d_trl.models) is an import of its __init__; of a name inside a module, that module
    graph = {m: {n if n in modules else n.rsplit(".", 1)[0] for n in deps} & modules for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + ".") or node == "t3d_trl":  # a package re-exporting its own modules
                continue
            if state.get(nxt) == 1:
                circle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
