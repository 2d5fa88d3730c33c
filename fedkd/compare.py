"""`fedkd compare`: several methods (and one setting's values) over several seeds on the same
partitions, through the package's one round engine, with a table, a plot and a JSON file.

Owns: the plan (method x value x seed), each run's folder under `--out/runs/`, skipping a run
whose folder already holds a completed results.json for the same settings (so a stopped
comparison resumes where it stopped), and the summary: mean and standard deviation of the final
student's accuracy over the seeds (the mean teacher's for `local`, which has no student), written
as compare.md, compare.csv, compare.json and compare.png. Must not touch: the rounds themselves
(`fedkd.simulation.simulate` runs each).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from fedkd.config import METHODS, Config
from fedkd.errors import ConfigError, UsageError
from fedkd.results import write_json_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", default="fd,fedavg", help=f"comma list of {', '.join(METHODS)} (default fd,fedavg)")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    parser.add_argument("--vary", default="", metavar="KEY=V1,V2",
                        help="one setting and its values, each a row per method (e.g. alpha=0.1,0.5)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting every run shares (repeat it); run-config keys, as in pyproject.toml")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="folder for the runs and the summary")


@dataclass(frozen=True)
class Run:
    method: str
    value: str  # the varied setting's value ("" without --vary)
    seed: int
    config: Config

    @property
    def folder(self) -> str:
        return "-".join(filter(None, [self.method, self.value.replace("/", "_"), f"seed{self.seed}"]))


def plan(args: argparse.Namespace) -> tuple[str, list[Run]]:
    """(the varied key, every run), or UsageError / ConfigError naming the bad input."""
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"--methods {args.methods!r}: choose from {', '.join(METHODS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise UsageError(f"--seeds {args.seeds!r} is not a comma list of integers") from None
    if not seeds:
        raise UsageError("--seeds names no seed")
    shared = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"--set {item!r} is not KEY=VALUE")
        shared[key] = value
    key, values = "", [""]
    if args.vary:
        key, eq, rest = args.vary.partition("=")
        values = [v for v in rest.split(",") if v]
        if not eq or not values:
            raise UsageError(f"--vary {args.vary!r} is not KEY=V1,V2,...")
    runs = []
    for method in methods:
        for value in values:
            for seed in seeds:
                settings = {**shared, "method": method, "seed": seed, **({key: value} if key else {})}
                config = Config.from_run_config(settings)  # ConfigError names a bad key or value
                runs.append(Run(method, value, seed, config))
    return key, runs


def run_all(runs: list[Run], out: Path, say=print) -> list[dict]:
    """Each run's final figures; a run whose folder holds a completed run of the same settings is
    read back, not run again."""
    from fedkd.simulation import simulate

    done = []
    for i, run in enumerate(runs, 1):
        folder = out / "runs" / run.folder
        config = run.config.replace(out=str(folder))
        saved = _completed(folder, config)
        if saved is None:
            say(f"[{i}/{len(runs)}] {run.folder}: running")
            folder.mkdir(parents=True, exist_ok=True)
            saved = simulate(config)
        else:
            say(f"[{i}/{len(runs)}] {run.folder}: done before, read from {folder}")
        final = saved["final"]
        accuracy = final.get("student_accuracy")
        if accuracy is None:  # local: no student, its teachers' mean
            accuracy = final.get("teacher_accuracy_mean")
        done.append({"method": run.method, "value": run.value, "seed": run.seed, "accuracy": accuracy,
                     "status": saved.get("status"), "folder": str(folder)})
    return done


def _completed(folder: Path, config: Config) -> dict | None:
    try:
        saved = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    # out differs by design; num-nodes 0 (auto) is recorded as what it resolved to
    given = {k: v for k, v in config.to_run_config().items() if k not in ("out", "num-nodes")}
    recorded = {k: v for k, v in saved.get("config", {}).items() if k in given}
    return saved if saved.get("status") == "completed" and recorded == given else None


def summarise(key: str, done: list[dict]) -> list[dict]:
    """One row per (method, value): mean and standard deviation over the seeds."""
    rows = []
    for method in dict.fromkeys(d["method"] for d in done):
        for value in dict.fromkeys(d["value"] for d in done if d["method"] == method):
            accs = [d["accuracy"] for d in done if (d["method"], d["value"]) == (method, value)
                    and d["accuracy"] is not None]
            rows.append({"method": method, key or "setting": value, "seeds": len(accs),
                         "mean": statistics.fmean(accs) if accs else None,
                         "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0 if accs else None,
                         "accuracies": accs})
    return rows


def write(out: Path, key: str, rows: list[dict], done: list[dict]) -> None:
    label = key or "setting"
    lines = [f"| method | {label} | accuracy (mean ± std) | seeds |", "|---|---|---:|---:|"]
    for r in rows:
        figure = "–" if r["mean"] is None else f"{r['mean']:.4f} ± {r['std']:.4f}"
        lines.append(f"| {r['method']} | {r[label] or '–'} | {figure} | {r['seeds']} |")
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", label, "mean", "std", "seeds"])
        for r in rows:
            writer.writerow([r["method"], r[label], r["mean"], r["std"], r["seeds"]])
    write_json_atomic(out / "compare.json", {"varied": key, "rows": rows, "runs": done})
    _plot(out / "compare.png", label, rows)


def _plot(path: Path, label: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["mean"] is not None]
    names = [f"{r['method']}{f', {label} {r[label]}' if r[label] else ''}" for r in shown]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(shown) + 1.5), 3.5))
    ax.bar(range(len(shown)), [r["mean"] for r in shown], yerr=[r["std"] for r in shown], capsize=4)
    ax.set_xticks(range(len(shown)), names, rotation=20, ha="right")
    low = min((r["mean"] - r["std"] for r in shown), default=0.0)
    high = max((r["mean"] + r["std"] for r in shown), default=1.0)
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.05))  # the differences show, not a 0..1 band
    ax.set_ylabel("final accuracy (mean ± std over seeds)")
    ax.set_title(f"{len(shown)} settings, {max((r['seeds'] for r in shown), default=0)} seeds each")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    """`fedkd compare`: 0 done, 2 bad usage (one line)."""
    from fedkd.errors import report

    try:
        key, runs = plan(args)
        args.out.mkdir(parents=True, exist_ok=True)
    except (UsageError, ConfigError) as exc:
        return report(exc)
    except OSError as exc:
        return report(UsageError(f"--out {args.out}: {exc.strerror or exc}"))
    done = run_all(runs, args.out)
    rows = summarise(key, done)
    write(args.out, key, rows, done)
    print((args.out / "compare.md").read_text(), end="")
    print(f"Saved {args.out}/: compare.md, compare.csv, compare.json, compare.png and .pdf; each run in runs/")
    return 0
