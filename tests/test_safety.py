"""Safe loading, audited: genft never runs code that arrives with a file.

* no ``trust_remote_code=True`` written into genft (only a user's explicit choice passes it);
* weights only as safetensors: ``from_pretrained`` never gets ``use_safetensors=False``;
* no pickle: no pickle-family imports, ``torch.load`` only with ``weights_only=True``, no
  ``pandas.read_pickle`` / ``numpy allow_pickle=True``;
* config content never executed: no ``eval``/``exec``/``compile``/``__import__``, YAML only
  through ``yaml.safe_load``.

The audit walks the syntax tree of every module under genft/, so comments and strings that
mention these names do not trip it, and renaming an import does not hide a call.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import genft

PACKAGE = Path(genft.__file__).parent
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
EXEC_BUILTINS = {"eval", "exec", "compile", "__import__"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _kw(call: ast.Call, name: str):
    """The constant value of keyword ``name`` (None if absent, ... if not a constant)."""
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else ...
    return None


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def audit(source: str, filename: str = "<src>") -> list[str]:
    """Every unsafe construct in ``source``, as 'file:line: what'."""
    problems = []

    def flag(node, what):
        problems.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    flag(node, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in PICKLE_MODULES:
                flag(node, f"imports from {node.module}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if _kw(node, "trust_remote_code") is True:
                flag(node, f"{name}(trust_remote_code=True)")
            if _kw(node, "use_safetensors") is False:
                flag(node, f"{name}(use_safetensors=False)")
            if _kw(node, "allow_pickle") is True:
                flag(node, f"{name}(allow_pickle=True)")
            if name in EXEC_BUILTINS:
                flag(node, f"{name}()")
            if last == "load" and name.split(".")[0] == "torch" and _kw(node, "weights_only") is not True:
                flag(node, "torch.load without weights_only=True")
            if name.split(".")[0] == "yaml" and last in UNSAFE_YAML:
                flag(node, f"{name}() (use yaml.safe_load)")
            if last in ("read_pickle", "to_pickle"):
                flag(node, f"{name}()")
    return problems


def test_the_audit_catches_each_unsafe_construct():
    bad = """
import pickle
from dill import loads
import torch, yaml
m = AutoModelForCausalLM.from_pretrained(p, trust_remote_code=True)
m = AutoModelForCausalLM.from_pretrained(p, use_safetensors=False)
s = torch.load(f)
s = torch.load(f, weights_only=False)
c = yaml.load(text)
c = yaml.unsafe_load(text)
eval(expr)
exec(code)
df = pandas.read_pickle(f)
a = numpy.load(f, allow_pickle=True)
"""
    flagged = {int(p.split(":")[1]) for p in audit(bad)}
    assert flagged == {2, 3, *range(5, 15)}, audit(bad)  # every line but `import torch, yaml`
    good = """
import torch, yaml
s = torch.load(f, weights_only=True)
c = yaml.safe_load(text)
m = AutoModelForCausalLM.from_pretrained(p, trust_remote_code=trust_remote_code, use_safetensors=True)
text = "eval( torch.load( pickle trust_remote_code=True"  # strings are not code
"""
    assert audit(good) == []


def test_genft_source_has_no_unsafe_loading_or_execution():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20  # the whole package, not an empty glob
    problems = [p for f in files for p in audit(f.read_text(encoding="utf-8"), str(f.relative_to(PACKAGE.parent)))]
    assert problems == []


class _Stop(Exception):
    pass


def test_load_model_defaults_to_no_remote_code_and_safetensors(monkeypatch, tmp_path):
    import transformers

    seen = {}

    def fake_from_pretrained(path, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    from genft.errors import GenftError
    from genft.models import load_model

    with pytest.raises(GenftError):  # the loader's failure, reported as one line
        load_model(str(tmp_path))
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


def test_trust_remote_code_only_when_the_user_asks(monkeypatch, tmp_path):
    import transformers

    from genft.errors import GenftError
    from genft.models import load_tokenizer

    seen = []

    def fake_from_pretrained(path, **kwargs):
        seen.append(kwargs)
        raise _Stop

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    for ask in ({}, {"trust_remote_code": True}):
        with pytest.raises(GenftError):
            load_tokenizer(str(tmp_path), **ask)
    assert [kw["trust_remote_code"] for kw in seen] == [False, True]


def test_yaml_tags_that_would_build_python_objects_are_refused(tmp_path):
    """Task and experiment YAML go through yaml.safe_load: a python/object tag is an error,
    never a constructor call."""
    from genft.errors import GenftError
    from genft.tasks.task import load_task_file

    path = tmp_path / "t.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned > pwned.txt']\n")
    with pytest.raises(GenftError, match=r"t.yaml:1: malformed YAML \(could not determine a constructor"):
        load_task_file(path)
    assert not (Path.cwd() / "pwned.txt").exists()
