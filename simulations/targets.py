"""The foundation's targets, measured: wall time of `fedkd run` with defaults, student against
ensemble accuracy on digits (10 clients, Dirichlet 0.5, 5 rounds), the same seed twice, and
secure against plain aggregation. Prints a table and writes `targets.md` / `targets.json` to --out.

    python simulations/targets.py --out simulations/results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedkd.results import write_json_atomic

METRICS = ("student_accuracy", "student_nll", "student_ece", "ensemble_accuracy", "teacher_accuracy_mean")


def fedkd_run(out: Path, *args: str) -> tuple[dict, float]:
    """`fedkd run` in a fresh process, as a user runs it; returns results.json and the wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fedkd.cli", "run", "--out", str(out), *args],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fedkd run {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "results.json").read_text()), wall


def per_round(results: dict) -> list[dict]:
    return [{k: r[k] for k in ("round", *METRICS)} for r in results["rounds"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="simulations/results")
    args = parser.parse_args()
    out = Path(args.out)
    tmp = Path(tempfile.mkdtemp(prefix="fedkd-targets-"))
    rows = {}
    default, wall = fedkd_run(tmp / "default")
    rows["default (secagg)"] = (default, wall)
    again, wall2 = fedkd_run(tmp / "default-again")
    rows["default, same seed again"] = (again, wall2)
    plain, wall3 = fedkd_run(tmp / "plain", "--aggregation", "plain")
    rows["plain aggregation"] = (plain, wall3)
    share, wall4 = fedkd_run(tmp / "class-share", "--vote-weighting", "class-share")
    rows["vote-weighting class-share"] = (share, wall4)
    central, wall5 = fedkd_run(tmp / "central", "--method", "central")
    rows["central (upper bound)"] = (central, wall5)

    identical = per_round(default) == per_round(again)
    lines = ["| run | student acc | ensemble acc | student / ensemble | wall (s) |", "|---|---:|---:|---:|---:|"]
    summary = {}
    for name, (res, w) in rows.items():
        f = res["final"]
        ratio = f["student_accuracy"] / f["ensemble_accuracy"] if f["ensemble_accuracy"] else None
        summary[name] = {"student_accuracy": f["student_accuracy"], "ensemble_accuracy": f["ensemble_accuracy"],
                         "student_over_ensemble": ratio, "wall_seconds": w}
        lines.append(f"| {name} | {f['student_accuracy']:.4f} | "
                     f"{'–' if f['ensemble_accuracy'] is None else format(f['ensemble_accuracy'], '.4f')} | "
                     f"{'–' if ratio is None else format(ratio, '.3f')} | {w:.1f} |")
    diff = abs(default["final"]["student_accuracy"] - plain["final"]["student_accuracy"])
    lines += ["", f"Same seed twice, identical per-round metrics: {'yes' if identical else 'NO'}.",
              f"|student accuracy secagg - plain| = {diff:.4f}."]
    text = "\n".join(lines) + "\n"
    print(text)
    (out / "targets.md").write_text(text)
    write_json_atomic(out / "targets.json", {"runs": summary, "same_seed_identical": identical,
                                             "secagg_minus_plain_student_accuracy": diff})


if __name__ == "__main__":
    main()
