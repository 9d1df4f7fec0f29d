"""The package layout: no import cycles, every registered part and every public name resolves."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import optscale
from optscale.registry import Registry

PKG = Path(optscale.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> optscale modules it imports, at module level or inside functions (lazy imports
    count: they are cycles too). ``if TYPE_CHECKING:`` blocks import nothing at run time."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        type_only = {id(n) for node in ast.walk(tree)
                     if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
                     for b in node.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = _import_graph()
    assert graph["optscale.theory.bounds"] == {"optscale.theory.truncnorm"}  # the graph sees imports
    assert _cycles(graph) == []


REGISTRIES = {
    "optscale.sampling": {"SAMPLERS": {"fake", "hf-cpu", "llama-cpp", "openai", "vllm"}},
    "optscale.scoring.scorers": {"SCORERS": {"answer-judge", "lm-judge", "lowest-group-confidence", "prm", "probe",
                                              "self-certainty", "tail-confidence"}},
    "optscale.policies": {"POLICIES": {"asc", "bon", "consol", "deepconf", "dsc", "esc", "ias", "majority", "optpo",
                                       "optscale-0", "optscale-seq", "optscale-t", "oracle", "weighted-vote"}},
    "optscale.theory.fits": {"FITS": {"beta", "kde", "logit-normal", "truncnorm"}},
    "optscale.predictor.heads": {"BACKBONES": {"lm", "minilm", "text"},
                                 "HEADS": {"constant", "krr", "mlp", "ridge", "ridge+mlp"}},
    "optscale.systems.particle_filter": {"RESAMPLERS": {"multinomial", "systematic"}},
}


@pytest.mark.parametrize("module", sorted(REGISTRIES))
def test_registries_hold_every_part_and_each_resolves(module):
    mod = importlib.import_module(module)
    for attr, expected in REGISTRIES[module].items():
        reg = getattr(mod, attr)
        assert isinstance(reg, Registry)
        assert expected <= set(reg.names())  # tests may register extra parts (a spy policy)
        for name in expected:  # lazy "module:attr" entries import here (heavy backends stay lazy inside)
            assert callable(reg.get(name)), (attr, name)


def test_public_api_resolves():
    for name in optscale.__all__:
        assert getattr(optscale, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        optscale.not_a_name  # noqa: B018
