"""The package's layers (docs/ARCHITECTURE.md) hold: import-linter's contracts in
pyproject.toml pass on the package as it is, and fail on a copy with one upward import.
Also: no private name is imported from another module, and no module is over 450 lines."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deploy_attn"
MAX_LINES = 450

pytest.importorskip("importlinter", reason="import-linter is not installed: "
                    "pip install -e '.[test]'")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package found at ``root``, with this repository's contracts."""
    code = "import sys; from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run([sys.executable, "-c", code, str(ROOT / "pyproject.toml"),
                           "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_the_layer_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") >= 4, done.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    """core/files.py importing a command: the contract must name that import and fail."""
    shutil.copytree(PACKAGE, tmp_path / "deploy_attn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    files = tmp_path / "deploy_attn" / "core" / "files.py"
    files.write_text(files.read_text() + "\nfrom ..commands.bench import bench  # noqa: E402\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "deploy_attn.core is not allowed to import deploy_attn.commands" in done.stdout, \
        done.stdout
    assert "deploy_attn.core.files -> deploy_attn.commands.bench" in done.stdout, done.stdout


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_private_name_is_imported_from_another_module():
    crossing = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "")
                                                     .startswith("deploy_attn")):
                crossing += [f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name}"
                             for a in node.names if a.name.startswith("_")
                             and not a.name.startswith("__")]
    assert not crossing, crossing


def test_no_module_is_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


ZOO = ("deploy_attn.attention", "deploy_attn.backbones", "deploy_attn.registry",
       "deploy_attn.models", "deploy_attn.swaps")


def test_the_only_import_circle_is_the_zoos_self_registration():
    """Every module in an import circle is part of the zoo registering itself (registry's
    lazy loader <-> attention and backbones; the swap table <-> the deploy twins): no
    circle runs through the pipeline's layers."""
    import grimp

    graph = grimp.build_graph("deploy_attn", cache_dir=None)
    circular = sorted(m for m in graph.modules if any(
        graph.find_shortest_chain(importer=d, imported=m)
        for d in graph.find_modules_directly_imported_by(m) if d != m))
    outside = [m for m in circular if not m.startswith(ZOO)]
    assert circular and not outside, outside
