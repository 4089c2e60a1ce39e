"""Nothing that can run code is read from the wire or from disk: no pickle, eval, exec, marshal and kin.

The packages are parsed (not grepped), so a docstring saying "without pickle." is no hit, while an
import, a call or a keyword argument in code is, wherever it hides.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = [REPO / "edx_live", REPO / "protocol" / "edx_protocol", REPO / "adapters" / "edx_adapters"]

#: Modules whose loading can run code (pickle and its relatives, code objects, unpickling wrappers).
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}
#: Builtins that run strings as code.
UNSAFE_CALLS = {"eval", "exec", "__import__"}
#: Loaders that read pickles (numpy's unless ``allow_pickle=False``; pandas'; yaml's full loader).
NUMPY = {"np", "numpy"}


def _name(node) -> str:
    """``a.b.c`` of a Name/Attribute chain ('' for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def unsafe(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` for every use in ``source`` of something that can run code from data."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            hits += [(node.lineno, f"import {a.name}") for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in UNSAFE_MODULES:
            hits.append((node.lineno, f"from {node.module} import"))
        elif isinstance(node, ast.Attribute) and ("pickle" in node.attr.lower() or _name(node.value) in UNSAFE_MODULES):
            hits.append((node.lineno, _name(node) or node.attr))
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle" and not (
                isinstance(node.value, ast.Constant) and node.value.value is False):
            hits.append((node.value.lineno, "allow_pickle not False"))
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            if name in UNSAFE_CALLS or name.rsplit(".", 1)[-1] in ("eval", "exec") and name.startswith("builtins."):
                hits.append((node.lineno, f"{name}("))
            elif name.split(".")[0] in NUMPY and name.endswith(".load"):
                flag = _keyword(node, "allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    hits.append((node.lineno, f"{name}( without allow_pickle=False"))
            elif name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
                hits.append((node.lineno, f"{name}("))
    return hits


def _sources():
    for package in PACKAGES:
        yield from sorted(package.rglob("*.py"))


def test_the_checker_finds_what_it_looks_for():
    sample = '''
"""Docstrings may say pickle.load or eval( freely."""
import pickle, json
from joblib import dump
import marshal as m
import numpy as np
x = eval("1")
exec("y = 1")
a = np.load("f.npy")
b = np.load("f.npy", allow_pickle=False)
c = np.load("f.npz", allow_pickle=True)
d = pickle.loads(b"")
e = frame.to_pickle("x")
import dill.source
# pickle.dump in a comment
'''
    found = {what for _, what in unsafe(sample)}
    assert found == {"import pickle", "from joblib import", "import marshal", "eval(", "exec(",
                     "np.load( without allow_pickle=False", "allow_pickle not False", "pickle.loads",
                     "frame.to_pickle", "import dill.source"}
    assert sorted(line for line, what in unsafe(sample) if what.startswith("np.load")) == [9, 11]


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: str(p.relative_to(REPO)))
def test_no_code_runs_from_data(path):
    hits = unsafe(path.read_text(encoding="utf-8"))
    assert not hits, f"{path.relative_to(REPO)}: " + "; ".join(f"line {line}: {what}" for line, what in hits)


def test_every_package_is_scanned():
    files = list(_sources())
    for package in PACKAGES:
        assert any(p.is_relative_to(package) for p in files), f"no Python file found under {package}"
