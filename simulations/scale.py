"""Cross-device scale: fd rounds with secure aggregation through Flower against a no-Flower floor.

For each scenario (clients, clients per round) it runs, each in a fresh process so peak memory is
per run and Ray starts cold:
  flower: `fedkd.simulation.simulate` (what `fedkd run` runs), `--rounds` rounds; steady: the median after the first;
  floor:  the same client and server work in one process without Flower or Ray: each cohort client's
          `fedkd.task.teacher_round` in turn (torch at client-cpus threads, as the ClientApp sets it),
          the secure sum of their vectors by `fedkd.secagg.inmemory.run_in_memory` with the round's
          own `secagg_config`, then `DistillationServer.finish_round`.
It prints a table (clients, cohort, steady round s, floor s, ratio, first round s, peak RSS) and
writes scale.md, scale.json and scale.png to --out. With --accuracy N it also runs the 1,000-client
federation with every client in each round for N rounds, and reports its student's accuracy after
N rounds, round time and memory beside the --big-cohort-per-round run's.

    python simulations/scale.py --accuracy 1                 # 10/10, 100/100, 1000/100, and 1000/all, 1 round
    python simulations/scale.py --scenarios 10/10,100/100   # no 1,000-client runs
    python simulations/scale.py --one flower --clients 1000 --cohort 100 --rounds 3   # one run, JSON

Every scenario uses fedkd's defaults except what it lists (`settings`): the 1,000-client ones use
num-public 100 and iid partitions (digits' private pool leaves 1-2 examples per client) and few
epochs. Peak RSS: the whole process tree (Ray's raylet, GCS and workers descend from the driver),
sampled every 0.5 s from /proc.
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

# secagg-timeout: each stage of an all-1,000 round took minutes on the shared 2-core machine (Flower's
# simulation scans every node's pending messages), past the default 120 s
BIG = dict(partition="iid", num_public=100, local_epochs=2, digest_epochs=1, distill_epochs=20,
           secagg_timeout=1800.0, timeout=3600.0)


def settings(clients: int, cohort: int, rounds: int) -> dict:
    """The config of one scenario: fedkd's defaults, plus the 1,000-client adjustments."""
    base = dict(num_clients=clients, clients_per_round=0 if cohort >= clients else cohort, rounds=rounds,
                aggregation="secagg", method="fd")
    return {**base, **(BIG if clients > 100 else {})}


# ---- one measurement (in its own process) -------------------------------------------------------

def run_flower(config) -> dict:
    from fedkd.bench.procs import PeakRSS
    from fedkd.simulation import simulate

    started = time.perf_counter()
    with PeakRSS() as peak:
        results = simulate(config)
    rounds = results["rounds"]
    return {"round_seconds": [r["seconds"] for r in rounds], "wall_seconds": time.perf_counter() - started,
            "peak_rss_bytes": peak.peak, "driver_peak_rss_bytes": peak.own_peak,
            "student_accuracy": [r["student_accuracy"] for r in rounds],
            "secagg_stage_seconds": rounds[-1]["secagg"]["seconds_per_stage"],
            "secagg_server_compute_seconds": sum(rounds[-1]["secagg"]["server_compute_seconds"].values()),
            "cohorts": [r["cohort"] for r in rounds]}


def run_floor(config) -> dict:
    """The same rounds without Flower: clients in turn in this process, the secure sum in memory."""
    import numpy as np
    import torch

    from fedkd.aggregate import Aggregate
    from fedkd.aggregate import secagg_config
    from fedkd.bench.procs import PeakRSS
    from fedkd.secagg.inmemory import run_in_memory
    from fedkd.server import ClientReply, DistillationServer
    from fedkd.task import sample_cohort, teacher_round, vector_layout

    server_threads = torch.get_num_threads()
    started = time.perf_counter()
    times, accuracy = [], []
    with PeakRSS() as peak:
        server = DistillationServer(config)
        teachers: dict[int, dict] = {}  # partition id -> teacher weights (the nodes' context.state)
        for r in range(1, config.rounds + 1):
            t0 = time.perf_counter()
            torch.set_num_threads(max(1, int(config.client_cpus)))
            replies, vectors = [], {}
            student = {k: v.clone() for k, v in server.student.state_dict().items()}  # sent down (teacher-init)
            prototypes = server.prototype_states()  # other architectures' students (mixed teachers), sent down too
            for pid in sample_cohort(config, r):
                update = teacher_round(config, pid, r, teachers.get(pid), consensus=server.consensus,
                                       student=student, prototypes=prototypes)
                teachers[pid] = update.state
                vectors[pid] = update.vector
                replies.append(ClientReply(pid, np.zeros(0, np.float32), update.metrics))
            torch.set_num_threads(server_threads)
            seconds_clients = time.perf_counter() - t0
            length = vector_layout(config, server.splits, r).length
            sent: dict[int, int] = dict.fromkeys(vectors, 0)

            def observe(stage, cid, seconds, nbytes):
                sent[cid] += nbytes

            t1 = time.perf_counter()
            sa = secagg_config(config, server.splits.num_classes, r)
            result = run_in_memory(vectors, sa, session_id=f"floor/round-{r}".encode(), dim=length,
                                   observer=observe)
            details = {"survivors": list(result.survivors), "seconds_total": time.perf_counter() - t1,
                       "upload_bytes_per_client": float(np.mean([sent[c] for c in result.survivors]))}
            aggregate = Aggregate(result.sum, result.count, tuple(result.survivors), details)
            del vectors
            record = server.finish_round(r, replies, seconds_clients=seconds_clients, aggregate=aggregate)
            times.append(time.perf_counter() - t0)
            accuracy.append(record["student_accuracy"])
    return {"round_seconds": times, "wall_seconds": time.perf_counter() - started, "peak_rss_bytes": peak.peak,
            "student_accuracy": accuracy}


def one(args: argparse.Namespace) -> int:
    from fedkd.config import Config

    out = tempfile.mkdtemp(prefix="fedkd-scale-")
    config = Config(**settings(args.clients, args.cohort, args.rounds), out=out)
    if args.cohort_all:
        config = config.replace(clients_per_round=0)
    report = run_flower(config) if args.one == "flower" else run_floor(config)
    report["config"] = {k: v for k, v in config.to_run_config().items() if v != getattr(Config(), k.replace("-", "_"))
                        and k != "out"}
    print(json.dumps(report))
    return 0


def measure(kind: str, clients: int, cohort: int, rounds: int, timeout: float, cohort_all: bool = False) -> dict:
    command = [sys.executable, __file__, "--one", kind, "--clients", str(clients), "--cohort", str(cohort),
               "--rounds", str(rounds)] + (["--cohort-all"] if cohort_all else [])
    began, load = time.perf_counter(), os.getloadavg()[0]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{kind} {clients}/{cohort} failed (exit {done.returncode}):\n{tail}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["process_seconds"], report["load_before"] = time.perf_counter() - began, load
    sys.stderr.write(f"{kind:6s} {clients}/{'all' if cohort_all else cohort}: rounds {[round(s, 2) for s in report['round_seconds']]} s, "
                     f"peak {report['peak_rss_bytes'] / 2**30:.2f} GiB\n")
    return report


# ---- the table -----------------------------------------------------------------------------------

def steady(seconds: list[float]) -> float:
    """The median of the rounds after the first (the first pays for start-up); on a shared
    machine one round can catch someone else's burst."""
    later = sorted(seconds[1:] or seconds)
    mid = len(later) // 2
    return later[mid] if len(later) % 2 else (later[mid - 1] + later[mid]) / 2


def row(clients: int, cohort: int, flower: dict, floor: dict) -> dict:
    steady_s, floor_steady = steady(flower["round_seconds"]), steady(floor["round_seconds"])
    return {"clients": clients, "cohort": cohort, "steady_round_s": steady_s, "floor_round_s": floor_steady,
            "ratio": steady_s / floor_steady, "first_round_s": flower["round_seconds"][0],
            "peak_rss_gib": flower["peak_rss_bytes"] / 2**30, "floor_peak_rss_gib": floor["peak_rss_bytes"] / 2**30,
            "driver_peak_rss_gib": flower["driver_peak_rss_bytes"] / 2**30,
            "secagg_stage_seconds": flower["secagg_stage_seconds"], "load_before": flower["load_before"],
            "flower": flower, "floor": floor}


def markdown(rows: list[dict], accuracy: dict | None, rounds: int, command: str) -> str:
    lines = [] if not rows else [
        f"fd rounds with secure aggregation on digits, `fedkd run`'s simulation against a no-Flower floor "
        f"(same client and server work in one process, secure sum in memory), run side by side on "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU; {rounds} rounds each, "
        f"steady round: the median of rounds 2..{rounds}. Load average (1 min) at the start of each run: "
        f"{', '.join('%.1f' % r['load_before'] for r in rows)} (other work shared the machine). `{command}`",
        "",
        "| clients | cohort | steady round (s) | floor (s) | ratio | first round (s) | peak RSS (GiB) | of which driver | "
        "floor peak RSS (GiB) | secagg stages (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        stages = " + ".join(f"{s:.2f}" for s in r["secagg_stage_seconds"].values())
        lines.append(f"| {r['clients']} | {r['cohort']} | {r['steady_round_s']:.2f} | {r['floor_round_s']:.2f} | "
                     f"{r['ratio']:.2f}x | {r['first_round_s']:.1f} | {r['peak_rss_gib']:.2f} | "
                     f"{r['driver_peak_rss_gib']:.2f} | {r['floor_peak_rss_gib']:.2f} | {stages} |")
    lines += ["", "First round: Ray start-up, the roll call (with a cohort) and cold caches. Peak RSS: the whole "
              "process tree (driver, Ray's daemons and workers; shared library pages count once per process); "
              "driver: the simulation's own process, which holds every node's Flower context and `context.state` "
              "(its teacher). 1,000-client scenarios: "
              + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in BIG.items()) + "; the others use fedkd's defaults.", ""]
    if accuracy:
        lines += [f"1,000 clients, student accuracy after {accuracy['rounds']} round(s), the 1,000-client settings "
                  f"above (steady round: nan with one round). `{command}`", "",
                  "| per round | student accuracy | steady round (s) | first round (s) | peak RSS (GiB) |",
                  "|---|---:|---:|---:|---:|"]
        n = accuracy["rounds"]
        for name in ("cohort", "all"):
            a = accuracy[name]
            lines.append(f"| {a['label']} | {a['student_accuracy'][n - 1]:.4f} | "
                         f"{steady(a['round_seconds'][:n]) if n > 1 else float('nan'):.1f} | "
                         f"{a['round_seconds'][0]:.1f} | {a['peak_rss_bytes'] / 2**30:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['clients']}/{r['cohort']}" for r in rows]
    x = range(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar([i - 0.2 for i in x], [r["steady_round_s"] for r in rows], 0.4, label="fedkd run (Flower)")
    left.bar([i + 0.2 for i in x], [r["floor_round_s"] for r in rows], 0.4, label="floor (no Flower)")
    left.set(xticks=list(x), xticklabels=labels, xlabel="clients / per round", ylabel="steady round (s)")
    left.legend()
    right.bar(list(x), [r["peak_rss_gib"] for r in rows])
    right.set(xticks=list(x), xticklabels=labels, xlabel="clients / per round", ylabel="peak RSS, process tree (GiB)")
    for ax in (left, right):
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="10/10,100/100,1000/100", help="clients/per-round, comma list")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run; the median of rounds 2.. is the steady one")
    parser.add_argument("--accuracy", type=int, default=0, metavar="ROUNDS",
                        help="also run 1,000 clients with all of them in every round for ROUNDS rounds (a round with "
                             "1,000 is slow: Flower's simulation scans every node's pending messages), and compare "
                             "with the --big-cohort-per-round run after as many rounds")
    parser.add_argument("--big-cohort", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--one", choices=("flower", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cohort", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cohort-all", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)
    command = "python simulations/scale.py " + " ".join(sys.argv[1:])
    rows = []
    for item in filter(None, args.scenarios.split(",")):
        clients, _, cohort = item.partition("/")
        clients, cohort = int(clients), int(cohort or clients)
        flower = measure("flower", clients, cohort, args.rounds, args.timeout)
        floor = measure("floor", clients, cohort, args.rounds, args.timeout)
        rows.append(row(clients, cohort, flower, floor))
    accuracy = None
    if args.accuracy:  # the big sampled scenario's own run, beside every client in every round
        big = next((r for r in rows if r["clients"] == 1000 and r["cohort"] == args.big_cohort), None)
        sampled = big["flower"] if big else measure("flower", 1000, args.big_cohort, args.accuracy, args.timeout)
        every = measure("flower", 1000, args.big_cohort, args.accuracy, args.timeout, cohort_all=True)
        accuracy = {"rounds": args.accuracy,
                    "cohort": {"label": f"{args.big_cohort} of 1,000", **sampled},
                    "all": {"label": "all 1,000", **every}}
    text = markdown(rows, accuracy, args.rounds, command)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.md").write_text(text)
    (args.out / "scale.json").write_text(json.dumps({"command": command, "rows": rows, "accuracy": accuracy,
                                                     "cpus": os.cpu_count()}, indent=2) + "\n")
    if rows:
        plot(rows, args.out / "scale.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
