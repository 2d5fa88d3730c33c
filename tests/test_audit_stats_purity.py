"""The audit's statistics stay pure: importing and running `fedkd.privacy.audit_stats` loads
neither torch, Flower nor fedkd's training code (it takes arrays and returns numbers)."""

import os
import subprocess
import sys
from pathlib import Path

import fedkd

SCRIPT = """
import sys
import numpy as np
from fedkd.privacy import audit_stats
rng = np.random.default_rng(0)
member = rng.random(40) < 0.5
audit_stats.membership_attack(np.where(member, 1.0, 0.0) + rng.normal(0, 1, 40), member, seed=0, delta=1e-5)
print(",".join(m for m in ("torch", "flwr", "fedkd.task", "fedkd.data", "fedkd.distill") if m in sys.modules))
"""


def test_audit_statistics_import_no_torch_flower_or_training_code():
    root = str(Path(fedkd.__file__).resolve().parents[1])  # the fedkd this test runs against
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.strip() == ""
