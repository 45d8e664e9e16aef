"""The package layout is the architecture: layers import only downward, no import circles,
no private name used outside its module, and `import spo.algo` stays light.

Layers (low to high; a module may import its own layer and the ones below):
    algo < tasks, tools, policy, sim < rollout < eval < train < study, integrations
    < commands < cli
Imports under `if TYPE_CHECKING:` are for type hints only and not counted.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "spo"
LAYERS = {
    "algo": 0,
    "tasks": 1,
    "tools": 1,
    "policy": 1,
    "sim": 1,
    "rollout": 2,
    "eval": 3,
    "train": 4,
    "study": 5,
    "integrations": 5,
    "commands": 6,
    "cli": 7,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def _imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every spo import in `path`."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("spo")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "spo" or mod.startswith("spo."):
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    target = (
                        sub
                        if (ROOT.parent / sub.replace(".", "/")).exists()
                        or (ROOT.parent / (sub.replace(".", "/") + ".py")).is_file()
                        else mod
                    )
                    out.append((target, None if target == sub else a.name, node.lineno))
    return out


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else -1  # `spo` itself: below everything


def _edges() -> dict[str, set[str]]:
    return {
        m: {t for t, _, _ in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items()
    }


def test_every_package_has_a_layer():
    unknown = sorted({m.split(".")[1] for m in MODULES if m != "spo" and _layer(m) is None})
    assert not unknown, f"add these top-level modules/packages to LAYERS: {unknown}"


def test_layers_import_only_downward():
    bad = []
    for m, p in MODULES.items():
        for target, _, line in _imports(p):
            if target.startswith("spo") and _layer(target) > _layer(m):
                bad.append(f"{p.relative_to(ROOT.parent)}:{line} {m} imports {target}")
    assert not bad, "\n".join(bad)


def test_algo_imports_nothing_of_spo_but_itself():
    bad = [
        f"{m} imports {t}"
        for m, p in MODULES.items()
        if m.startswith("spo.algo")
        for t, _, _ in _imports(p)
        if not t.startswith("spo.algo")
    ]
    assert not bad, bad


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert not _cycles(_edges())


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_used_outside_its_module():
    bad = []
    for m, p in MODULES.items():
        for target, name, line in _imports(p):
            private_module = any(part.startswith("_") for part in target.split(".")[1:])
            same_package = target.rpartition(".")[0] in (m, m.rpartition(".")[0])
            if name and name.startswith("_") and name != "__version__":
                bad.append(f"{p.relative_to(ROOT.parent)}:{line} imports {target}.{name}")
            elif private_module and not same_package:
                bad.append(f"{p.relative_to(ROOT.parent)}:{line} imports private {target}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("heavy", ["ray", "vllm", "matplotlib", "transformers"])
def test_import_spo_algo_is_light(heavy):
    code = f"import sys, spo.algo; print({heavy!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"`import spo.algo` imports {heavy}"
