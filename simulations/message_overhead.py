"""What one Flower message exchange costs fedkd, apart from any work: a no-op `query` to every node
of a simulation, answered at once, timed with Flower's `Grid.send_and_receive` (a fixed 0.1 s
sleep between pulls) and with fedkd's `exchange` (a short poll that backs off), interleaved in one
simulation so both see the same machine, each after a random pause (as a server's own work
between stages puts it at a random point of the simulation engine's 0.1 s tick); and the wall time of `fedkd run` with its defaults, for
this tree and, given `--before PATH`, for another checkout (PYTHONPATH=PATH), run alternately.

    python simulations/message_overhead.py                     # 10 and 100 nodes, fedkd run x3
    python simulations/message_overhead.py --before /work/main # also time the other tree's fedkd run
    python simulations/message_overhead.py --deploy 3          # also fedkd deploy 3 against fedkd run --clients 3 (this tree)

Writes simulations/results/message_overhead.md (medians; the machine's load is printed with them).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedkd.apps.exchange import exchange
from fedkd.config import Config

RESULTS = Path(__file__).parent / "results" / "message_overhead.md"

client_app = ClientApp()


@client_app.query()
def noop(msg: Message, context: Context) -> Message:
    time.sleep(float(msg.content["c"]["work"]))  # a stand-in for a stage's compute (0: none)
    return Message(RecordDict({"reply": ConfigRecord({"ok": 1})}), reply_to=msg)


def time_exchanges(num_nodes: int, repeats: int, work: float = 0.0) -> dict[str, list[float]]:
    """Seconds per no-op exchange with all `num_nodes` nodes, per way of waiting for replies (the two
    ways take turns)."""
    from flwr.simulation import run_simulation

    ways = {"flower send_and_receive": lambda grid, msgs: grid.send_and_receive(msgs, timeout=600),
            "fedkd exchange": lambda grid, msgs: exchange(grid, msgs, timeout=600)}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        while len(nodes := sorted(grid.get_node_ids())) < num_nodes:
            time.sleep(0.1)
        pause = random.Random(0)
        for i in range(repeats + 1):  # the first pass warms the actors up and is not counted
            for name, send in ways.items():
                msgs = [Message(RecordDict({"c": ConfigRecord({"i": i, "work": work})}), n, "query", group_id=str(i)) for n in nodes]
                # as the server's own work between two stages would: a pause that puts the push at a
                # random point of the engine's 0.1 s feeder tick (back to back, both ways lock onto it)
                time.sleep(pause.uniform(0.0, 0.1))
                t0 = time.perf_counter()
                replies = list(send(grid, msgs))
                if len(replies) != num_nodes:
                    raise RuntimeError(f"{name}: {len(replies)} of {num_nodes} replies")
                if i:
                    seconds[name].append(time.perf_counter() - t0)

    backend = {"client_resources": {"num_cpus": Config().client_cpus, "num_gpus": 0.0},
               "init_args": {"logging_level": logging.ERROR, "log_to_driver": False}}
    run_simulation(server_app, client_app, num_supernodes=num_nodes, backend_config=backend)
    return seconds


def time_fedkd_run(trees: dict[str, str], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of `fedkd run` (defaults) per tree, the trees taking turns."""
    seconds: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(repeats):
        for name, tree in trees.items():
            with tempfile.TemporaryDirectory() as tmp:
                env = {**os.environ, "PYTHONPATH": tree}
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "fedkd.cli", "run", "--out", f"{tmp}/run"], env=env,
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                seconds[name].append(time.perf_counter() - t0)
    return seconds


def time_deploy_and_run(trees: dict[str, str], num_nodes: int, repeats: int) -> dict[str, list[float]]:
    """Wall seconds of `fedkd deploy N` and of `fedkd run --clients N` (defaults otherwise) per
    tree, each in a fresh folder, taking turns."""
    seconds: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, tree in trees.items():
            for kind, argv in (("deploy", ["deploy", str(num_nodes), "--quiet"]),
                               ("run", ["run", "--clients", str(num_nodes)])):
                with tempfile.TemporaryDirectory() as tmp:
                    env = {**os.environ, "PYTHONPATH": tree}
                    t0 = time.perf_counter()
                    subprocess.run([sys.executable, "-m", "fedkd.cli", *argv], env=env, cwd=tmp, check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    seconds.setdefault(f"{name}: fedkd {kind} {num_nodes}", []).append(time.perf_counter() - t0)
    return seconds


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}" if values else "n/a"


def median_mean(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} / {statistics.mean(values):.3f}" if values else "n/a"


def main() -> None:
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # quiets a Ray FutureWarning
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--repeats", type=int, default=10, help="timed exchanges per way and size")
    parser.add_argument("--work", type=float, nargs="+", default=[0.0, 0.02],
                        help="seconds each node spends per message (0: a no-op; 0.02: about a secagg stage)")
    parser.add_argument("--run-repeats", type=int, default=3, help="fedkd run wall times per tree (0: skip)")
    parser.add_argument("--before", help="another checkout whose fedkd run is timed beside this tree's")
    parser.add_argument("--deploy", type=int, default=0, metavar="N",
                        help="also time `fedkd deploy N` against `fedkd run --clients N` (0: skip)")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    lines = ["# Per-message overhead", "",
             f"`python simulations/message_overhead.py {' '.join(sys.argv[1:])}`; "
             f"{os.cpu_count()} cores, load average {load:.2f} at the start. Medians.", "",
             "Where a simulated exchange's time goes in Flower 1.41: the ServerApp's "
             "`InMemoryGrid.send_and_receive` sleeps 0.1 s between pulls (flwr/superlink/grid/inmemory_grid.py:177; "
             "fedkd's `exchange` replaces it), and the simulation engine's feeder thread hands queued messages to "
             "the Ray workers only every 0.1 s (flwr/server/superlink/fleet/vce/vce_api.py:180, not configurable), "
             "scanning every stored message once per node each time (quadratic in the number of nodes). "
             "Back-to-back exchanges lock onto that 0.1 s tick.", "",
             "## One query exchange with every node (seconds; 2 Ray actors, as `fedkd run` on 2 cores)", "",
             "| nodes | work per message | Flower `send_and_receive`, median / mean | fedkd `exchange`, median / mean | repeats |",
             "|---:|---:|---:|---:|---:|"]
    for n, work in [(n, w) for n in args.nodes for w in args.work]:
        s = time_exchanges(n, args.repeats, work)
        row = f"| {n} | {work:g} s | {median_mean(s['flower send_and_receive'])} | {median_mean(s['fedkd exchange'])} | {args.repeats} |"
        print(row, flush=True)
        lines.append(row)
    if args.run_repeats:
        trees = {"this tree": str(Path(__file__).resolve().parents[1])}
        if args.before:
            trees = {f"before ({args.before})": args.before, **trees}
        s = time_fedkd_run(trees, args.run_repeats)
        lines += ["", "## `fedkd run` with its defaults (wall seconds, process start to exit)", "",
                  "| tree | median | all |", "|---|---:|---|"]
        for name, values in s.items():
            row = f"| {name} | {median(values)} | {', '.join(f'{v:.1f}' for v in values)} |"
            print(row, flush=True)
            lines.append(row)
    if args.deploy:  # this tree only: a deployment takes minutes here
        s = time_deploy_and_run({"this tree": str(Path(__file__).resolve().parents[1])}, args.deploy, 1)
        lines += ["", f"## `fedkd deploy {args.deploy}` against `fedkd run --clients {args.deploy}` (wall seconds)", "",
                  "| what | seconds |", "|---|---:|"]
        for name, values in s.items():
            row = f"| {name} | {median(values)} |"
            print(row, flush=True)
            lines.append(row)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
