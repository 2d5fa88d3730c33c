"""How much of a teacher's accuracy the server's distillation can carry into the student through
the public set alone: the ceiling of fd's last step. Writes `<name>.md` and `<name>.json` into --out.

    python simulations/distill_ceiling.py --fashion ../shared/data/fashion3615.npz

For each data set and seed, an *oracle* teacher is trained centrally on the union of every
client's private data (`method central`, the run's rounds of local-epochs each, clipped steps).
It then stands in for the whole federation: one "client" whose release (`fedkd.task.release`, on
each round's public sample and its views) is the sum, and the server's own `finish_round`
distils and evaluates the student from it, warm-started over the same rounds as an fd run. So
the student learns from what fd's student learns from, only with a better teacher: how close it
comes to the oracle estimates how much a better ensemble could give at this public set and
schedule (an estimate, not a bound: a student may even pass its teacher).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path

from fedkd.config import Config
from fedkd.errors import UserError
from fedkd.results import write_json_atomic


def ceiling(settings: dict) -> dict:
    """One (data set, seed): the oracle's test accuracy and the student's per round."""
    import torch

    from fedkd import distill, task
    from fedkd.server import ClientReply, DistillationServer

    torch.set_num_threads(1)
    cfg = Config(**settings).validated()
    oracle = DistillationServer(cfg.replace(method="central"))
    for r in range(1, cfg.rounds + 1):
        oracle.central_round(r)
    server = DistillationServer(cfg)  # fd: a fresh student, seeded as in an fd run
    splits, device = server.splits, server.device
    students = []
    for r in range(1, cfg.rounds + 1):
        test_logits = distill.predict_logits(oracle.student, splits.test_x, device)  # (n_test, K)
        vector, _ = task.release(oracle.student, cfg, splits, splits.private_y, r, device, test_logits)
        record = server.finish_round(r, [ClientReply(0, vector, {"train-seconds": 0.0})], seconds_clients=0.0)
        students.append(record.student_accuracy)
    oracle_accuracy = distill.accuracy(distill.predict_logits(oracle.student, splits.test_x, device), splits.test_y)
    return {"dataset": settings["dataset"], "seed": cfg.seed, "oracle": oracle_accuracy, "students": students,
            "public_rows": task.query_rows(cfg, 1, splits.input_shape)}


def table(rows: list[dict]) -> str:
    lines = ["| data | seed | public rows (sample x (1 + views)) | oracle teacher | student by round | student / oracle |",
             "|---|---:|---:|---:|---|---:|"]
    for r in rows:
        per_round = ", ".join(f"{s:.3f}" for s in r["students"])
        lines.append(f"| {r['label']} | {r['seed']} | {r['public_rows']} | {r['oracle']:.3f} | {per_round} "
                     f"| {r['students'][-1] / r['oracle']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="simulations/results")
    parser.add_argument("--name", default="distill_ceiling", help="file stem of the .md and .json")
    parser.add_argument("--fashion", default="", help="path of fashion3615.npz (or any 28x28 .npz) to add")
    parser.add_argument("--no-digits", action="store_true", help="only the --fashion data set")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1, help="settings run in parallel")
    args = parser.parse_args(argv)
    data = ([("digits", "digits")] if not args.no_digits else []) + ([(Path(args.fashion).stem, args.fashion)]
                                                                      if args.fashion else [])
    if not data:
        parser.error("nothing to run: --no-digits without --fashion")
    if args.fashion and not Path(args.fashion).is_file():
        print(f"distill_ceiling: error: --fashion {args.fashion} does not exist", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.jobs < 1:
        parser.error("--rounds and --jobs must be at least 1")
    # server-step 1: the student distils the oracle's own predictions, not a step past a teacher that never moves
    jobs = [(label, {"dataset": dataset, "seed": seed, "rounds": args.rounds, "server_step": 1.0})
            for label, dataset in data for seed in args.seeds]
    try:
        for _, settings in jobs:  # every setting's data and config, checked before hours of work
            Config(**settings).validated()
    except UserError as exc:
        print(f"distill_ceiling: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for (label, _), row in zip(jobs, pool.imap(ceiling, [s for _, s in jobs])):
            rows.append({"label": label, **row})
            print(f"{label} seed {row['seed']}: oracle {row['oracle']:.3f}, student "
                  + ", ".join(f"{s:.3f}" for s in row["students"]), flush=True)
            write_json_atomic(out / (args.name + ".json"), {"rows": rows, "rounds": args.rounds})
    (out / (args.name + ".md")).write_text(report(rows, args.rounds))
    print(report(rows, args.rounds))
    return 0


def report(rows: list[dict], rounds: int) -> str:
    return ("# How far distillation on the public set carries a teacher\n\n"
            f"An oracle teacher (trained centrally on all private data, {rounds} rounds) distilled into a fresh "
            "student by the server, as in an fd run: test accuracy.\n\n" + table(rows))


if __name__ == "__main__":
    sys.exit(main())
