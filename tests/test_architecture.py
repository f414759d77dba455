"""The import rules of .importlinter hold for the repository, and break when a forbidden import is
added: a copy of the packages gets one new module with such an import and `lint-imports` must fail."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("inference", "phantom", "training", "evaluation", "benchmarks", "tests")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed (requirements-dev.txt)")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / ".importlinter")], cwd=root,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}, capture_output=True, text=True,
                          timeout=120)


def copy_of_repository(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def test_the_repository_keeps_its_contracts():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module, line, contract", [
    ("inference/engine/uses_training.py", "from training.presets import DEMO\n", "imports nothing from training"),
    ("inference/core/uses_cascade.py", "import inference.cascade.segmenter\n", "import downwards only"),
    ("phantom/uses_engine.py", "def load():\n    from inference.engine.model import load_model\n",
     "only inference's core and io"),
])
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract):
    root = copy_of_repository(tmp_path)
    (root / module).write_text(line)
    result = lint_imports(root)
    assert result.returncode != 0
    broken = " ".join(result.stdout.split("Broken contracts", 1)[1].split())  # the report, unwrapped
    assert contract in broken and module.removesuffix(".py").replace("/", ".") in broken, result.stdout
