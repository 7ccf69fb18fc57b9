"""What importing ppp_zoo does and does not do.

What is proven: importing every module of ppp_zoo leaves the environment variables as they
were, and no module writes one at import time (a scan of the module-level statements);
the consumer side (runtime, postprocess, io, evaluate) and the configuration import and
work with torch unimportable, a ``ppp+dec`` configuration included; bioimageio.spec's HTTP
timeout is set around bioimageio.core's test only (the environment's value winning) and
put back; and the import contracts of ``.importlinter`` hold (when import-linter is
installed).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ppp_zoo"

#: blocks ``import torch`` in a child process
BLOCK_TORCH = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, Block())
""")


def _child(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_importing_every_module_sets_no_environment_variable():
    code = textwrap.dedent("""
        import importlib, json, os, pkgutil
        before = dict(os.environ)
        import ppp_zoo
        names = [m.name for m in pkgutil.walk_packages(ppp_zoo.__path__, "ppp_zoo.")
                 if not m.name.startswith("ppp_zoo.napari._")]  # Qt widgets: need a display
        for name in names:
            importlib.import_module(name)
        after = dict(os.environ)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        print(json.dumps({"modules": len(names), "changed": changed}))
    """)
    result = json.loads(_child(code))
    assert result["modules"] > 40
    assert result["changed"] == []


def _module_level(tree: ast.Module):
    """The statements that run at import: everything outside function bodies."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def _writes_environment(node) -> bool:
    def is_environ(expr) -> bool:
        return (isinstance(expr, ast.Attribute) and expr.attr == "environ") or \
            (isinstance(expr, ast.Name) and expr.id == "environ")

    if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        return any(isinstance(t, ast.Subscript) and is_environ(t.value) for t in targets)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr in ("setdefault", "update", "pop", "clear") and \
                is_environ(node.func.value):
            return True
        return node.func.attr in ("putenv", "unsetenv")
    return False


def test_no_module_writes_the_environment_at_import():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        found += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in _module_level(tree)
                  if _writes_environment(node)]
    assert found == []


def test_the_scan_finds_an_environment_write():
    tree = ast.parse("import os\nos.environ.setdefault('A', '1')\nos.environ['B'] = '2'\n"
                     "def f():\n    os.environ['C'] = '3'\n")
    assert sorted(n.lineno for n in _module_level(tree) if _writes_environment(n)) == [2, 3]


def test_consumer_side_and_config_need_no_torch():
    code = BLOCK_TORCH + textwrap.dedent("""
        import json, sys
        import ppp_zoo.config, ppp_zoo.evaluate, ppp_zoo.io, ppp_zoo.postprocess
        import ppp_zoo.runtime, ppp_zoo.runtime.compat, ppp_zoo.runtime.doctor
        from ppp_zoo.config import config_from_dict, load_preset
        d = load_preset("nuclei2d-cpu").to_dict()
        d["model"] = dict(d["model"], variant="ppp+dec", code_shape=[4, 4, 4],
                          decoder_features=[16, 8, 8])
        config_from_dict(d)
        d["model"]["decoder_features"] = [16, 8]
        try:
            config_from_dict(d)
            error = None
        except ValueError as err:
            error = str(err)
        torch = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print(json.dumps({"torch": torch, "error": error}))
    """)
    result = json.loads(_child(code))
    assert result["torch"] == []
    assert "decoder_features needs 3 entries" in result["error"]


def test_http_timeout_is_set_around_the_test_only(monkeypatch):
    spec = pytest.importorskip("bioimageio.spec")
    from ppp_zoo.export.validation import bioimageio_http_timeout
    from ppp_zoo.runtime.bioimageio_check import HTTP_TIMEOUT_S

    monkeypatch.delenv("BIOIMAGEIO_HTTP_TIMEOUT", raising=False)
    monkeypatch.setattr(spec.settings, "http_timeout", 10.0)
    environ = dict(os.environ)
    with bioimageio_http_timeout():
        assert spec.settings.http_timeout == HTTP_TIMEOUT_S == 3.0
    assert spec.settings.http_timeout == 10.0
    monkeypatch.setenv("BIOIMAGEIO_HTTP_TIMEOUT", "7")
    environ["BIOIMAGEIO_HTTP_TIMEOUT"] = "7"
    with pytest.raises(KeyError), bioimageio_http_timeout():
        assert spec.settings.http_timeout == 7.0
        raise KeyError("restored on errors too")
    assert spec.settings.http_timeout == 10.0
    assert dict(os.environ) == environ


def test_import_contracts_hold():
    pytest.importorskip("importlinter")
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or \
        shutil.which("lint-imports")
    if command is None:
        pytest.skip("lint-imports is not on the PATH")
    proc = subprocess.run([command, "--no-cache", "--no-logo"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
