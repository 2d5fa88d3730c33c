"""fd against its baselines (fedavg, central, local) on the embedded digits data, for several
Dirichlet alphas: writes `compare_methods.md` (a table), `compare_methods.json` and
`compare_methods.png` into --out.

    python simulations/compare_methods.py --out simulations/results [--alphas 0.1 0.5 1.0] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedkd.cli import simulate
from fedkd.config import Config
from fedkd.results import write_json_atomic

# (label, settings): fd as configured by default, fd with class-share vote weighting, the baselines
VARIANTS = (
    ("fd", {"method": "fd"}),
    ("fd class-share", {"method": "fd", "vote_weighting": "class-share"}),
    ("fedavg", {"method": "fedavg"}),
    ("central", {"method": "central"}),
    ("local", {"method": "local"}),
)


def run_grid(alphas: list[float], rounds: int, seed: int, out: Path) -> list[dict]:
    rows = []
    for alpha in alphas:
        for method, settings in VARIANTS:
            cfg = Config(**settings, alpha=alpha, rounds=rounds, seed=seed,
                         out=str(out / "runs" / f"{method.replace(' ', '-')}-alpha{alpha}")).validated()
            results = simulate(cfg)
            final, last = results["final"], results["rounds"][-1]
            rows.append({
                "alpha": alpha, "method": method,
                "student_accuracy": final["student_accuracy"],
                "ensemble_accuracy": final["ensemble_accuracy"],
                "teacher_accuracy_mean": final["teacher_accuracy_mean"],
                "upload_bytes_per_client_per_round": last["upload_bytes_per_client"],
                "seconds_total": final["seconds_total"],
            })
            print(f"alpha={alpha} {method}: student {final['student_accuracy']} "
                  f"ensemble {final['ensemble_accuracy']} teachers {final['teacher_accuracy_mean']}", flush=True)
    return rows


def _cell(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.{digits}f}"
    return f"{int(v):,}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| alpha | method | student acc | ensemble acc | mean teacher acc | upload B/client/round | seconds |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['alpha']} | {r['method']} | {_cell(r['student_accuracy'])} | {_cell(r['ensemble_accuracy'])} "
                     f"| {_cell(r['teacher_accuracy_mean'])} | {_cell(r['upload_bytes_per_client_per_round'])} "
                     f"| {_cell(r['seconds_total'], 1)} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = sorted({r["alpha"] for r in rows})
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    width = 0.8 / len(VARIANTS)
    for i, (method, _) in enumerate(VARIANTS):
        accs = []
        for a in alphas:
            r = next(r for r in rows if r["alpha"] == a and r["method"] == method)
            accs.append(r["student_accuracy"] if r["student_accuracy"] is not None else r["teacher_accuracy_mean"])
        label = method if method != "local" else "local (mean teacher)"
        ax.bar([j + i * width for j in range(len(alphas))], accs, width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(alphas))], [f"alpha={a}" for a in alphas])
    ax.set_ylabel("test accuracy (digits, 10 clients)")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="simulations/results")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    rows = run_grid(args.alphas, args.rounds, args.seed, out)
    write_json_atomic(out / "compare_methods.json", rows)
    (out / "compare_methods.md").write_text(markdown_table(rows))
    plot(rows, out / "compare_methods.png")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
