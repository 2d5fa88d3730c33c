"""fd against FedAvg (and the central and local bounds) under label skew, over several seeds, and
an ablation of fd's knowledge-transfer options: writes `compare_methods.md` (tables),
`compare_methods.json` and `compare_methods.png` into --out.

    python simulations/compare_methods.py --out simulations/results                 # digits
    python simulations/compare_methods.py --fashion ../shared/data/fashion3615.npz  # + 28x28 grey

Every cell is the final-round student accuracy, mean +- standard deviation over --seeds; a row
differs from another only where their spreads do not overlap. Upload is bytes per client per
round: for fd, every stage of secure aggregation (advertised keys, shares, the masked vector,
signatures, unmasking shares), measured in a real secure-aggregation round at these settings;
for FedAvg, the model's float32 parameters.

Every run goes through the package's one round engine (`fedkd.simulation.simulate`, as `fedkd
run`), on --engine inprocess (the default) or ray; both give the same results
(tests/test_engine.py). fd runs use `--aggregation plain`: its fixed-point sum equals the secure
sum bit for bit (tests/test_secure_apps.py), so the figures hold for secure runs and the
protocol's cost is left out of the table's time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from fedkd.config import Config
from fedkd.results import write_json_atomic
from fedkd.rounds import RoundRecord

# (label, settings) of the ablation: fd's options one at a time around the default, then the baselines
ABLATION = (
    ("fd (default)", {}),
    ("fd, issue-11 settings", {"teacher_init": "persist", "vote_weighting": "none", "consensus_weight": 0.0,
                               "clip_norm": 0.0, "server_step": 1.0}),
    ("fd teacher-init persist", {"teacher_init": "persist"}),
    ("fd consensus-weight 0", {"consensus_weight": 0.0}),
    ("fd vote-weighting none", {"vote_weighting": "none"}),
    ("fd vote-weighting class-share", {"vote_weighting": "class-share"}),
    ("fd confidence max-prob", {"vote_weighting": "none", "confidence_weighting": "max-prob"}),
    ("fd confidence entropy", {"vote_weighting": "none", "confidence_weighting": "entropy"}),
    ("fd ensemble dsfl", {"ensemble": "dsfl"}),
    ("fd public-views 0", {"public_views": 0}),  # images of 16x16 and more: auto is 3 views
    ("fd clip-norm 0", {"clip_norm": 0.0}),  # local steps unclipped (before issue 12's last change)
    ("fd server-step 1", {"server_step": 1.0}),  # the ensemble itself, no step past it (distill.extrapolate)
    # mixed teachers as before issue 12's end: the MLP teachers keep their own weights and digest the consensus
    ("fd mixed mlp,cnn, no architecture students", {"teacher_models": "mlp,cnn", "architecture_students": False}),
    # reference rows for the mixed run: every teacher of one of its two architectures (the one the
    # student is not), so the mixed student can be read against both single-architecture federations.
    # Left out where that architecture is the data's auto model (the row would repeat the default)
    ("fd teachers mlp", {"teacher_models": "mlp"}),
    ("fd teachers cnn", {"teacher_models": "cnn"}),
)
MAIN = (
    ("fd", {}),
    ("fd mixed mlp,cnn", {"teacher_models": "mlp,cnn"}),
    ("fedavg", {"method": "fedavg"}),
    ("central", {"method": "central"}),
    ("local", {"method": "local"}),
)
SKEWS = (("dirichlet 0.1", {"alpha": 0.1}), ("dirichlet 0.5", {"alpha": 0.5}),
         ("pathological 2", {"partition": "pathological"}))


def repeats_default(settings: dict, dataset: str) -> bool:
    """Whether an ablation row's settings only name the data's auto teacher model: the row would
    be the default run again ("fd teachers mlp" on digits, "fd teachers cnn" on 28x28 images)."""
    if set(settings) != {"teacher_models"}:
        return False
    from fedkd import task
    from fedkd.models import auto_model

    shape = task.splits_for(Config(dataset=dataset).validated()).input_shape
    return settings["teacher_models"] == auto_model(shape)


def secure_upload(cfg: Config) -> float:
    """Bytes per client per round of fd with secure aggregation at `cfg`'s settings, all stages,
    from one real secure-aggregation round in memory (`fedkd.secagg.inmemory`) over vectors of
    the length fd uploads."""
    from fedkd import task
    from fedkd.aggregate import secagg_config
    from fedkd.secagg.inmemory import run_in_memory

    splits = task.splits_for(cfg)
    length = task.vector_layout(cfg, splits, 1).length
    rng = np.random.default_rng(0)
    vectors = {i: rng.random(length).astype(np.float32) for i in range(cfg.num_clients)}
    uploaded = dict.fromkeys(vectors, 0)

    def count(stage: str, client: int, seconds: float, reply_bytes: int) -> None:
        uploaded[client] += reply_bytes

    run_in_memory(vectors, secagg_config(cfg, splits.num_classes, 1), observer=count)
    return float(np.mean(list(uploaded.values())))


def run_one(cfg: Config, on_round=None) -> dict:
    """Every round of `cfg` through the package's engine (`fedkd.simulation.simulate`, what
    `fedkd run` runs); returns the last round's record, `on_round` sees every round's row. A run
    given no folder of its own (`out` at its default) saves into a fresh temporary one."""
    import tempfile

    from fedkd.simulation import simulate

    if cfg.out == Config().out:
        cfg = cfg.replace(out=tempfile.mkdtemp(prefix="fedkd-run-"))
    return simulate(cfg, on_round=on_round)["rounds"][-1]


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _one(job: tuple[str, dict, str]) -> dict:
    """One (settings, engine) run -> its last round record (in a worker process with --jobs)."""
    dataset, settings, engine = job
    return run_one(Config(dataset=dataset, engine=engine, **settings).validated())


def grid(dataset: str, label: str, variants, skews, seeds: list[int], rounds: int, engine: str, out: Path,
         jobs: int = 1, part: str = "", prefix: str = "") -> list[dict]:
    """Every (skew, variant, seed) of one data set; rows of mean and sd over the seeds. Every run's
    last record goes to `<prefix><label><part>-runs.json` in `out`."""
    plan = []
    for skew, skew_settings in skews:
        for name, settings in variants:
            for seed in seeds:
                run_settings = dict(rounds=rounds, seed=seed, aggregation="plain",
                                    out=str(out / "runs" / f"{prefix}{label}-{skew}-{name}-{seed}".replace(" ", "_")),
                                    **skew_settings, **settings)
                plan.append(((skew, name), (dataset, run_settings, engine)))
    t0 = time.perf_counter()
    if jobs > 1 and engine == "inprocess":
        import multiprocessing

        # one torch thread per worker: `jobs` workers of the default threads each would oversubscribe the cores
        with multiprocessing.get_context("spawn").Pool(jobs, initializer=_one_thread) as pool:
            records = pool.map(_one, [job for _, job in plan], chunksize=1)
    else:
        records = [_one(job) for _, job in plan]
    raw = out / f"{prefix}{label}{part}-runs.json"  # every run's last record, before any table is made of them
    write_json_atomic(raw, [{"key": list(key), "settings": job[1], "record": rec} for (key, job), rec in zip(plan, records)])
    rows = []
    for skew, _ in skews:
        for name, settings in variants:
            mine = [(job, RoundRecord.from_json(rec)) for (key, job), rec in zip(plan, records) if key == (skew, name)]
            # local has no student: its figure is the mean teacher's accuracy
            accs = [rec.student_accuracy if rec.student_accuracy is not None else rec.teacher_accuracy_mean
                    for _, rec in mine]
            ens = [rec.ensemble_accuracy for _, rec in mine if rec.ensemble_accuracy is not None]
            method = settings.get("method", "fd")
            last_settings = mine[-1][0][1]
            upload = None
            if method == "fd":
                upload = secure_upload(Config(dataset=dataset, **{**last_settings, "aggregation": "secagg"}))
            elif method == "fedavg":
                upload = float(mine[-1][1].upload_bytes_per_client)
            row = {"data": label, "skew": skew, "variant": name, "method": method, "seeds": seeds,
                   "student": accs, "student_mean": statistics.fmean(accs),
                   "student_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
                   "ensemble_mean": statistics.fmean(ens) if ens else None,
                   "upload_bytes_per_client_per_round": upload}
            rows.append(row)
            print(f"{label} {skew} {name}: student {row['student_mean']:.4f} +- {row['student_std']:.4f} "
                  f"({', '.join(f'{a:.3f}' for a in accs)})  upload {upload}", flush=True)
    print(f"{label}: {len(plan)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def _pm(row: dict) -> str:
    return f"{row['student_mean']:.3f} ± {row['student_std']:.3f}"


def main_table(rows: list[dict]) -> str:
    lines = ["| data | skew | fd | fd, mixed teachers mlp,cnn (FedAvg cannot run this) | FedAvg | central | local (mean teacher) | fd upload B | FedAvg upload B | fd/FedAvg upload |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    keys = sorted({(r["data"], r["skew"]) for r in rows if r["variant"] in dict(MAIN)},
                  key=lambda k: ([r["data"] for r in rows].index(k[0]), [s for s, _ in SKEWS].index(k[1])))
    for data, skew in keys:
        cell = {r["variant"]: r for r in rows if r["data"] == data and r["skew"] == skew}
        get = lambda v: _pm(cell[v]) if v in cell else "–"
        fd_up = cell.get("fd", {}).get("upload_bytes_per_client_per_round")
        fa_up = cell.get("fedavg", {}).get("upload_bytes_per_client_per_round")
        ratio = f"{fd_up / fa_up:.2f}" if fd_up and fa_up else "–"
        mixed = get("fd mixed mlp,cnn")
        lines.append(f"| {data} | {skew} | {get('fd')} | {mixed} | {get('fedavg')} | "
                     f"{get('central')} | {get('local')} | {fd_up and f'{fd_up:,.0f}' or '–'} | "
                     f"{fa_up and f'{fa_up:,.0f}' or '–'} | {ratio} |")
    return "\n".join(lines) + "\n"


def ablation_table(rows: list[dict]) -> str:
    ab = [r for r in rows if r["variant"] in dict(ABLATION)]
    skews = [s for s, _ in SKEWS if any(r["skew"] == s for r in ab)]
    datas = list(dict.fromkeys(r["data"] for r in ab))
    head = [f"{d} {s}" for d in datas for s in skews]
    lines = ["| variant | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for name, _ in ABLATION:
        cells = []
        for d in datas:
            for s in skews:
                r = next((r for r in ab if r["data"] == d and r["skew"] == s and r["variant"] == name), None)
                cells.append(_pm(r) if r else "–")
        if any(c != "–" for c in cells):  # variants run on none of these data sets are left out
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _ in MAIN if any(r["variant"] == n for r in rows)]
    if not names:  # an ablation-only run (--main-variants none): nothing for the main plot
        return
    keys = list(dict.fromkeys((r["data"], r["skew"]) for r in rows if r["variant"] in names))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * len(keys)), 4.2))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        means, stds = [], []
        for data, skew in keys:
            r = next((r for r in rows if r["data"] == data and r["skew"] == skew and r["variant"] == name), None)
            means.append(r["student_mean"] if r else np.nan)
            stds.append(r["student_std"] if r else 0.0)
        ax.bar(np.arange(len(keys)) + i * width, means, width, yerr=stds, capsize=2, label=name)
    ax.set_xticks(np.arange(len(keys)) + width * (len(names) - 1) / 2)
    ax.set_xticklabels([f"{d}\n{s}" for d, s in keys], fontsize=8)
    ax.set_ylabel("student test accuracy (final round)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("fd vs FedAvg under label skew (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="simulations/results")
    parser.add_argument("--name", default="compare_methods", help="file stem of the .md, .json and .png")
    parser.add_argument("--fashion", default="", help="path of fashion3615.npz (or any 28x28 .npz) to add")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engine", choices=("inprocess", "ray"), default="inprocess")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (inprocess engine)")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--no-digits", action="store_true", help="only the --fashion data set")
    parser.add_argument("--main-variants", nargs="+", default=None, help="subset of the main table's variants")
    parser.add_argument("--skews", nargs="+", default=None, help="subset of: " + ", ".join(s for s, _ in SKEWS))
    parser.add_argument("--ablation-on", default="digits", help="digits | fashion | both")
    parser.add_argument("--ablation-variants", nargs="+", default=None,
                        help="subset of the ablation's variants, by label: " + ", ".join(v for v, _ in ABLATION[1:]))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = ([("digits", "digits")] if not args.no_digits else []) + ([("fashion3615", args.fashion)] if args.fashion else [])
    if args.fashion and not Path(args.fashion).exists():
        print(f"compare_methods: error: --fashion {args.fashion} does not exist", file=sys.stderr)
        return 2
    # a label that names no row would silently run nothing for it: refuse it ("none": no main row)
    for flag, given, known in (("--main-variants", args.main_variants, [v for v, _ in MAIN] + ["none"]),
                               ("--ablation-variants", args.ablation_variants, [v for v, _ in ABLATION[1:]]),
                               ("--skews", args.skews, [k for k, _ in SKEWS])):
        unknown = [g for g in given or () if g not in known]
        if unknown:
            print(f"compare_methods: error: {flag}: unknown {', '.join(repr(u) for u in unknown)}; "
                  f"choose from {', '.join(repr(k) for k in known)}", file=sys.stderr)
            return 2
    main_variants = [v for v in MAIN if args.main_variants is None or v[0] in args.main_variants]
    skews = [k for k in SKEWS if args.skews is None or k[0] in args.skews]
    rows: list[dict] = []
    path = out / (args.name + ".json")
    # per-run files: "digits-runs.json" for the default name, else prefixed so that another --name
    # in the same folder does not overwrite them
    prefix = "" if args.name == "compare_methods" else f"{args.name}-"
    for label, dataset in data:
        rows += grid(dataset, label, main_variants, skews, args.seeds, args.rounds, args.engine, out, args.jobs,
                     prefix=prefix)
        write_json_atomic(path, {"rows": rows, "seeds": args.seeds, "rounds": args.rounds, "engine": args.engine})
    if not args.skip_ablation:
        for label, dataset in data:
            if args.ablation_on not in ("both", label if label == "digits" else "fashion"):
                continue
            variants = [v for v in ABLATION[1:] if args.ablation_variants is None or v[0] in args.ablation_variants]
            skipped = [v for v in variants if repeats_default(v[1], dataset)
                       # digits are 8x8: auto views are 0 there, so the row would repeat the default
                       or (label == "digits" and "public_views" in v[1])]
            if skipped and args.ablation_variants is not None:  # asked for by name: say why it does not run
                print(f"compare_methods: {label}: left out {', '.join(repr(v) for v, _ in skipped)}: "
                      f"the same run as the default there", file=sys.stderr)
            variants = [v for v in variants if v not in skipped]
            rows += grid(dataset, label, variants, [k for k in skews if k[0] != 'pathological 2'], args.seeds,
                         args.rounds, args.engine, out, args.jobs, part="-ablation", prefix=prefix)
            write_json_atomic(path, {"rows": rows, "seeds": args.seeds, "rounds": args.rounds, "engine": args.engine})
    for r in rows:  # the ablation's default row is the main table's fd row
        if r["variant"] == "fd":
            rows.append({**r, "variant": "fd (default)"})
    write_json_atomic(path, {"rows": rows, "seeds": args.seeds, "rounds": args.rounds, "engine": args.engine})
    text = (f"# fd vs FedAvg under label skew\n\n10 clients, {args.rounds} rounds, seeds {args.seeds}, engine "
            f"{args.engine}; final-round student accuracy, mean ± sd over seeds. Upload: bytes per client per "
            f"round (fd: all secure-aggregation stages).\n\n"
            + (main_table(rows) if any(r["variant"] in dict(MAIN) for r in rows) else "")
            + ("\n## Ablation (one option changed from the default)\n\n" + ablation_table(rows)
               if any(r["variant"] in dict(ABLATION[1:]) for r in rows) else ""))  # none run: no empty table
    (out / (args.name + ".md")).write_text(text)
    plot(rows, out / (args.name + ".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
