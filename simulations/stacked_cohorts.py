"""A node's client work in one round, stacked (`fedkd.stacked`) against one client after another,
side by side in one process: the time of `task.cohort_teachers` for every client of the run on
one node, in round 1 (no consensus yet) and round 2 (the consensus term, teachers started from a
student, as the default fd run does), each engine timed in turn, and the largest difference
between the two engines' released vectors.

    python simulations/stacked_cohorts.py --num-clients 100
    python simulations/stacked_cohorts.py --num-clients 100 --dataset /work/shared/data/fashion3615.npz

Every other setting is fedkd's default (`--set key=value` changes one, e.g. --set teacher-init=persist
for the digest step). Prints one line per round and engine, then the speed-ups and the load.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import numpy as np
import torch

from fedkd import distill, task
from fedkd.config import Config
from fedkd.models import build_model


def round_inputs(config: Config, splits, updates: dict) -> tuple[task.Consensus, dict]:
    """Round 2's consensus (the ensemble of round 1's vectors on the public sample) and a student
    to start from (a fresh student: its weights only set where teachers start)."""
    layout = task.vector_layout(config, splits, 1)
    total = np.sum([u.vector for u in updates.values()], axis=0, dtype=np.float64)
    (labels, weights), _ = layout.unpack(total)
    teacher = distill.combine(labels, len(updates), config.ensemble, config.temperature, weights=weights)
    indices = task.public_sample(config, 1)
    teacher = distill.Teacher(teacher.values[: len(indices)], teacher.kind, teacher.temperature)
    torch.manual_seed(config.seed)
    student = build_model(config.student_model, splits.input_shape, splits.num_classes).state_dict()
    return task.Consensus(indices, teacher), student


def timed(config: Config, engine: str, server_round: int, consensus, student) -> tuple[float, dict]:
    c = replace(config, cohort_engine=engine)
    starts = {pid: task.ClientStart() for pid in range(c.num_clients)}
    t0 = time.perf_counter()
    out = task.cohort_teachers(c, server_round, starts, consensus, student)
    return time.perf_counter() - t0, out


def largest_difference(a: dict, b: dict) -> float:
    return max(float(np.abs(a[pid].vector - b[pid].vector).max()) for pid in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-clients", type=int, default=100)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--repeats", type=int, default=1, help="timings per round and engine (the median is printed)")
    parser.add_argument("--rounds", default="1,2", help="which of rounds 1 and 2 to time (round 2 costs one more "
                        "stacked round 1 for its consensus)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    settings = {"num-clients": args.num_clients, "dataset": args.dataset}
    settings.update(dict(item.split("=", 1) for item in args.set))
    config = Config.from_run_config(settings)
    torch.set_num_threads(max(1, int(config.client_cpus)))  # as the ClientApp sets it
    splits = task.splits_for(config)
    print(f"{args.dataset}: {config.num_clients} clients on one node, partition sizes "
          f"{min(map(len, splits.partitions))}..{max(map(len, splits.partitions))}, teachers "
          f"{task.resolve(config.teacher_model_for(0), splits.input_shape)}, torch threads {torch.get_num_threads()}, "
          f"device {task.resolve_device(config.device)}")
    wanted = {int(r) for r in args.rounds.split(",")}
    rounds = {1: (None, None)} if 1 in wanted else {}
    if 2 in wanted:
        _, first = timed(config, "stacked", 1, None, None)  # round 2's inputs
        rounds[2] = round_inputs(config, splits, first)
    figures = {}
    for r, (consensus, student) in rounds.items():
        times: dict[str, list[float]] = {"sequential": [], "stacked": []}
        outs = {}
        for _ in range(args.repeats):
            for engine in times:  # in turn, so that drift in the machine's speed touches both
                seconds, outs[engine] = timed(config, engine, r, consensus, student)
                times[engine].append(seconds)
        engines = {u.engine for u in outs["stacked"].values() if not isinstance(u, Exception)}
        for engine, ts in times.items():
            print(f"round {r} {engine:<10} {np.median(ts):8.2f} s  (runs: {', '.join(f'{t:.2f}' for t in ts)})")
        figures[r] = np.median(times["sequential"]) / np.median(times["stacked"])
        print(f"round {r} speed-up {figures[r]:.1f}x; stacked path ran as {sorted(engines)}; largest vector "
              f"difference {largest_difference(outs['sequential'], outs['stacked']):.2e}")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
