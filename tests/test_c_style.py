# SPDX-License-Identifier: MIT
"""House rules of the C sources, checked so that they stay true.

- Every C file and header (csrc/ and bench/vufront/vufront.c) carries an
  ``SPDX-License-Identifier: MIT`` line in its first lines.
- Every C file in csrc/ opens with a comment holding a "Theory of operation" section.
- Every function defined in csrc/ (static ones and headers' inline ones included) has a
  kernel-doc comment directly above it: ``/**``, then ``name() - summary``, one ``@param:``
  line per named parameter, and ``Return:`` unless it returns void.
- Units do not form cycles: the "..." includes between csrc/ units (a .c with its .h) are
  acyclic, and an internal header declares only functions its own .c defines (passt_core.h,
  the public API, excepted), so the includes are the whole dependency graph. The fast path's
  protocol units (fast_udp, fast_tcp) never include the dispatcher's fastpath.h.
- Every csrc/*.c file compiles without a single warning under ``-Wall -Wextra`` with no
  flag beyond the include path (each file defines what it needs, _GNU_SOURCE included).

Run as a script (``python tests/test_c_style.py``) to list every violation at once.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
SPDX = "SPDX-License-Identifier: MIT"
SPDX_LINES = 3          # the tag must be within a file's first lines

_IDENT = re.compile(r"[A-Za-z_]\w*")
_KEYWORDS = {"struct", "union", "enum", "const", "volatile", "restrict", "unsigned", "signed",
             "static", "inline", "extern", "register"}


def c_files() -> list[Path]:
    """The C sources: each needs a theory of operation and must compile on its own."""
    return sorted(CSRC.glob("*.c"))


def doc_files() -> list[Path]:
    """The C sources and headers whose functions must be documented."""
    return sorted([*CSRC.glob("*.c"), *CSRC.glob("*.h")])


def spdx_files() -> list[Path]:
    """Every C source and header that must carry the SPDX line."""
    return sorted([*CSRC.glob("*.c"), *CSRC.glob("*.h"), ROOT / "bench" / "vufront" / "vufront.c"])


def _mask(text: str) -> tuple[str, list[tuple[int, int]]]:
    """Blank out comments, string and character literals and preprocessor lines.

    Offsets and newlines are kept, so positions in the result are positions in ``text``.
    Returns the masked text and the (start, end) spans of the block comments.
    """
    out = list(text)
    comments: list[tuple[int, int]] = []
    i, n = 0, len(text)
    at_line_start = True

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        if at_line_start and c == "#":
            j = i
            while j < n:            # a directive, with its continuation lines
                e = text.find("\n", j)
                e = n if e < 0 else e
                if e > 0 and text[e - 1] == "\\":
                    j = e + 1
                    continue
                j = e
                break
            # A comment starting on a directive line is still a comment.
            k = text.find("/*", i, j)
            if k >= 0:
                blank(i, k)
                i = k
                at_line_start = False
                continue
            blank(i, j)
            i = j
            continue
        if c == "\n":
            at_line_start = True
            i += 1
            continue
        if c in " \t":
            i += 1
            continue
        at_line_start = False
        if text.startswith("/*", i):
            e = text.find("*/", i + 2)
            e = n if e < 0 else e + 2
            comments.append((i, e))
            blank(i, e)
            i = e
        elif text.startswith("//", i):
            e = text.find("\n", i)
            e = n if e < 0 else e
            blank(i, e)
            i = e
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            blank(i, j + 1)
            i = j + 1
        else:
            i += 1
    return "".join(out), comments


def _strip_attributes(s: str) -> str:
    """Remove __attribute__((...)) groups from a declaration head."""
    while True:
        m = re.search(r"__attribute__\s*\(", s)
        if not m:
            return s
        depth, j = 0, m.end() - 1
        while j < len(s):
            depth += {"(": 1, ")": -1}.get(s[j], 0)
            j += 1
            if depth == 0:
                break
        s = s[:m.start()] + " " * (j - m.start()) + s[j:]


def _param_names(params: str) -> list[str]:
    """Names of the parameters in a parameter list's text (without its parentheses)."""
    if params.strip() in ("", "void"):
        return []
    names, depth, cur = [], 0, ""
    parts = []
    for ch in params:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for p in parts:
        p = p.strip()
        if p == "...":
            continue
        fp = re.search(r"\(\s*\*\s*([A-Za-z_]\w*)\s*\)", p)     # function pointer
        if fp:
            names.append(fp.group(1))
            continue
        p = re.sub(r"\[[^\]]*\]", "", p)
        idents = [t for t in _IDENT.findall(p) if t not in _KEYWORDS]
        if len(idents) >= 2:            # a type and a name (an unnamed parameter has one)
            names.append(idents[-1])
    return names


@dataclass
class Function:
    name: str
    line: int           # line of the definition's first line (1-based)
    params: list[str]
    returns_void: bool
    doc: str | None     # the kernel-doc comment directly above, if any


def functions(path: Path) -> list[Function]:
    """Every function defined in a C file, with the comment directly above it."""
    text = path.read_text()
    masked, comments = _mask(text)
    found: list[Function] = []
    depth, head_start, i = 0, 0, 0
    n = len(masked)
    while i < n:
        c = masked[i]
        if depth == 0 and c == ";":
            head_start = i + 1
        elif c == "{":
            if depth == 0:
                head = masked[head_start:i]
                fn = _function_head(text, masked, comments, head_start, head)
                if fn:
                    found.append(fn)
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                head_start = i + 1
        i += 1
    return found


def _function_head(text: str, masked: str, comments: list[tuple[int, int]], start: int,
                   head: str) -> Function | None:
    """A Function if ``head`` (the text before a top-level ``{``) is a function definition."""
    h = _strip_attributes(head).rstrip()
    if not h.endswith(")") or "=" in h:
        return None
    if re.match(r"\s*(typedef|struct|union|enum)\b[^(]*$", h):
        return None
    # The parameter list: the parenthesis matching the last ')'.
    depth, j = 0, len(h) - 1
    while j >= 0:
        depth += {")": 1, "(": -1}.get(h[j], 0)
        if depth == 0:
            break
        j -= 1
    m = re.search(r"([A-Za-z_]\w*)\s*$", h[:j])
    if not m:
        return None
    name = m.group(1)
    rtype = h[:m.start()]
    returns_void = (re.fullmatch(r"\s*((static|inline)\s+)*void\s*", rtype) is not None)
    first = start + (len(head) - len(head.lstrip()))
    line = text.count("\n", 0, first) + 1
    doc = None
    for a, b in comments:
        if b <= first and not text[b:first].strip() and text[b:first].count("\n") == 1:
            doc = text[a:b]
            break
    return Function(name, line, _param_names(h[j + 1:-1]), returns_void, doc)


def doc_problems(fn: Function) -> list[str]:
    """What is wrong with a function's kernel-doc comment (nothing if it is fine)."""
    if fn.doc is None or not fn.doc.startswith("/**"):
        return ["no kernel-doc comment directly above"]
    body = [re.sub(r"^\s*\*?\s?", "", l) for l in fn.doc[3:-2].splitlines()]
    body = [l for l in body if l.strip()]
    problems = []
    if not body or not re.match(rf"{re.escape(fn.name)}\(\) - \S", body[0]):
        problems.append(f"first line is not '{fn.name}() - <summary>'")
    for p in fn.params:
        if not re.search(rf"^\s*\*\s*@{re.escape(p)}:", fn.doc, re.M):
            problems.append(f"no '@{p}:' line")
    if not fn.returns_void and not re.search(r"^\s*\*\s*Return:", fn.doc, re.M):
        problems.append("no 'Return:' line")
    return problems


def file_problems() -> list[str]:
    """Every violation in the tree, as 'path:line: message'."""
    out = []
    for path in spdx_files():
        rel = path.relative_to(ROOT)
        if not any(SPDX in l for l in path.read_text().splitlines()[:SPDX_LINES]):
            out.append(f"{rel}:1: no '{SPDX}' line in its first {SPDX_LINES} lines")
    for path in c_files():
        rel = path.relative_to(ROOT)
        text = path.read_text()
        m = re.match(r"\s*(//[^\n]*\n\s*)*/\*.*?\*/", text, re.S)
        if not m or "Theory of operation" not in m.group(0):
            out.append(f"{rel}:1: no 'Theory of operation' in the opening comment")
    for path in doc_files():
        rel = path.relative_to(ROOT)
        for fn in functions(path):
            for p in doc_problems(fn):
                out.append(f"{rel}:{fn.line}: {fn.name}(): {p}")
    return out


def test_checker_finds_functions():
    """The parser is alive: it sees the functions it is meant to check."""
    names = {fn.name for path in doc_files() for fn in functions(path)}
    assert {"pc_classify", "pc_vq_pop_tx", "pc_csum_partial", "pc_fast_poll", "get16"} <= names
    fns = {fn.name: fn for fn in functions(CSRC / "iov.c")}
    assert fns["pc_writev_all"].params == ["fd", "iov", "iovcnt", "skip", "done"]
    assert not fns["pc_writev_all"].returns_void


def test_checker_rejects_undocumented(tmp_path):
    """A function without kernel-doc, or with a missing parameter, is reported."""
    src = tmp_path / "x.c"
    src.write_text("/* x */\n"
                   "static int a(int x)\n{\n\treturn x;\n}\n\n"
                   "/**\n * b() - b\n * @x:\tx\n */\nstatic void b(int x, int y)\n{\n}\n")
    fns = {fn.name: fn for fn in functions(src)}
    assert doc_problems(fns["a"]) == ["no kernel-doc comment directly above"]
    assert doc_problems(fns["b"]) == ["no '@y:' line"]


def test_c_sources_follow_house_rules():
    """SPDX MIT everywhere, a theory of operation per file, kernel-doc on every function."""
    problems = file_problems()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", c_files(), ids=lambda p: p.name)
def test_c_file_compiles_without_warnings(path):
    """gcc -Wall -Wextra -std=c11, nothing but the include path: not one warning."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    proc = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-fsyntax-only", "-I", str(CSRC),
                           str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def includes(path: Path) -> set[str]:
    """The csrc/ headers a C file or header includes ("..." includes only)."""
    return set(re.findall(r'^#include "([^"]+)"', path.read_text(), re.M))


def include_cycle() -> list[str]:
    """A cycle of csrc/ files through their includes, a .c counted as its own .h (empty if none).

    A unit is a .c file with the header of the same name: fast_tcp.c including fastpath.h
    while fastpath.c includes fast_tcp.h is the cycle this finds.
    """
    def unit(name: str) -> str:
        return name.rsplit(".", 1)[0]

    graph: dict[str, set[str]] = {}
    for path in doc_files():
        graph.setdefault(unit(path.name), set()).update(
            unit(h) for h in includes(path) if unit(h) != unit(path.name))
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str]:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        state[u] = 2
        stack.pop()
        return []

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return []


def declared(path: Path) -> set[str]:
    """Functions a header declares (prototypes at file level, not its inline definitions)."""
    masked, _ = _mask(path.read_text())
    top, depth = [], 0
    for ch in masked:              # keep only what is outside braces (no struct members)
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0:
            top.append(ch)
    proto = re.compile(r"\b([A-Za-z_]\w*)\s*\(([^()]|\([^()]*\))*\)\s*;")
    return {m.group(1) for m in proto.finditer("".join(top))}


def foreign_declarations() -> list[str]:
    """Prototypes in an internal header of functions its own .c file does not define.

    passt_core.h (the public API of every unit, read by cdef) is exempt. A header declaring
    another unit's functions hides a dependency the include graph cannot see.
    """
    out = []
    for header in sorted(CSRC.glob("*.h")):
        if header.name == "passt_core.h":
            continue
        source = header.with_suffix(".c")
        defined = {fn.name for fn in functions(source)} if source.exists() else set()
        out += [f"{header.name}: {name}()" for name in sorted(declared(header) - defined)]
    return out


def test_internal_headers_declare_only_their_own_unit():
    """Each internal header declares functions of its own .c only, so includes are the
    whole dependency graph between units."""
    assert foreign_declarations() == []


def test_c_units_have_no_include_cycles():
    """No unit of csrc/ reaches back, through its includes, to a unit that includes it."""
    assert include_cycle() == []


def test_fast_path_protocol_units_stay_out_of_the_dispatcher():
    """fast_udp.c and fast_tcp.c (and their headers) never see struct pc_fast's header."""
    for name in ("fast_udp.c", "fast_udp.h", "fast_tcp.c", "fast_tcp.h", "fast_table.c",
                 "fast_table.h", "fast_ctx.h"):
        assert "fastpath.h" not in includes(CSRC / name), name


def test_include_cycle_checker_finds_a_cycle(tmp_path, monkeypatch):
    """The cycle check is alive: two units including each other's header are reported."""
    for name, inc in (("a.c", "b.h"), ("a.h", ""), ("b.c", "a.h"), ("b.h", "")):
        (tmp_path / name).write_text(f'#include "{inc}"\n' if inc else "/* h */\n")
    monkeypatch.setattr(sys.modules[__name__], "CSRC", tmp_path)
    assert include_cycle() in (["a", "b", "a"], ["b", "a", "b"])


if __name__ == "__main__":
    problems = file_problems()
    print("\n".join(problems) if problems else "ok")
    sys.exit(1 if problems else 0)
