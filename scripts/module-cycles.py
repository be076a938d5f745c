#!/usr/bin/env python3
"""Lists the file-level module dependencies inside crates and fails on a cycle.

    scripts/module-cycles.py [--edges] crates/history crates/events ...

An edge `a -> b` means a file of module `a` names module `b`: a `use crate::b::...` (or
`super::`, `self::`, a child module by name, a re-export), or a path such as `crate::b::X` in code.
A path through a re-export (`crate::Database`, re-exported by lib.rs from `store`) is followed to
the module that defines the item, so a facade does not hide a dependency. `#[cfg(test)]` items
(test modules, test-only imports) are left out. Prints the edges with `--edges`, then every cycle
(a strongly connected set of modules); exits 1 when there is one.

A lexer-level reading, not a compiler: enough for this workspace's code (no `#[path]`, no macros
that generate `use`).
"""

import re
import sys
from pathlib import Path

CHAR_LITERAL = re.compile(r"'(?:\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'\n])'")
RAW_STRING = re.compile(r'b?r(#*)"')
CFG_TEST = re.compile(r"#\[cfg\(test\)\]")
MOD_DECL = re.compile(r"\b(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;")
USE_START = re.compile(r"\b(pub(?:\([^)]*\))?\s+)?use\s+")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\*")


def strip(text):
    """Comments removed, string and char literals emptied (so braces and `//` in them are inert)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif (m := RAW_STRING.match(text, i)) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = text.find('"' + m.group(1), m.end())
            out.append('""')
            i = n if end < 0 else end + 1 + len(m.group(1))
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'" and (m := CHAR_LITERAL.match(text, i)):
            out.append("' '")
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def item_end(text, start):
    """End of the item beginning at `start`: its `;`, or the brace closing its first block."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == ";" and depth == 0:
            return i + 1
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def drop_cfg_test(text):
    while m := CFG_TEST.search(text):
        text = text[: m.start()] + text[item_end(text, m.end()) :]
    return text


def parse_use_tree(text, i, prefix, out):
    """Parses one use tree at `text[i:]`; appends (segments, alias) leaves to `out`; returns end."""
    segs = list(prefix)
    while True:
        while text[i].isspace():
            i += 1
        if text.startswith("::", i):
            i += 2
            continue
        if text[i] == "{":
            i += 1
            while True:
                while text[i].isspace() or text[i] == ",":
                    i += 1
                if text[i] == "}":
                    return i + 1
                i = parse_use_tree(text, i, segs, out)
        m = IDENT.match(text, i)
        if not m:
            raise ValueError(f"cannot parse use tree near {text[i:i + 40]!r}")
        segs.append(m.group(0))
        i = m.end()
        while text[i].isspace():
            i += 1
        if text.startswith("::", i):
            continue
        alias = None
        if text.startswith("as", i) and not (text[i + 2].isalnum() or text[i + 2] == "_"):
            m = IDENT.match(text, i + 2 + len(text[i + 2 :]) - len(text[i + 2 :].lstrip()))
            alias = m.group(0)
            i = m.end()
        out.append((segs, alias))
        return i


class Module:
    def __init__(self, path, file):
        self.path = path  # ("policy", "filter")
        self.file = file
        self.children = []
        self.imports = {}  # name -> absolute segments (resolved lazily)
        self.refs = []  # segments as written, relative to this module


def module_name(path):
    return "crate" + "".join("::" + p for p in path)


def load_crate(src):
    modules = {}

    def load(path, file, child_dir):
        text = drop_cfg_test(strip(file.read_text()))
        module = Module(path, file)
        modules[path] = module
        for m in MOD_DECL.finditer(text):
            name = m.group(1)
            for candidate in (child_dir / f"{name}.rs", child_dir / name / "mod.rs"):
                if candidate.exists():
                    module.children.append(name)
                    load(path + (name,), candidate, candidate.parent if candidate.name == "mod.rs" else child_dir / name)
                    break
        code = []
        pos = 0
        for m in USE_START.finditer(text):
            if m.start() < pos:
                continue
            leaves = []
            end = parse_use_tree(text, m.end(), [], leaves)
            for segs, alias in leaves:
                module.refs.append(segs)
                name = alias or segs[-1]
                if name not in ("*", "self", "_"):
                    module.imports[name] = segs
                elif name == "self":
                    module.imports[segs[-2]] = segs[:-1]
            code.append(text[pos : m.start()])
            pos = end
        code.append(text[pos:])
        module.code = "".join(code)
        return module

    root = src / "lib.rs" if (src / "lib.rs").exists() else src / "main.rs"
    load((), root, src)
    # Paths in code: crate::/super::/self:: or a child module by name.
    for module in modules.values():
        heads = ["crate", "super", "self"] + module.children
        pattern = re.compile(r"(?<![\w:])((?:" + "|".join(heads) + r")(?:::\w+)+)")
        for m in pattern.finditer(module.code):
            module.refs.append(m.group(1).split("::"))
    return modules


def resolve(modules, here, segs, depth=0):
    """The module that defines the item `segs` names, seen from module `here`; None if external."""
    if depth > 20:
        return None
    head, rest = segs[0], segs[1:]
    if head == "crate":
        cur = ()
    elif head == "self":
        cur = here
    elif head == "super":
        cur = here[:-1]
        while rest and rest[0] == "super":
            cur, rest = cur[:-1], rest[1:]
    elif here + (head,) in modules:
        cur = here + (head,)
    else:
        return None  # an external crate, or an item of this module
    for i, seg in enumerate(rest):
        if seg in ("*", "self"):
            return cur
        if cur + (seg,) in modules:
            cur = cur + (seg,)
            continue
        imported = modules[cur].imports.get(seg)
        if imported is not None:
            target = resolve(modules, cur, imported + rest[i + 1 :], depth + 1)
            if target is not None:
                return target
        return cur
    return cur


def edges_of(modules):
    edges = {path: set() for path in modules}
    for path, module in modules.items():
        for segs in module.refs:
            target = resolve(modules, path, segs)
            if target is not None and target != path:
                edges[path].add(target)
    return edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main(argv):
    show_edges = "--edges" in argv
    crates = [a for a in argv if a != "--edges"]
    if not crates:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    failed = False
    for crate in crates:
        modules = load_crate(Path(crate) / "src")
        edges = edges_of(modules)
        print(f"{crate}: {len(modules)} modules, {sum(map(len, edges.values()))} edges")
        if show_edges:
            for source in sorted(edges):
                for target in sorted(edges[source]):
                    print(f"  {module_name(source)} -> {module_name(target)}")
        for component in cycles(edges):
            failed = True
            names = ", ".join(module_name(p) for p in component)
            print(f"  CYCLE: {names}")
            for source in component:
                for target in sorted(edges[source] & set(component)):
                    print(f"    {module_name(source)} -> {module_name(target)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
