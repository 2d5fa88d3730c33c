"""Where an fd round's time goes, phase by phase, and how much of it is the server's: the figures
behind `server-threads` and the server's distillation speed (issue 29, docs/results.md).

    python simulations/server_speed.py --dataset ../shared/data/fashion3615.npz --rounds 1 --seeds 0 1 2
    python simulations/server_speed.py --dataset ../shared/data/cifar2796.npz --set server-threads=0

Each seed runs through `fedkd.simulation.simulate` on the in-process engine, so the clients and the
server share this process. For every round it prints the wall seconds of the clients' training,
the secure sum, the server's distillation and its evaluation (results.json's timing fields), this
process's CPU seconds in each phase (the `on_phase` callback marks where one ends; CPU seconds
move less than wall seconds on a shared machine, and they count the time OpenMP threads spend
spinning), the distillation's epochs and the student's test accuracy; then the means over seeds,
and the load average before and after. `--set KEY=VALUE` (repeatable) changes any setting, as
`fedkd run --set` does; `--json PATH` writes every row.

To compare two versions of the code, run this script once under each (PYTHONPATH) at the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from fedkd.config import Config
from fedkd.errors import UserError, report
from fedkd.simulation import simulate

WALL = ("seconds_clients", "seconds_aggregate", "seconds_distill", "seconds_evaluate")


class PhaseClock:
    """CPU seconds of this process per phase of a round: a phase runs from its `on_phase` line to the
    next line, or to the round's record (the server's work ends there)."""

    def __init__(self):
        self.current: str | None = None
        self.start = 0.0
        self.cpu: dict[str, float] = {}

    def mark(self, text: str | None) -> None:
        now = time.process_time()
        if self.current is not None:
            self.cpu[self.current] = self.cpu.get(self.current, 0.0) + now - self.start
        self.current, self.start = (None if text is None else _phase_name(text)), now

    def take(self) -> dict[str, float]:
        self.mark(None)
        cpu, self.cpu = self.cpu, {}
        return cpu


def _phase_name(text: str) -> str:
    """'round 2: 10 clients training' -> 'clients'; '... secure sum, share_keys' -> 'secure sum';
    '... distilling the student' -> 'server' (the ensemble, the distillation and the evaluation)."""
    if "training" in text:
        return "clients"
    if "secure sum" in text:
        return "secure sum"
    return "server" if "distilling" in text else text.split(": ", 1)[-1]


def run_seed(settings: dict, seed: int) -> list[dict]:
    """Every round of one seed: its timing fields, CPU seconds per phase, epochs and accuracy."""
    cfg = Config.from_run_config({**settings, "seed": seed, "out": tempfile.mkdtemp(prefix="fedkd-speed-")})
    clock, rows = PhaseClock(), []

    def on_round(record: dict) -> None:
        cpu = clock.take()
        rows.append({"seed": seed, "round": record["round"], **{k: record.get(k) for k in WALL},
                     "cpu_clients": cpu.get("clients", 0.0), "cpu_secure_sum": cpu.get("secure sum", 0.0),
                     "cpu_server": cpu.get("server", 0.0), "distill_epochs": record.get("distill_epochs"),
                     "student_accuracy": record.get("student_accuracy")})
        print(_line(rows[-1]), flush=True)

    simulate(cfg, on_round=on_round, on_phase=clock.mark)
    return rows


HEADER = ("| seed | round | clients s | secure sum s | distillation s | evaluation s | CPU s clients | "
          "CPU s secure sum | CPU s server | epochs | student |")


def _line(row: dict) -> str:
    def f(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    return (f"| {row['seed']} | {row['round']} | {f(row['seconds_clients'])} | {f(row['seconds_aggregate'])} | "
            f"{f(row['seconds_distill'])} | {f(row['seconds_evaluate'], '.2f')} | {f(row['cpu_clients'])} | "
            f"{f(row['cpu_secure_sum'])} | {f(row['cpu_server'])} | {f(row['distill_epochs'], 'd')} | "
            f"{f(row['student_accuracy'], '.4f')} |")


def summary(rows: list[dict]) -> str:
    """Means over seeds and rounds of the seconds, and each seed's last-round accuracy."""
    keys = (*WALL, "cpu_clients", "cpu_secure_sum", "cpu_server")
    means = {k: statistics.mean(r[k] or 0.0 for r in rows) for k in keys}
    last = {}
    for r in rows:
        last[r["seed"]] = r["student_accuracy"]
    accs = " ".join(f"{a:.4f}" for a in last.values())
    return ("per round, mean: " + ", ".join(f"{k.replace('seconds_', '')} {v:.1f} s" for k, v in means.items())
            + f"\nstudent accuracy after the last round, per seed: {accs}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other setting, hyphenated as in pyproject (repeatable)")
    parser.add_argument("--json", default="", help="write every row here")
    args = parser.parse_args(argv)
    try:
        settings = {"dataset": args.dataset, "rounds": args.rounds}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise UserError(f"--set {item}: expected KEY=VALUE")
            settings[key] = value
        Config.from_run_config(settings)  # a bad setting is one line before any run starts
        print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; settings {settings}")
        print(HEADER + "\n|" + "---:|" * (HEADER.count("|") - 1))
        rows = [row for seed in args.seeds for row in run_seed(settings, seed)]
    except UserError as exc:
        raise SystemExit(report(exc, "server_speed"))
    print(summary(rows))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"settings": settings, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
