"""Student accuracy against epsilon under distributed DP, for several client counts, with the
non-private student as the ceiling; plus the `fedkd audit` table. Writes privacy_utility.md,
.json and .png into --out.

    python simulations/privacy_utility.py --out simulations/results
    python simulations/privacy_utility.py --clients 10 --epsilons 2 8 --queries 50 --seeds 0   # a quick look

What one point is. One fd round (client-level DP composes over rounds exactly as over coordinates
under RDP, so R rounds of m queries at z*sqrt(R) cost what one round of R*m queries at z costs):
every client trains its teacher as `fedkd.task.teacher_round` does and releases its softened
predictions on the round's m public queries, encoded by `fedkd.privacy.mechanism.encode` (clip,
scale, conditional rounding, its share of the discrete Gaussian noise); the server sums, decodes
and distils the student with `fedkd.server.DistillationServer.finish_round`. The noise multiplier
z is the smallest that keeps the round within epsilon at delta with all n clients honest
(`fedkd.privacy.accounting.calibrate`). The masked sum is replaced by its value: secure
aggregation returns it exactly (tests/test_privacy.py checks that through the real protocol), so
the masks change no number here. Teachers do not depend on epsilon (no digest step in one round),
so each seed trains them once and reuses their predictions across the grid; only the noise, the
query sample size and the student change. The noise generators are seeded here, for a
reproducible figure; `fedkd run` draws them from the OS.

The student gets as many SGD steps on m queries as on the whole public set (`distill_epochs`):
with the default 60 epochs, m=25 would be 60 single steps and an undertrained student.

Ceilings, without DP and with the same teachers: "plain, all queries" releases the whole public set
(what `fedkd run` does by default), "plain, m queries" the same m queries as the DP point, which
separates the cost of fewer queries from the cost of the noise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from fedkd.config import Config
from fedkd.privacy.accounting import Ledger, calibrate
from fedkd.privacy.mechanism import decode_sum, encode
from fedkd.results import write_json_atomic
from fedkd.server import ClientReply, DistillationServer
from fedkd.task import derive_seed, dp_params, public_sample, splits_for, teacher_round


def distill_epochs(queries: int) -> int:
    """Epochs that give the student on m queries as many SGD steps as the default 60 epochs give it
    on the whole public set (a step per batch: with m=25 one epoch is a single step)."""
    cfg = Config()
    m = queries or cfg.num_public
    steps = cfg.distill_epochs * math.ceil(cfg.num_public * (1 - cfg.val_fraction) / cfg.distill_batch_size)
    return max(cfg.distill_epochs, math.ceil(steps / math.ceil(m / cfg.distill_batch_size)))


def base_config(clients: int, seed: int, queries: int, clip: float, partition: str) -> Config:
    return Config(num_clients=clients, seed=seed, rounds=1, public_sample=queries, digest_epochs=0,
                  partition=partition, dp_clip=clip, dp_noise_multiplier=1.0, device="cpu",
                  distill_epochs=distill_epochs(queries)).validated()


def train_teachers(clients: int, seed: int, partition: str) -> tuple[list[np.ndarray], int]:
    """Each client's round-1 payload on the whole public set: n arrays (num_public, K)."""
    cfg = Config(num_clients=clients, seed=seed, rounds=1, digest_epochs=0, partition=partition,
                 device="cpu").validated()
    k = splits_for(cfg).num_classes
    # teacher_round's non-DP vector: (num_public * K) public payload, then the test-set payload
    payloads = [teacher_round(cfg, pid, 1, None).vector[: cfg.num_public * k] for pid in range(clients)]
    return [v.reshape(cfg.num_public, k) for v in payloads], k


def label_accuracy(total: np.ndarray, labels: np.ndarray) -> float:
    """How often the (decoded) ensemble's top class on the released queries is the true label: the
    quality of what the student learns from (an analysis figure; the server has no such labels)."""
    return float((total.reshape(len(labels), -1).argmax(axis=1) == labels).mean())


def student_accuracy(cfg: Config, vectors: list[np.ndarray]) -> float:
    """Distil a fresh student from the clients' (already encoded, if DP) vectors; its test accuracy."""
    server = DistillationServer(cfg)
    replies = [ClientReply(pid, v, {"train-seconds": 0.0}) for pid, v in enumerate(vectors)]
    return float(server.finish_round(1, replies, seconds_clients=0.0).student_accuracy)


def plain_point(clients: int, seed: int, queries: int, partition: str, payloads: list[np.ndarray],
                rule: tuple[str, float]) -> float:
    cfg = Config(num_clients=clients, seed=seed, rounds=1, public_sample=queries, digest_epochs=0,
                 partition=partition, device="cpu", distill_epochs=distill_epochs(queries),
                 ensemble=rule[0], era_temperature=rule[1]).validated()
    idx = public_sample(cfg, 1)
    n_test = len(splits_for(cfg).test_y)
    k = payloads[0].shape[1]
    # finish_round expects the non-DP layout: public rows then test rows (zeros here: the ensemble's
    # own test accuracy is not what this figure reports)
    return student_accuracy(cfg, [np.concatenate([p[idx].ravel(), np.zeros(n_test * k)]) for p in payloads])


def dp_point(clients: int, seed: int, queries: int, clip: float, partition: str, epsilon: float, delta: float,
             payloads: list[np.ndarray], rule: tuple[str, float]) -> dict:
    cfg0 = base_config(clients, seed, queries, clip, partition).replace(
        dp_delta=delta, ensemble=rule[0], era_temperature=rule[1])
    k = payloads[0].shape[1]
    z = calibrate(lambda z: dp_params(cfg0.replace(dp_noise_multiplier=z), k, 1), 1, clients, epsilon, delta)
    cfg = cfg0.replace(dp_noise_multiplier=z)
    params = dp_params(cfg, k, 1)
    idx = public_sample(cfg, 1)
    vectors, clipped, noise_s = [], 0, 0.0
    for pid, p in enumerate(payloads):
        rng = np.random.default_rng(derive_seed(seed, "privacy-utility", epsilon, queries, pid))
        enc = encode(p[idx], params, rng)
        vectors.append(enc.values)
        clipped += int(enc.clipped)
        noise_s += enc.noise_seconds
    spent = Ledger(delta).record(params, clients)
    decoded = decode_sum(np.sum(vectors, axis=0), clients, params)
    labels = splits_for(cfg).public_y[idx]
    return {"noise_multiplier": z, "epsilon_spent": spent, "clipped_clients": clipped,
            "noise_std_per_coordinate": params.honest_std(clients) * params.gamma,
            "noise_seconds_per_client": noise_s / clients, "label_accuracy": label_accuracy(decoded, labels),
            "student_accuracy": student_accuracy(cfg, vectors)}


def parse_rule(text: str) -> tuple[str, float]:
    """"mean" or "dsfl:T_era" (DS-FL's entropy reduction with that sharpening temperature)."""
    name, _, era = text.partition(":")
    if name == "mean" and not era:
        return "mean", 0.1
    if name == "dsfl":
        try:
            value = float(era or 0.1)
        except ValueError:
            value = -1.0
        if 0 < value < 1:
            return "dsfl", value
    raise argparse.ArgumentTypeError(f"rule '{text}': use mean or dsfl:T with 0 < T < 1")


def rule_name(rule: tuple[str, float]) -> str:
    return "mean" if rule[0] == "mean" else f"dsfl:{rule[1]:g}"


def run_grid(args: argparse.Namespace) -> dict:
    rows, ceilings = [], []
    total, done = len(args.clients) * len(args.seeds), 0
    for n in args.clients:
        for seed in args.seeds:
            t0 = time.perf_counter()
            payloads, _ = train_teachers(n, seed, args.partition)
            for rule in args.rules:
                for q in [0, *args.queries]:
                    acc = plain_point(n, seed, q, args.partition, payloads, rule)
                    ceilings.append({"clients": n, "seed": seed, "queries": q or "all", "rule": rule_name(rule),
                                     "student_accuracy": acc})
            full = max(c["student_accuracy"] for c in ceilings if (c["clients"], c["seed"], c["queries"]) == (n, seed, "all"))
            for q in args.queries:
                for rule in args.rules:
                    for eps in args.epsilons:
                        point = dp_point(n, seed, q, args.clip, args.partition, eps, args.delta, payloads, rule)
                        rows.append({"clients": n, "seed": seed, "queries": q, "rule": rule_name(rule),
                                     "epsilon": eps, **point})
            done += 1
            best = max((r for r in rows if r["clients"] == n and r["seed"] == seed), key=lambda r: r["student_accuracy"])
            print(f"[{done}/{total}] clients={n} seed={seed}: non-private {full:.3f}; best DP {best['student_accuracy']:.3f} "
                  f"(m={best['queries']}, {best['rule']}, epsilon {best['epsilon']:g})  ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    return {"rows": rows, "ceilings": ceilings}


def ceiling_lines(summary: list[dict], args: argparse.Namespace) -> list[str]:
    out = []
    for n in args.clients:
        s = next(s for s in summary if s["clients"] == n)
        out.append(f"- {n} clients: ceiling {s['ceiling']:.3f} ± {s['ceiling_sd']:.3f} (rule {s['ceiling_rule']})")
    return out


def _mean_sd(values) -> tuple[float, float]:
    a = np.array(list(values), dtype=float)
    return float(a.mean()), float(a.std())


def summarise(grid: dict, args: argparse.Namespace) -> list[dict]:
    """Mean and sd over seeds per (clients, queries, rule, epsilon), with the ceilings alongside."""
    out = []
    for n in args.clients:
        def plain(q, rule):
            return _mean_sd(c["student_accuracy"] for c in grid["ceilings"]
                            if (c["clients"], c["queries"], c["rule"]) == (n, q, rule))

        # the ceiling: the better rule without DP, on the whole public set (mean over seeds)
        ceil_rule = max(map(rule_name, args.rules), key=lambda rule: plain("all", rule)[0])
        ceil, ceil_sd = plain("all", ceil_rule)
        for q in args.queries:
            for rule in map(rule_name, args.rules):
                plain_q, _ = plain(q, rule)
                for eps in args.epsilons:
                    pts = [r for r in grid["rows"] if (r["clients"], r["queries"], r["rule"], r["epsilon"]) == (n, q, rule, eps)]
                    acc, sd = _mean_sd(r["student_accuracy"] for r in pts)
                    labels, _ = _mean_sd(r["label_accuracy"] for r in pts)
                    out.append({"clients": n, "queries": q, "rule": rule, "epsilon": eps, "student_accuracy": acc,
                                "sd": sd, "label_accuracy": labels, "noise_multiplier": pts[0]["noise_multiplier"],
                                "plain_same_queries": plain_q, "ceiling": ceil, "ceiling_sd": ceil_sd,
                                "ceiling_rule": ceil_rule,
                                "within_5_points": acc >= ceil - 0.05})
    return out


def within_statement(summary: list[dict], args: argparse.Namespace) -> list[str]:
    lines = []
    for n in args.clients:
        mine = [s for s in summary if s["clients"] == n]
        ceiling = mine[0]["ceiling"]
        hits = sorted({(s["epsilon"], s["queries"], s["rule"]) for s in mine if s["within_5_points"]})
        if hits:
            eps, q, rule = hits[0]
            lines.append(f"- {n} clients (ceiling {ceiling:.3f}): within 5 points from epsilon {eps:g} "
                         f"(m={q}, {rule}; grid points only).")
        else:
            top = max(mine, key=lambda s: s["student_accuracy"])
            lines.append(f"- {n} clients (ceiling {ceiling:.3f}): nowhere on the grid; the best DP student is "
                         f"{top['student_accuracy']:.3f} (m={top['queries']}, {top['rule']}, epsilon {top['epsilon']:g}), "
                         f"{100 * (ceiling - top['student_accuracy']):.1f} points below.")
    return lines


def markdown(summary: list[dict], audit: dict | None, args: argparse.Namespace, seconds: float) -> str:
    lines = [
        "# Privacy-utility: distributed DP on the released soft labels (digits)",
        "",
        f"Command: `python simulations/privacy_utility.py {' '.join(sys.argv[1:])}`  ({seconds:.0f} s)",
        "",
        f"One fd round, partition {args.partition}, delta {args.delta:g}, clip {args.clip:g} (L2 norm of a client's "
        "centred soft labels), distributed discrete Gaussian sized for all n clients honest: client-level DP. "
        f"Mean ± sd over seeds {', '.join(map(str, args.seeds))}. m: public queries released; rule: how the server "
        "turns the decoded mean into targets (mean: as is; dsfl:T: DS-FL entropy reduction at T); label acc: how "
        "often the noisy ensemble's top class is right on the m queries (what the student learns from). "
        "Ceiling: the non-private student distilled from all 500 queries by the same teachers, with the better of "
        "the rules; plain, same m: non-private with the same m queries and rule.",
        "",
        "| clients | m | rule | epsilon | z | student acc | label acc | plain, same m | ceiling | within 5 |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for s in summary:
        lines.append(f"| {s['clients']} | {s['queries']} | {s['rule']} | {s['epsilon']:g} | {s['noise_multiplier']:.2f} | "
                     f"{s['student_accuracy']:.3f} ± {s['sd']:.3f} | {s['label_accuracy']:.3f} | "
                     f"{s['plain_same_queries']:.3f} | {s['ceiling']:.3f} | {'yes' if s['within_5_points'] else 'no'} |")
    lines += ["", "Ceilings:", "", *ceiling_lines(summary, args)]
    lines += ["", "Where the DP student stays within 5 points of the ceiling:", "", *within_statement(summary, args)]
    if audit is not None:
        st = audit["setting"]
        lines += ["", "## Audit (`fedkd audit`)", "",
                  f"Target client {st['target']} ({st['target_examples']} examples) of {st['clients']}, "
                  f"{st['queries']} queries, T={st['temperature']}, local epochs {st['local_epochs']}, "
                  f"{st['trials']} canary trials, seed {st['seed']}; DP view: z={audit['dp']['noise_multiplier']}, "
                  f"clip {audit['dp']['clip']}.", "",
                  "| view | label KL (prior KL) | AUC | TPR @ 1% FPR | TPR @ 0.1% FPR | empirical eps >= | accountant eps |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for view, e in audit["views"].items():
            m, lab = e["membership"], e["label_inference"]
            acct = "inf" if e["accountant_epsilon"] is None else f"{e['accountant_epsilon']:.2f}"
            lines.append(f"| {view} | {lab['kl']:.3f} ({lab['baseline_kl']:.3f}) | {m['auc']:.3f} | "
                         f"{m['tpr_at_fpr']['0.01']:.3f} | {m['tpr_at_fpr']['0.001']:.3f} | {m['eps_lb']:.2f} | {acct} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], args: argparse.Namespace, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(args.clients), 4.0))
    FigureCanvasAgg(fig)
    for i, n in enumerate(args.clients):
        ax = fig.add_subplot(1, len(args.clients), i + 1)
        ceiling = next(s["ceiling"] for s in summary if s["clients"] == n)
        for j, q in enumerate(args.queries):
            for rule in map(rule_name, args.rules):
                pts = [s for s in summary if s["clients"] == n and s["queries"] == q and s["rule"] == rule]
                ax.errorbar([s["epsilon"] for s in pts], [s["student_accuracy"] for s in pts],
                            yerr=[s["sd"] for s in pts], marker="os^"[j % 3], capsize=3,
                            linestyle="-" if rule == "mean" else "--", color=f"C{j}", label=f"m={q}, {rule}")
        ax.axhline(ceiling, color="black", linestyle="--", label="non-private ceiling")
        ax.axhline(ceiling - 0.05, color="grey", linestyle=":", label="ceiling - 5 points")
        ax.set(xlabel=f"epsilon (delta={args.delta:g})", ylabel="student test accuracy", ylim=(0, 1),
               title=f"{n} clients")
        if i == 0:
            ax.legend(fontsize="x-small", loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="simulations/results")
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1, 2, 4, 6, 8, 10])
    parser.add_argument("--queries", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--rules", type=parse_rule, nargs="+", default=[("mean", 0.1), ("dsfl", 0.01)],
                        help="mean and/or dsfl:T_era (default: mean dsfl:0.01)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--partition", default="dirichlet", choices=["iid", "dirichlet", "pathological"])
    parser.add_argument("--no-audit", action="store_true", help="skip the audit table")
    parser.add_argument("--audit-seed", type=int, default=0)
    parser.add_argument("--audit-json", type=Path, help="use this saved `fedkd audit` result instead of running one")
    args = parser.parse_args(argv)
    bad = [e for e in args.epsilons if not e > 0] + [q for q in args.queries if not 1 <= q <= 500]
    if bad or not 0 < args.delta < 1 or args.clip <= 0 or min(args.clients) < 2:
        parser.error("epsilons must be > 0, queries in 1..500, delta in (0, 1), clip > 0, clients >= 2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    grid = run_grid(args)
    summary = summarise(grid, args)
    audit = None
    if args.audit_json:
        audit = json.loads(args.audit_json.read_text())
    elif not args.no_audit:
        from fedkd.privacy.audit import run_audit

        print("audit ...", file=sys.stderr, flush=True)
        audit = run_audit(seed=args.audit_seed)  # `fedkd audit`'s defaults
    seconds = time.perf_counter() - started
    saved_args = {**vars(args), "rules": [rule_name(r) for r in args.rules],
                  "audit_json": str(args.audit_json) if args.audit_json else None}
    write_json_atomic(out / "privacy_utility.json", {"args": saved_args, "summary": summary, **grid, "audit": audit,
                                                     "seconds": seconds})
    (out / "privacy_utility.md").write_text(markdown(summary, audit, args, seconds))
    plot(summary, args, out / "privacy_utility.png")
    print("\n".join(within_statement(summary, args)))
    print(f"Saved {out}/privacy_utility.md, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
