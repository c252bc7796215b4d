"""The studies live in benchmarks/, outside the library: `python -m benchmarks` and `preftune bench` run them, the
library never imports them, and no module reaches for another's private helpers."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from preftune.cli import app

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ("trl", "iqlearn", "zpg", "joint", "rlp", "smollm2")


def test_preftune_bench_help_lists_the_studies():
    result = CliRunner().invoke(app, ["bench", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert all(re.search(rf"│ {study}\s", result.output) for study in STUDIES), result.output


def test_python_m_benchmarks_help_works_without_torch():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True, text=True,
                          env={"COLUMNS": "200", "PATH": ""}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "python -m benchmarks" in proc.stdout and all(study in proc.stdout for study in STUDIES)
    proc = subprocess.run([sys.executable, "-c", "import sys, benchmarks.cli; print('torch' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def test_an_installed_preftune_without_benchmarks_says_where_the_studies_are(tmp_path):
    shutil.copytree(ROOT / "preftune", tmp_path / "preftune", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "preftune", "bench", "trl", "--steps", "3"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path), "COLUMNS": "300",
                                                               "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 2
    assert "benchmarks/ folder" in proc.stdout + proc.stderr


def _python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_library_never_imports_the_studies():
    # preftune/cli.py mounts benchmarks.cli only when the folder is there; nothing else may depend on it
    offenders = [p for p in _python_files("preftune") if p.name != "cli.py"
                 and re.search(r"^\s*(from|import) benchmarks\b", p.read_text(), re.M)]
    assert not offenders


def test_no_module_imports_another_modules_private_names():
    offenders = [(str(p.relative_to(ROOT)), node.module, alias.name)
                 for folder in ("preftune", "benchmarks") for p in _python_files(folder)
                 for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.ImportFrom)
                 and (node.module or "").split(".")[0] in ("preftune", "benchmarks")
                 for alias in node.names if alias.name.startswith("_")]
    assert not offenders


# docs/architecture.md: a module imports only from its own layer or the layers before it
LAYERS = [("data",), ("tasks", "feedback"), ("models", "tiny", "gguf"),
          ("rollout", "losses", "metrics", "epistemic", "rewards", "judges"), ("config", "trainer"), ("methods",),
          ("inputs", "evaluate"), ("suite",), ("cli", "__main__", "__init__")]


def test_the_library_layers_import_one_way():
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}

    def layer_of(module: str) -> str:
        return module.split(".")[1] if "." in module else "__init__"

    upward = [(str(p.relative_to(ROOT)), node.lineno, node.module) for p in _python_files("preftune")
              for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.ImportFrom)
              and (node.module or "").startswith("preftune.")
              and rank[layer_of(node.module)] > rank[layer_of(".".join(p.relative_to(ROOT).with_suffix("").parts))]]
    assert not upward
