"""The layers of pyproject.toml's import-linter contracts hold, and an import that goes the wrong way
fails the check.

``lint-imports`` walks the package's directories, while the wings (``agents/``, ``env/``, ...)
install under ``sdl`` from the top level of the repository (``[tool.setuptools.package-dir]``); so
the check runs on the package assembled as it is imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def assemble(into: Path) -> Path:
    """The package tree as installed: sdl/ with every mapped subpackage inside it."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / mapping["sdl"], into / "sdl", ignore=ignore)
    for package, folder in mapping.items():
        if package != "sdl":
            shutil.copytree(ROOT / folder, into / package.replace(".", "/"), ignore=ignore, dirs_exist_ok=True)
    return into


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_are_kept(tmp_path):
    done = lint(assemble(tmp_path / "tree"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_an_import_against_the_layers_fails_the_check(tmp_path):
    tree = assemble(tmp_path / "tree")
    (tree / "sdl" / "env" / "wrong_way.py").write_text("from sdl.campaign import Campaign  # the world driving the loop\n")
    (tree / "sdl" / "surrogates" / "on_the_bus.py").write_text("import zmq\n")
    done = lint(tree)
    assert done.returncode != 0
    assert "Each layer sees only the layers below BROKEN" in done.stdout
    assert "sdl.env.wrong_way -> sdl.campaign" in done.stdout
    assert "sdl.surrogates.on_the_bus -> zmq" in done.stdout
