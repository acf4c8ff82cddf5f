"""The code's shape rules (README, Layout): no module over 500 lines, no function over 80 lines,
and no block of six or more lines repeated in the package, so each concept has one place.

Benchmarks and tests are outside the rules; the numba serial/parallel sampler twins are the one
allowed repeat (a kernel compiled twice, with and without prange, must be written twice)."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("atjt_dist", "kernels", "launch")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MIN_REPEATED_LINES = 6


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _is_numba_kernel(node: ast.AST) -> bool:
    """A function decorated with numba's njit (the serial/parallel twins may repeat)."""
    decorators = getattr(node, "decorator_list", [])
    return any("njit" in ast.unparse(d) or "jit" in ast.unparse(d) for d in decorators)


def _bodies(tree: ast.AST):
    """Every statement list of the tree, with whether it lies inside a numba kernel."""

    def walk(node: ast.AST, in_kernel: bool):
        in_kernel = in_kernel or _is_numba_kernel(node)
        for name in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.AST):
                yield block, in_kernel
                for child in block:
                    yield from walk(child, in_kernel)

    yield from walk(tree, False)


def _statement_windows(path: Path):
    """(text of consecutive statements spanning >= MIN_REPEATED_LINES lines, first line)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for body, in_kernel in _bodies(tree):
        if in_kernel:
            continue
        statements = [s for s in body if not isinstance(s, (ast.Import, ast.ImportFrom)) and not _is_docstring(s)]
        for start in range(len(statements)):
            for end in range(start + 1, len(statements) + 1):
                span = statements[end - 1].end_lineno - statements[start].lineno + 1
                if span >= MIN_REPEATED_LINES:
                    text = "\n".join(ast.unparse(s) for s in statements[start:end])
                    yield text, statements[start].lineno
                    break


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_functions_are_short(path: Path):
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it (at most {MAX_MODULE_LINES})"
    long = [
        f"{node.name} (line {node.lineno}: {node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_no_repeated_blocks():
    places = collections.defaultdict(list)
    for path in _sources():
        for text, line in _statement_windows(path):
            places[text].append(f"{path.relative_to(ROOT)}:{line}")
    repeated = sorted(" and ".join(where) for where in places.values() if len(where) > 1)
    assert not repeated, "blocks of >= 6 lines repeated (give them one place):\n" + "\n".join(repeated)


def test_the_repeat_detector_finds_a_copied_block(tmp_path):
    block = "\n".join(f"x{i} = compute({i}, scale=2.0)" for i in range(6))
    path = tmp_path / "m.py"
    path.write_text(f"def a():\n{_indent(block)}\n\n\ndef b():\n{_indent(block)}\n")
    windows = collections.Counter(text for text, _ in _statement_windows(path))
    assert max(windows.values()) == 2


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def test_every_package_is_installed():
    """pyproject.toml lists the packages by hand (kernels/ installs as atjt_kernels); a package
    directory missing there works in an editable install and is absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "atjt_dist").rglob("__init__.py")} | {"atjt_kernels"}
    assert on_disk - listed == set(), f"add these packages to [tool.setuptools] packages in pyproject.toml: {sorted(on_disk - listed)}"
