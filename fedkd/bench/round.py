"""`fedkd bench round`: time full fd rounds by phase, on either engine of `fedkd run`.

Owns: running a short simulation and splitting one steady-state round (the last; the first also
pays for loading the data, and on Ray for starting it) into the clients' own work (training and
prediction), messaging, aggregation, distillation and evaluation. Prints a table, or JSON with
--json. A benchmark, not a test.
Settings not given here take `fedkd.config.Config`'s defaults; runs through `fedkd.simulation`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from rich.console import Console
from rich.table import Table

from fedkd.config import Config
from fedkd.errors import ConfigError
from fedkd.results import records_of
from fedkd.rounds import RoundRecord
from fedkd.simulation import simulate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=Config.num_clients)
    parser.add_argument("--dataset", default=Config.dataset)
    parser.add_argument("--device", default=Config.device, help="auto | cpu | cuda (clients and server)")
    parser.add_argument("--aggregation", default=Config.aggregation, help="secagg | plain")
    parser.add_argument("--rounds", type=int, default=2, help="rounds to run; the last one is reported")
    parser.add_argument("--client-gpus", type=float, default=None, help="GPU share per simulated client")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other setting")
    parser.add_argument("--json", action="store_true")


def phases(record: RoundRecord, parallel: bool = False) -> dict[str, float]:
    """Seconds per phase of one round. The clients' own work is summed over
    the cohort where clients run one after another (the in-process engine), and is the slowest
    client's where nodes run in parallel (`parallel`, Ray); 'messaging' is the rest of the clients'
    wall time (messages, serialisation, scheduling, waiting)."""
    if parallel:
        work = (record.client_train_seconds_max or 0.0) + (record.client_predict_seconds_max or 0.0)
        label = "clients' training and prediction (slowest client)"
    else:
        work = record.client_work_seconds or 0.0
        label = "clients' training and prediction (all clients)"
    return {
        label: work,
        "messaging and scheduling": max(record.seconds_clients - work, 0.0),
        "aggregation": record.seconds_aggregate or 0.0,
        "  of which secagg server compute": (sum(record.secagg.server_compute_seconds.values())
                                             if record.secagg is not None else 0.0),
        "distillation": record.seconds_distill or 0.0,
        "evaluation": record.seconds_evaluate or 0.0,
        "round total": record.seconds,
    }


def main(args: argparse.Namespace) -> int:
    settings = {"num-clients": args.clients, "dataset": args.dataset, "device": args.device,
                "aggregation": args.aggregation, "rounds": args.rounds, "out": tempfile.mkdtemp(prefix="fedkd-bench-")}
    if args.client_gpus is not None:
        settings["client-gpus"] = args.client_gpus
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            print(f"fedkd bench round: error: --set {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        settings[key] = value
    try:
        config = Config.from_run_config(settings)
    except ConfigError as exc:
        print(f"fedkd bench round: error: {exc}", file=sys.stderr)
        return 2
    results = simulate(config)
    records = records_of(results["rounds"])
    first, last = records[0], records[-1]
    report = {"config": {k: settings[k] for k in settings if k != "out"}, "round": last.round,
              "phases_seconds": phases(last, parallel=config.engine == "ray"), "first_round_seconds": first.seconds,
              "student_accuracy": last.student_accuracy}
    try:
        import torch  # heavy, and only for the GPU figure

        if torch.cuda.is_available():
            report["server_gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    except ImportError:
        pass
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    table = Table(title=f"one fd round (round {last['round']} of {len(results['rounds'])}): {args.clients} clients, "
                        f"{args.dataset}, {args.aggregation}, device {args.device}, engine {config.engine}")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    total = last["seconds"] or 1.0
    for name, secs in report["phases_seconds"].items():
        table.add_row(name, f"{secs:.3f}", "" if name == "round total" else f"{100 * secs / total:.0f}%")
    table.caption = (f"first round (with loading the data{', and Ray start-up' if config.engine == 'ray' else ''}): "
                     f"{first['seconds']:.1f} s")
    Console().print(table)
    return 0
