"""Round by round, fd with and without `clip-norm`: the mean teacher, the ensemble teacher and the
student in every round, so that a collapse of the teachers (and its cost to the ensemble) shows
where it happens. Writes `<name>.md`, `<name>.json` and `<name>.png` into --out.

    python simulations/clip_rounds.py --dataset ../shared/data/fashion3615.npz --alpha 0.1

Each setting runs in process, as `compare_methods.py --engine inprocess` does (the Flower apps'
own functions, the fixed-point sum that secure aggregation computes).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path

from compare_methods import run_one  # this folder is the script's own: on sys.path

from fedkd.config import Config
from fedkd.errors import UserError
from fedkd.results import write_json_atomic

KEYS = ("teacher_accuracy_mean", "ensemble_accuracy", "student_accuracy")


def trace(settings: dict) -> list[dict]:
    """Every round's accuracies of one fd run at `settings` (Config fields)."""
    rows: list[dict] = []
    run_one(Config(**settings).validated(),
            on_round=lambda r: rows.append({"round": r.round, **{k: getattr(r, k) for k in KEYS}}))
    return rows


def table(runs: dict[float, list[dict]]) -> str:
    lines = ["| clip-norm | round | mean teacher | ensemble | student |", "|---:|---:|---:|---:|---:|"]
    for clip, rows in runs.items():
        lines += [f"| {clip:g} | {r['round']} | {r['teacher_accuracy_mean']:.3f} | {r['ensemble_accuracy']:.3f} "
                  f"| {r['student_accuracy']:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(runs: dict[float, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for ax, key, name in zip(axes, KEYS, ("mean teacher", "ensemble teacher", "student")):
        for clip, rows in runs.items():
            ax.plot([r["round"] for r in rows], [r[key] for r in rows], marker="o",
                    label=f"clip-norm {clip:g}" + (" (off)" if clip == 0 else ""))
        ax.set_title(name)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clips", type=float, nargs="+", default=[0.0, 5.0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="simulations/results")
    parser.add_argument("--name", default="clip_rounds")
    parser.add_argument("--server-step", type=float, default=-1.0,
                        help="fd's server-step (-1: auto; the recorded traces used 1, before auto became 1.5)")
    args = parser.parse_args(argv)
    clips = list(dict.fromkeys(args.clips))  # each setting once
    try:
        if args.jobs < 1:
            raise UserError(f"--jobs {args.jobs} must be >= 1")
        # aggregation plain: the in-process engine sums in fixed point, as compare_methods does
        plans = [dict(dataset=args.dataset, alpha=args.alpha, seed=args.seed, rounds=args.rounds, clip_norm=c,
                      server_step=args.server_step, aggregation="plain") for c in clips]
        for settings in plans:  # a bad setting or data path stops here, before any work
            Config(**settings).validated()
        from fedkd.task import splits_for

        splits_for(Config(**plans[0]))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    except (UserError, OSError) as exc:
        print(f"clip_rounds: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(plans)} runs of {args.rounds} rounds on {args.dataset} (alpha {args.alpha:g}, seed {args.seed})",
          flush=True)
    with multiprocessing.get_context("spawn").Pool(min(args.jobs, len(plans))) as pool:
        traces = pool.map(trace, plans)
    runs = dict(zip(clips, traces))
    write_json_atomic(out / f"{args.name}.json", {"settings": plans, "runs": {str(c): t for c, t in runs.items()}})
    title = f"fd on {Path(args.dataset).stem}, Dirichlet {args.alpha:g}, seed {args.seed}"
    which = "with and without clip-norm" if len(runs) > 1 else f"clip-norm {clips[0]:g}"
    text = f"# {title}: {which}\n\n" + table(runs)
    (out / f"{args.name}.md").write_text(text)
    plot(runs, out / f"{args.name}.png", title)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
