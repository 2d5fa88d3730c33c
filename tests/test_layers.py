"""The import direction of the package: apps -> core -> primitives, never back.

Every `import` in fedkd, at module level or inside a function, is read from the source (ast);
a module may import its own layer or a lower one. docs/architecture.md draws the same layers.
"""

import ast
import pathlib

import fedkd

ROOT = pathlib.Path(fedkd.__file__).parent

# Layer 0, primitives: pure maths with no torch, no Flower, no files (the secure-aggregation
# protocol, the DP mechanism and its accountant, the audit's statistics, the error types).
# Layer 1, core: the federated-distillation work itself (config, data, models, training, the
# client's and the server's round, results). Layer 2, apps: what drives the core (Flower apps,
# command lines, deployment, benchmarks, the simulation entry point).
LAYERS = {
    "fedkd.errors": 0,
    "fedkd.secagg": 0,
    "fedkd.privacy.mechanism": 0,
    "fedkd.privacy.accounting": 0,
    "fedkd.privacy.audit_stats": 0,
    "fedkd": 1,  # the package's own __init__ and everything not named below
    "fedkd.apps": 2,
    "fedkd.cli": 2,
    "fedkd.cliparser": 2,
    "fedkd.configdoc": 2,
    "fedkd.compare": 2,
    "fedkd.deploy": 2,
    "fedkd.bench": 2,
    "fedkd.simulation": 2,
    "fedkd.privacy.audit_cli": 2,
    "fedkd.__main__": 2,
}
NAMES = {0: "primitives", 1: "core", 2: "apps"}


def layer(module: str) -> int:
    """The layer of the longest prefix of `module` named in LAYERS."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in LAYERS:
            return LAYERS[".".join(parts[:i])]
    raise AssertionError(f"{module} is outside fedkd")


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every fedkd import in the file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "fedkd"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "fedkd":
            # `from fedkd import distill` imports the module fedkd.distill
            found += [(node.lineno, f"{node.module}.{a.name}" if node.module == "fedkd" else node.module)
                      for a in node.names]
    return found


def test_no_module_imports_a_higher_layer():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        here = module_name(path)
        for line, target in imports_of(path):
            if layer(target) > layer(here):
                offenders.append(f"{here}:{line} ({NAMES[layer(here)]}) imports {target} ({NAMES[layer(target)]})")
    assert offenders == []


def test_the_check_sees_a_violation():
    # a control: the rule would catch core importing an app
    assert layer("fedkd.apps.secure") > layer("fedkd.server") > layer("fedkd.secagg.client")
    assert layer("fedkd.privacy.dpsgd") == 1 and layer("fedkd.privacy.mechanism") == 0
