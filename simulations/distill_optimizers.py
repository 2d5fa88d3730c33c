"""Which optimiser and rate distil an ensemble teacher into a fresh student, across kinds of data.

Round-1 teachers are trained once per data set with fedkd's defaults (10 clients, Dirichlet 0.5,
plain summation); their mean soft labels on the public set are the teacher. Each variant then
distils a fresh student (the `auto` model) from it with `fedkd.distill.distill` (60 epochs,
early stopping as in a run), for two student seeds, and reports the student's test accuracy.
This is the measurement behind the `distill-optimizer` / `distill-lr` defaults (see config.py).

    python simulations/distill_optimizers.py --fashion ../shared/data/fashion3615.npz --out simulations/results

The colour set is made from --fashion as in simulations/datasets_table.py (32x32x3, channels last).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from fedkd import distill, task
from fedkd.aggregate import plain_sum
from fedkd.config import Config
from fedkd.models import build_model
from fedkd.results import write_json_atomic
from input_kinds import make_inputs  # simulations/input_kinds.py, beside this script

VARIANTS = (("sgd", 0.05), ("sgd", 0.0167), ("adam", 0.0003), ("adam", 0.001), ("adam", 0.003))
SEEDS = (0, 1)


def teacher_for(dataset: str) -> tuple[Config, distill.Teacher, float]:
    """Round-1 ensemble teacher on the public set, and the ensemble's test accuracy."""
    cfg = Config(dataset=dataset, aggregation="plain", public_views=0)  # the bare public set, as measured for issue 11
    splits = task.splits_for(cfg)
    vectors = {pid: task.teacher_round(cfg, pid, 1, None).vector for pid in range(cfg.num_clients)}
    (public, public_w), (test, test_w) = task.vector_layout(cfg, splits, 1).unpack(plain_sum(vectors).total)
    teacher = distill.combine(public, len(vectors), cfg.ensemble, cfg.temperature, weights=public_w)
    ensemble = distill.combine(test, len(vectors), cfg.ensemble, cfg.temperature, weights=test_w)
    return cfg, teacher, distill.accuracy(ensemble.values, splits.test_y)


def run(label: str, dataset: str) -> dict:
    cfg, teacher, ensemble_acc = teacher_for(dataset)
    splits, cpu = task.splits_for(cfg), torch.device("cpu")
    row = {"data": label, "ensemble_accuracy": ensemble_acc, "variants": {}}
    for optimizer, lr in VARIANTS:
        accs, seconds = [], []
        for seed in SEEDS:
            torch.manual_seed(seed)
            student = build_model("auto", splits.input_shape, splits.num_classes)
            t0 = time.perf_counter()
            schedule = dataclasses.replace(distill.Schedule.server(cfg), lr=lr, optimizer=optimizer)
            distill.distill(student, splits.public_x, teacher, schedule,
                            generator=torch.Generator().manual_seed(seed), device=cpu)
            seconds.append(time.perf_counter() - t0)
            accs.append(distill.accuracy(distill.predict_logits(student, splits.test_x, cpu), splits.test_y))
        row["variants"][f"{optimizer} {lr:g}"] = {"accuracy": accs, "seconds": seconds}
        print(f"{label} {optimizer} {lr:g}: {accs} ({sum(seconds):.0f} s)", flush=True)
    return row


def markdown(rows: list[dict]) -> str:
    names = list(rows[0]["variants"])
    lines = ["| data | ensemble | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for r in rows:
        cells = [" / ".join(f"{a:.3f}" for a in r["variants"][n]["accuracy"]) for n in names]
        lines.append(f"| {r['data']} | {r['ensemble_accuracy']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion", type=Path, default=Path("../shared/data/fashion3615.npz"))
    parser.add_argument("--out", type=Path, default=Path("simulations/results"))
    args = parser.parse_args()
    if not args.fashion.is_file():
        parser.error(f"--fashion {args.fashion}: no such file")
    inputs = make_inputs(args.fashion, args.out / "datasets_inputs")
    kinds = {"digits": inputs["digits"], "fashion3615 (uint8 28x28)": inputs["fashion3615 (uint8 28x28)"],
             "colour 32x32x3 channels-last": inputs["colour 32x32x3 channels-last"]}
    rows = [run(label, dataset) for label, dataset in kinds.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "distill_optimizers.json", rows)
    (args.out / "distill_optimizers.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
