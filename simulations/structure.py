"""Structure figures of the fedkd package, for the before/after table of the structure issue (#15).

Prints the modules over 300 lines, the 15 longest functions, the functions with the most
parameters (self/cls not counted) and the function-level fedkd imports per module. Reads the
source only (ast).

    python simulations/structure.py [PACKAGE_DIR]   # default: the fedkd package beside this folder
"""

from __future__ import annotations

import argparse
import ast
import pathlib
from collections import Counter


def parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = node.args
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    return n - 1 if a.args and a.args[0].arg in ("self", "cls") else n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default=str(pathlib.Path(__file__).parents[1] / "fedkd"))
    root = pathlib.Path(parser.parse_args().package)
    modules, functions, late = [], [], Counter()
    for path in sorted(root.rglob("*.py")):
        name = str(path.relative_to(root.parent))
        source = path.read_text()
        modules.append((len(source.splitlines()), name))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, parameters(node), f"{name}:{node.name}"))
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("fedkd"):
                        late[name] += 1
    print(f"{len(modules)} modules, {sum(n for n, _ in modules)} lines")
    print("modules over 300 lines:")
    for lines, name in sorted(modules, reverse=True):
        if lines > 300:
            print(f"  {lines:5d}  {name}")
    print("15 longest functions (lines, parameters):")
    for lines, params, name in sorted(functions, reverse=True)[:15]:
        print(f"  {lines:4d} {params:3d}  {name}")
    print("most parameters:")
    for lines, params, name in sorted(functions, key=lambda f: (-f[1], -f[0]))[:10]:
        print(f"  {params:3d} {lines:4d}  {name}")
    print(f"functions over 50 lines: {sum(1 for f in functions if f[0] > 50)}; "
          f"over 8 parameters: {sum(1 for f in functions if f[1] > 8)}")
    print(f"function-level fedkd imports: {sum(late.values())} "
          f"({', '.join(f'{n} {m}' for m, n in late.most_common(4))})")


if __name__ == "__main__":
    main()
