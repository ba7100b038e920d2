#!/usr/bin/env python3
"""The house rules CI checks (ARCHITECTURE.md "Layers").

1. The graph of top-level modules under src/ is acyclic. An edge A -> B is a
   `crate::B` path in a file of module A outside its test module. Printed as
   layers: a module may import only modules on lower layers.
2. No file has more than MAX_CODE_LINES code lines (not blank, not comment)
   before its test module.

Exit 1 with the cycle or the files named when a rule is broken.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX_CODE_LINES = 600
# The binary's root is not a module of the library.
SKIP = {"main.rs", "lib.rs"}
TEST_MODULE = re.compile(r"^#\[cfg\([^\]]*\btest\b[^\]]*\)\]\s*$")


def without_tests(lines):
    """The lines before the file's test module (tests sit at the end)."""
    for i, line in enumerate(lines):
        if TEST_MODULE.match(line.strip()) and i + 1 < len(lines) and re.match(r"\s*(pub\s+)?mod\s", lines[i + 1]):
            return lines[:i]
    return lines


def top_module(rel):
    return rel.split(os.sep)[0].removesuffix(".rs")


def crate_refs(text):
    """Top-level modules named by `crate::` paths, including `use crate::{a, b::c}`."""
    refs = set()
    for m in re.finditer(r"crate::(\{[^;]*?\}|\w+)", text, re.S):
        group = m.group(1)
        if group.startswith("{"):
            depth, token, names = 0, "", []
            for ch in group[1:-1]:
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                elif ch == "," and depth == 0:
                    names.append(token)
                    token = ""
                    continue
                token += ch
            names.append(token)
            refs.update(n.strip().split("::")[0] for n in names if n.strip())
        else:
            refs.add(group)
    return refs


def cycles(edges):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main():
    edges, sizes = {}, []
    for dirpath, _, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, SRC)
            lines = without_tests(open(path, encoding="utf-8").read().splitlines())
            code = [l for l in lines if l.strip() and not l.strip().startswith("//")]
            sizes.append((len(code), rel))
            if rel in SKIP:
                continue
            top = top_module(rel)
            text = "\n".join(l for l in lines if not l.strip().startswith("//"))
            for ref in crate_refs(text):
                if ref != top and ref not in ("self", "super"):
                    edges.setdefault(top, set()).add(ref)
            edges.setdefault(top, set())
    ok = True
    # Layers by repeatedly taking the modules whose imports are all placed.
    placed, layers, rest = set(), [], set(edges)
    while rest:
        layer = sorted(m for m in rest if edges[m] <= placed | {m})
        if not layer:
            break
        layers.append(layer)
        placed.update(layer)
        rest -= set(layer)
    print("module layers (each imports only lower layers):")
    for i, layer in enumerate(layers):
        print(f"  {i}: {' '.join(layer)}")
    if rest:
        ok = False
        print("module cycle: these modules import each other in a loop:")
        for component in cycles(edges):
            print("  " + ", ".join(f"{m} -> {' '.join(sorted(edges[m] & component))}" for m in sorted(component)))
        print("break it by moving the shared part to a lower module")
    big = sorted((n, f) for n, f in sizes if n > MAX_CODE_LINES)
    if big:
        ok = False
        for n, f in big:
            print(f"src/{f}: {n} code lines outside its tests (at most {MAX_CODE_LINES}); split it by concept")
    largest = sorted(sizes, reverse=True)[:5]
    print("largest files (code lines outside tests):", ", ".join(f"src/{f} {n}" for n, f in largest))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
