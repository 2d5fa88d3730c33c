"""fedkd.secagg is a pure library: no flwr, no torch, no I/O."""

import pathlib
import re
import subprocess
import sys

import fedkd.secagg

PACKAGE = pathlib.Path(fedkd.secagg.__file__).parent
MODULES = sorted(f"fedkd.secagg.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def test_importing_every_module_pulls_in_neither_flwr_nor_torch():
    code = (
        "import sys, importlib\n"
        f"for name in {MODULES!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flwr', 'torch'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_sources_do_no_io():
    forbidden = re.compile(r"\b(open|print|input)\(|\bsocket\b|\bsubprocess\b|\bpathlib\b|\blogging\b")
    offenders = [
        f"{path.name}:{n}: {line.strip()}"
        for path in PACKAGE.glob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line.split("#")[0])
    ]
    assert offenders == []


def test_every_module_is_listed():
    assert {"messages", "stages", "crypto", "shamir", "quantize", "client", "server"} <= {
        m.rsplit(".", 1)[1] for m in MODULES
    }
