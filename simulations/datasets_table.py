"""fd and its baselines on each kind of input a user holds, with default settings only:
digits (embedded), a raw uint8 28x28 greyscale .npz, the same images in Keras layout, and
32x32x3 channels-last colour images. Writes `datasets.md`, `datasets.json` and `datasets.png`
into --out.

    python simulations/datasets_table.py --fashion ../shared/data/fashion3615.npz --out simulations/results

The Keras-layout and colour files are made from the --fashion file (an .npz with uint8 `x`
(N, 28, 28) and `y`): Keras layout keeps its last 20% as the official test split; the colour
set pads each image to 32x32 and tints it with a per-image colour on a tinted background, saved
channels last as uint8 (N, 32, 32, 3). Nothing is hand-tuned: every run uses Config's defaults
but for the dataset, the method and `out`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fedkd.simulation import simulate
from fedkd.config import Config
from fedkd.results import records_of, write_json_atomic
from input_kinds import make_inputs  # simulations/input_kinds.py, beside this script

METHODS = ("fd", "fedavg", "central", "local")


def run_grid(inputs: dict[str, str], rounds: int, seed: int, out: Path) -> list[dict]:
    rows = []
    for label, dataset in inputs.items():
        for method in METHODS:
            slug = label.split(" ")[0].lower() + ("-keras" if "Keras" in label else "")
            cfg = Config(method=method, dataset=dataset, rounds=rounds, seed=seed,
                         out=str(out / "runs" / f"{slug}-{method}")).validated()
            results = simulate(cfg)
            final = results["final"]
            records = records_of(results["rounds"])
            ratios = [r.student_to_ensemble for r in records]
            ratios = [r for r in ratios if r is not None]
            rows.append({
                "data": label, "method": method,
                "student_accuracy": final["student_accuracy"],
                "ensemble_accuracy": final["ensemble_accuracy"],
                "ratio_last": ratios[-1] if ratios else None,
                "ratio_min": min(ratios) if ratios else None,
                "teacher_accuracy_mean": final["teacher_accuracy_mean"],
                "student_per_round": [r.student_accuracy for r in records],
                "seconds_total": final["seconds_total"],
            })
            print(f"{label} {method}: student {final['student_accuracy']} ensemble {final['ensemble_accuracy']} "
                  f"ratio min {rows[-1]['ratio_min']} ({final['seconds_total']:.0f} s)", flush=True)
    return rows


def _cell(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| data | method | student | ensemble | student/ensemble (last, min over rounds) | mean teacher | seconds |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "–" if r["ratio_last"] is None else f"{r['ratio_last']:.3f}, {r['ratio_min']:.3f}"
        lines.append(f"| {r['data']} | {r['method']} | {_cell(r['student_accuracy'])} | "
                     f"{_cell(r['ensemble_accuracy'])} | {ratio} | {_cell(r['teacher_accuracy_mean'])} | "
                     f"{r['seconds_total']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = list(dict.fromkeys(r["data"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        values = [next((r["student_accuracy"] or r["teacher_accuracy_mean"] or 0.0
                        for r in rows if r["data"] == d and r["method"] == method), 0.0) for d in data]
        ax.bar(np.arange(len(data)) + i * width, values, width, label=method)
    ax.set_xticks(np.arange(len(data)) + width * (len(METHODS) - 1) / 2, data, fontsize=8)
    ax.set_ylabel("test accuracy (local: mean teacher)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Default settings on each input kind: 10 clients, Dirichlet 0.5")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion", type=Path, default=Path("../shared/data/fashion3615.npz"),
                        help="uint8 28x28 greyscale .npz with x and y (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("simulations/results"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="labels to run (default: all)")
    args = parser.parse_args()
    if not args.fashion.is_file():
        parser.error(f"--fashion {args.fashion}: no such file")
    inputs = make_inputs(args.fashion, args.out / "datasets_inputs")
    if args.only:
        inputs = {k: v for k, v in inputs.items() if any(o in k for o in args.only)}
    rows = run_grid(inputs, args.rounds, args.seed, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "datasets.json", {"rounds": args.rounds, "seed": args.seed, "rows": rows})
    (args.out / "datasets.md").write_text(markdown_table(rows))
    plot(rows, args.out / "datasets.png")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
