"""Cross-device scale: fd rounds with secure aggregation on both of `fedkd run`'s engines, against
the floor of the same work.

For each scenario (clients, clients per round) and each engine (`inprocess`, `ray`) it runs
`fedkd.simulation.simulate` (what `fedkd run` runs) in a fresh process, so peak memory is per run
and Ray starts cold. The floor comes from the same run: each round's own work, as the engine
measured it, with no messaging in it: the clients' training and predictions
(`client_work_seconds`), their secure-aggregation steps (`secagg.client_compute_seconds`), the
server's protocol work (`secagg.server_compute_seconds`) and its aggregation, distillation and
evaluation. A round's time over its floor is what the engine costs. There is no second round loop
here: every figure comes from the package's one engine.

It prints a table (clients, cohort, engine, steady round s, floor s, ratio, first round s, wall s,
peak RSS) and writes scale.md, scale.json and scale.png to --out.

    python simulations/scale.py                                   # 10/10, 100/100, 1000/100, 1000/1000
    python simulations/scale.py --scenarios 100/100 --engines inprocess
    python simulations/scale.py --scenarios 10000/100 --engines inprocess --rounds 2   # 10,000 clients
    python simulations/scale.py --one inprocess --clients 1000 --cohort 100 --rounds 3 # one run, JSON
    python simulations/scale.py --accuracy ../shared/data/fashion3615.npz --rounds 10   # 100 clients, 10 and 100
                                                                                        # per round, at the defaults

Every scenario uses fedkd's defaults except what it lists (`settings`): those above 100 clients use
num-public 100, iid partitions and few epochs, and above 1,000 clients a tiled copy of digits
(`tiled_digits`: the 1,797 images repeated with a seeded one-pixel jitter, so that each of 10,000
clients holds a few examples). Peak RSS: the whole process tree (Ray's raylet, GCS and workers
descend from the driver), sampled every 0.5 s from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIG = dict(partition="iid", num_public=100, local_epochs=2, digest_epochs=1, distill_epochs=20,
           secagg_timeout=1800.0, timeout=3600.0)
ENGINES = ("inprocess", "ray")


def settings(clients: int, cohort: int, rounds: int, data: str | None = None) -> dict:
    """The config of one scenario: fedkd's defaults, plus the large-federation adjustments."""
    base = dict(num_clients=clients, clients_per_round=0 if cohort >= clients else cohort, rounds=rounds,
                aggregation="secagg", method="fd")
    big = BIG if clients > 100 else {}
    return {**base, **big, **({"dataset": data} if data else {})}


def tiled_digits(copies: int, path: Path) -> Path:
    """digits repeated `copies` times, each copy shifted by a seeded pixel in x and y (8x8, 0..16),
    saved as an .npz fedkd reads (x, y): data that gives every one of many clients examples."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images.astype(np.float32), digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    xs = []
    for _ in range(copies):
        dy, dx = rng.integers(-1, 2, size=2)
        xs.append(np.roll(images, (int(dy), int(dx)), axis=(1, 2)))
    np.savez(path, x=np.concatenate(xs)[:, None] / 16.0, y=np.tile(labels, copies))
    return path


# ---- one measurement (in its own process) -------------------------------------------------------

def floor_of(record) -> float:
    """A round's own work (a `fedkd.rounds.RoundRecord`), as the engine measured it (see the
    module docstring)."""
    secagg = record.secagg
    # with secure aggregation seconds_aggregate is the whole protocol (messaging included): its
    # own work is the clients' and the server's compute, counted instead
    aggregate = 0.0 if secagg is not None else (record.seconds_aggregate or 0.0)
    parts = [record.client_work_seconds, record.seconds_distill, record.seconds_evaluate, aggregate]
    if secagg is not None:
        parts += [secagg.client_compute_seconds, sum(secagg.server_compute_seconds.values())]
    return float(sum(p for p in parts if p))


def run(config) -> dict:
    from fedkd.bench.procs import PeakRSS
    from fedkd.results import records_of
    from fedkd.simulation import simulate

    started = time.perf_counter()
    with PeakRSS() as peak:
        results = simulate(config)
    rounds = records_of(results["rounds"])
    return {"round_seconds": [r.seconds for r in rounds], "floor_seconds": [floor_of(r) for r in rounds],
            "wall_seconds": time.perf_counter() - started,
            "peak_rss_bytes": peak.peak, "driver_peak_rss_bytes": peak.own_peak,
            "student_accuracy": [r.student_accuracy for r in rounds],
            "secagg_stage_seconds": rounds[-1].secagg.seconds_per_stage, "cohorts": [list(r.cohort) for r in rounds]}


def one(args: argparse.Namespace) -> int:
    from fedkd.config import Config

    out = tempfile.mkdtemp(prefix="fedkd-scale-")
    data = None
    if args.clients > 1000:  # digits' 1,437 private examples leave most of 10,000 clients empty
        data = str(tiled_digits(-(-args.clients * 3 // 1437), Path(out) / "tiled-digits.npz"))
    config = Config(**settings(args.clients, args.cohort, args.rounds, data), engine=args.one, out=out)
    report = run(config)
    report["config"] = {k: v for k, v in config.to_run_config().items() if v != getattr(Config(), k.replace("-", "_"))
                        and k not in ("out", "dataset")}
    print(json.dumps(report))
    return 0


def measure(engine: str, clients: int, cohort: int, rounds: int, timeout: float) -> dict:
    command = [sys.executable, __file__, "--one", engine, "--clients", str(clients), "--cohort", str(cohort),
               "--rounds", str(rounds)]
    began, load = time.perf_counter(), os.getloadavg()[0]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{engine} {clients}/{cohort} failed (exit {done.returncode}):\n{tail}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["process_seconds"], report["load_before"] = time.perf_counter() - began, load
    sys.stderr.write(f"{engine:9s} {clients}/{cohort}: rounds {[round(s, 2) for s in report['round_seconds']]} s, "
                     f"floor {[round(s, 2) for s in report['floor_seconds']]} s, "
                     f"peak {report['peak_rss_bytes'] / 2**30:.2f} GiB\n")
    return report


# ---- the table -----------------------------------------------------------------------------------

def steady(seconds: list[float]) -> float:
    """The median of the rounds after the first (the first pays for start-up); on a shared
    machine one round can catch someone else's burst."""
    later = sorted(seconds[1:] or seconds)
    mid = len(later) // 2
    return later[mid] if len(later) % 2 else (later[mid - 1] + later[mid]) / 2


def row(clients: int, cohort: int, engine: str, report: dict) -> dict:
    # the ratio per round, then its median: a round and its floor are measured together
    ratios = [s / f for s, f in zip(report["round_seconds"], report["floor_seconds"]) if f > 0]
    return {"clients": clients, "cohort": cohort, "engine": engine,
            "steady_round_s": steady(report["round_seconds"]), "floor_round_s": steady(report["floor_seconds"]),
            "ratio": steady(ratios) if ratios else float("nan"), "first_round_s": report["round_seconds"][0],
            "wall_s": report["process_seconds"], "peak_rss_gib": report["peak_rss_bytes"] / 2**30,
            "driver_peak_rss_gib": report["driver_peak_rss_bytes"] / 2**30, "load_before": report["load_before"],
            "student_accuracy": report["student_accuracy"][-1], "report": report}


def markdown(rows: list[dict], rounds: int, command: str) -> str:
    lines = [
        f"fd rounds with secure aggregation on digits (tiled digits above 1,000 clients), both engines of "
        f"`fedkd run`, each in its own process, on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), no GPU; {rounds} rounds each, steady: the median of rounds "
        f"2..{rounds}; floor: the same rounds' own work (clients' training, predictions and protocol steps, the "
        f"server's protocol work, aggregation, distillation and evaluation); ratio: the median of each round over "
        f"its floor. Load average (1 min) at the start of each run: "
        f"{', '.join('%.1f' % r['load_before'] for r in rows)}. `{command}`",
        "",
        "| clients | per round | engine | steady round (s) | floor (s) | ratio | first round (s) | wall (s) | "
        "peak RSS (GiB) | student |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['clients']:,} | {r['cohort']:,} | {r['engine']} | {r['steady_round_s']:.2f} | "
                     f"{r['floor_round_s']:.2f} | {r['ratio']:.2f}x | {r['first_round_s']:.1f} | {r['wall_s']:.1f} | "
                     f"{r['peak_rss_gib']:.2f} | {r['student_accuracy']:.4f} |")
    lines += ["", "First round: the roll call, data loading and cold caches (and Ray's start on the ray engine); "
              "wall: the whole process, imports included. Peak RSS: the whole process tree. Above 100 clients: "
              + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in BIG.items()) + "; the others use fedkd's defaults.",
              ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = sorted({(r["clients"], r["cohort"]) for r in rows})
    engines = [e for e in ENGINES if any(r["engine"] == e for r in rows)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / (len(engines) + 1)
    for j, name in enumerate(engines + ["floor"]):
        values = []
        for s in scenarios:
            match = [r for r in rows if (r["clients"], r["cohort"]) == s and (r["engine"] == name or name == "floor")]
            values.append(min(r["floor_round_s"] for r in match) if name == "floor" and match
                          else match[0]["steady_round_s"] if match else 0.0)
        left.bar([i + (j - len(engines) / 2) * width for i in range(len(scenarios))], values, width,
                 label=name if name == "floor" else f"{name} engine")
    labels = [f"{c:,}/{k:,}" for c, k in scenarios]
    left.set(xticks=list(range(len(scenarios))), xticklabels=labels, xlabel="clients / per round",
             ylabel="steady round (s)", yscale="log")
    left.legend()
    for j, name in enumerate(engines):
        values = [next((r["peak_rss_gib"] for r in rows if (r["clients"], r["cohort"]) == s and r["engine"] == name), 0)
                  for s in scenarios]
        right.bar([i + (j - (len(engines) - 1) / 2) * 0.4 for i in range(len(scenarios))], values, 0.4, label=name)
    right.set(xticks=list(range(len(scenarios))), xticklabels=labels, xlabel="clients / per round",
              ylabel="peak RSS, process tree (GiB)")
    right.legend()
    for ax in (left, right):
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def accuracy(data: str, clients: int, cohorts: list[int], rounds: int, out: Path, command: str) -> str:
    """Student accuracy per round at fedkd's defaults on `data` with `clients` clients, for each
    cohort size, on the in-process engine (one run each, in this process), with round times."""
    from fedkd.config import Config
    from fedkd.results import records_of
    from fedkd.simulation import simulate

    runs = {}
    for cohort in cohorts:
        cfg = Config(dataset=data, num_clients=clients, clients_per_round=0 if cohort >= clients else cohort,
                     rounds=rounds, out=tempfile.mkdtemp(prefix="fedkd-scale-accuracy-"))
        began = time.perf_counter()
        rows = records_of(simulate(cfg, on_round=lambda r: sys.stderr.write(
            f"{cohort}/{clients} round {r.round}: student {r.student_accuracy:.4f} in {r.seconds:.1f} s\n"))["rounds"])
        runs[cohort] = {"student_accuracy": [r.student_accuracy for r in rows],
                        "ensemble_accuracy": [r.ensemble_accuracy for r in rows],
                        "round_seconds": [r.seconds for r in rows], "wall_seconds": time.perf_counter() - began}
    name = Path(data).stem
    lines = [f"Student accuracy on {name} with {clients} clients at fedkd's defaults (in-process engine, seed 0, "
             f"secure aggregation), by clients per round; round time in seconds. `{command}`", "",
             "| per round | " + " | ".join(f"round {i}" for i in range(1, rounds + 1)) + " | steady round (s) |",
             "|---:|" + "---:|" * (rounds + 1)]
    for cohort, run in runs.items():
        lines.append(f"| {cohort} | " + " | ".join(f"{a:.3f}" for a in run["student_accuracy"])
                     + f" | {steady(run['round_seconds']):.1f} |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"scale_accuracy_{name}.md").write_text(text)
    (out / f"scale_accuracy_{name}.json").write_text(json.dumps({"command": command, "clients": clients,
                                                                  "runs": runs}, indent=2) + "\n")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="10/10,100/100,1000/100,1000/1000", help="clients/per-round, comma list")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma list of inprocess, ray")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run; the median of rounds 2.. is the steady one")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="scale", help="file stem of the outputs")
    parser.add_argument("--accuracy", metavar="DATA", help="instead: student accuracy per round on DATA (a data set "
                        "fedkd reads) with --accuracy-clients clients, for each of --accuracy-cohorts per round")
    parser.add_argument("--accuracy-clients", type=int, default=100)
    parser.add_argument("--accuracy-cohorts", default="10,100")
    parser.add_argument("--one", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cohort", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    command = "python simulations/scale.py " + " ".join(sys.argv[1:])
    if args.accuracy:
        cohorts = [int(c) for c in args.accuracy_cohorts.split(",") if c]
        print(accuracy(args.accuracy, args.accuracy_clients, cohorts, args.rounds, args.out, command))
        return 0
    rows = []
    for item in filter(None, args.scenarios.split(",")):
        clients, _, cohort = item.partition("/")
        clients, cohort = int(clients), int(cohort or clients)
        for engine in engines:  # side by side: each scenario's engines one after the other
            rows.append(row(clients, cohort, engine, measure(engine, clients, cohort, args.rounds, args.timeout)))
    text = markdown(rows, args.rounds, command)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text)
    (args.out / f"{args.name}.json").write_text(json.dumps({"command": command, "rows": rows, "cpus": os.cpu_count()},
                                                           indent=2) + "\n")
    if rows:
        plot(rows, args.out / f"{args.name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
