# SPDX-License-Identifier: MIT
"""House rules of the Python sources' size, checked so that they stay true.

- No class in passt_py/ spans more than MAX_CLASS_LINES lines.
- No function or method (nested ones included) spans more than MAX_FUNCTION_LINES lines.

A size is counted from the ``def``/``class`` line to the last line of its body (decorators
not included), as ``ast`` reports them. Past those sizes a unit usually holds several concerns
that want names of their own. ALLOWED lists the known exceptions being worked on; an entry
that no longer exceeds its limit fails the suite, so the list only ever shrinks.

Run as a script (``python tests/test_py_style.py``) to list every unit over its limit.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "passt_py"
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 80

#: Units allowed over their limit for now, as "path::qualified.name". Each entry must still be
#: over the limit (test_allow_list_entries_are_still_over_the_limit): remove it once it is not.
ALLOWED: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Unit:
    """A class or function: where it is, how long it is, and the most it may be."""

    key: str          # "path::Outer.name"
    lines: int
    limit: int

    @property
    def too_long(self) -> bool:
        """Whether the unit exceeds its limit."""
        return self.lines > self.limit


def units(source: str, path: str) -> list[Unit]:
    """Every class and function in ``source`` (nested ones too), named by qualified name."""
    found: list[Unit] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                limit = MAX_CLASS_LINES if isinstance(child, ast.ClassDef) else MAX_FUNCTION_LINES
                assert child.end_lineno is not None
                found.append(Unit(f"{path}::{name}", child.end_lineno - child.lineno + 1, limit))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename=path), "")
    return found


def package_units() -> list[Unit]:
    """The units of every module under passt_py/."""
    out: list[Unit] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        out += units(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    return out


def _describe(unit: Unit) -> str:
    """One line naming a unit and how far over its limit it is."""
    return f"{unit.key}: {unit.lines} lines (limit {unit.limit})"


def test_no_class_or_function_over_its_limit() -> None:
    """No class over 400 lines, no function over 80, but for the allow-listed ones."""
    over = [_describe(u) for u in package_units() if u.too_long and u.key not in ALLOWED]
    assert not over, "too long (split along its seams):\n" + "\n".join(over)


def test_allow_list_entries_are_still_over_the_limit() -> None:
    """Every ALLOWED entry names an existing unit that is still too long (the list cannot rot)."""
    by_key = {u.key: u for u in package_units()}
    stale = [key for key in sorted(ALLOWED) if key not in by_key or not by_key[key].too_long]
    assert not stale, "remove from ALLOWED (gone or no longer too long): " + ", ".join(stale)


def test_the_count_flags_one_line_over_and_not_at_the_limit() -> None:
    """The measure itself: a function of exactly 80 lines passes, 81 fails, methods and nested
    functions are measured and named, and a class of 401 lines fails."""
    def function(name: str, lines: int, indent: str = "") -> str:
        return f"{indent}def {name}():\n" + f"{indent}    x = 1\n" * (lines - 1)

    source = (function("at_limit", 80) + function("over", 81)
              + "class Big:\n" + function("method", 81, "    ")
              + "    def outer(self):\n" + function("inner", 81, "        ")
              + "    y = 1\n" * (401 - 1 - 81 - 1 - 81))
    got = {u.key: (u.lines, u.too_long) for u in units(source, "m.py")}
    assert got["m.py::at_limit"] == (80, False)
    assert got["m.py::over"] == (81, True)
    assert got["m.py::Big.method"] == (81, True)
    assert got["m.py::Big.outer.inner"] == (81, True)
    assert got["m.py::Big.outer"] == (82, True)
    assert got["m.py::Big"] == (401, True)


if __name__ == "__main__":
    too_long = [u for u in package_units() if u.too_long]
    for unit in too_long:
        print(_describe(unit) + ("  [allowed]" if unit.key in ALLOWED else ""))
    sys.exit(1 if any(u.key not in ALLOWED for u in too_long) else 0)
