"""The package's architecture holds: stages import only downward (the import contract in pyproject.toml,
checked by import-linter), and no module reaches into another's private names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit  # pure functions: the seconds-long tier

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "factscale"


def _lint(root: Path) -> subprocess.CompletedProcess:
    """import-linter on the ``factscale`` package under ``root``. Python runs with -S: site's .pth files would
    install the editable checkout's import finder, which outranks PYTHONPATH and would analyse this checkout
    instead of a copy; site-packages is put on the path by hand."""
    import sysconfig

    pythonpath = f"{root}:{sysconfig.get_paths()['purelib']}:{sysconfig.get_paths()['platlib']}"
    return subprocess.run([sys.executable, "-S", "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, capture_output=True, text=True, env={"PYTHONPATH": pythonpath, "PATH": "/usr/bin:/bin"})


def test_the_import_contract_holds():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_the_import_contract_fails_on_an_upward_import(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "factscale", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    build = tmp_path / "factscale" / "corpus" / "build.py"
    build.write_text(build.read_text() + "\n\nfrom factscale.training import run as _upward  # noqa\n")
    r = _lint(tmp_path)
    assert r.returncode != 0 and "BROKEN" in r.stdout
    assert "factscale.corpus is not allowed to import factscale.training" in r.stdout, r.stdout[-3000:]


def _private_imports() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("factscale"):
                bad += [f"{path.relative_to(ROOT)}: from {node.module} import {a.name}"
                        for a in node.names if a.name.startswith("_")]
    return bad


def test_no_module_imports_another_modules_private_name():
    assert _private_imports() == []


def test_modules_stay_readable_in_size():
    """A module past ~400 lines is usually two ideas (the design notes); a few known ones are on a list to split."""
    big = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert big == {}, big
