"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they
catch a wrong import: a copy of the packages whose bottom layer imports
pipelines fails them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("preprocess", "pipelines", "flows", "concerto", "testkit")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run lint-imports on the packages under ``root`` with ``root``'s
    pyproject.toml, in a fresh interpreter whose path starts at ``root`` (so
    an installed copy of the packages is not the one analysed)."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_contracts_hold():
    res = lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout, res.stdout


def test_a_wrong_import_breaks_the_contracts(tmp_path):
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=lambda d, names: [
            n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir()) or n == "__pycache__"])
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    # sanity: the untouched copy is analysed like the repo (same verdict on every contract)
    clean = lint_imports(tmp_path)
    assert clean.returncode == lint_imports(ROOT).returncode, clean.stdout + clean.stderr
    scene = tmp_path / "preprocess" / "scene.py"
    scene.write_text(scene.read_text() + "\nimport pipelines  # noqa: E402,F401  (deliberately wrong)\n")
    res = lint_imports(tmp_path)
    assert res.returncode != 0, res.stdout + res.stderr
    out = " ".join(res.stdout.split())  # rich wraps long contract names
    assert "bottom layer (top-level modules of preprocess) imports no stage and nothing above BROKEN" in out, out
    assert "flows > pipelines > preprocess BROKEN" in out, out
    assert "preprocess.scene is not allowed to import pipelines" in out, out
