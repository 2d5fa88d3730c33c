"""The `fedkd` command: `fedkd run ...` (a Flower simulation in this process), `fedkd deploy N`
(a multi-process local deployment), `fedkd audit` (attacks on what the server sees) and `fedkd bench ...`.

Owns: argument parsing (one option per config field, generated from `Config`), early validation
(config and data, before Ray starts), the live progress display and the final summary table.
Must not touch: training or protocol code; it only calls `fedkd.apps` and `fedkd.bench`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from fedkd.config import Config, ConfigError

# Short spellings for the options people type most; every config field also has its full name.
ALIASES = {"num_clients": ("--clients",), "dp_delta": ("--delta",), "dp_epsilon_budget": ("--epsilon-budget",),
           "dp_target_epsilon": ("--target-epsilon",), "public_sample": ("--queries-per-round",)}
HELP = {
    "method": "fd (federated distillation), fedavg, central (upper bound) or local (teachers alone)",
    "dataset": "digits (embedded), mnist, fashion-mnist, cifar10 (from --data-dir) or a path to a .npz",
    "alpha": "Dirichlet concentration for --partition dirichlet (smaller: more skewed)",
    "temperature": "softmax temperature T of the released predictions",
    "ensemble": "mean | geometric | logits | dsfl",
    "teacher_models": "comma list cycled over clients: auto, mlp, cnn, resnet8",
    "public_sample": "public examples released per round (0: all of them)",
    "digest_epochs": "FedMD/DS-FL digest epochs on last round's consensus (0: off)",
    "out": "output folder for config.json, results.json, curves.png",
    "dp_clip": "distributed DP: L2 bound of a client's centred soft labels per round (0: DP off)",
    "dp_noise_multiplier": "distributed DP: noise std in the sum / the rounded L2 sensitivity",
    "dp_epsilon_budget": "stop before a round could take epsilon past this (0: no budget)",
    "dp_mechanism": "ddg (distributed discrete Gaussian) or skellam",
    "dp_target_epsilon": "distributed DP: pick the noise multiplier so all rounds spend this epsilon",
    "teacher_dp_noise_multiplier": "DP-SGD teachers (Opacus): noise std / max-grad-norm (0: plain SGD)",
}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    defaults = Config()
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        names = [*ALIASES.get(f.name, ()), flag]
        default = getattr(defaults, f.name)
        parser.add_argument(
            *names, dest=f.name, default=None, metavar=type(default).__name__.upper(),
            help=f"{HELP.get(f.name, '')} (default: {default})".strip(),
        )


def config_from_args(args: argparse.Namespace) -> Config:
    given = {f.name.replace("_", "-"): getattr(args, f.name) for f in fields(Config) if getattr(args, f.name) is not None}
    return Config.from_run_config(given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedkd", description="Federated knowledge distillation with secure aggregation.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a Flower simulation in this process and save its results")
    _add_config_options(run)
    run.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")
    deploy = sub.add_parser("deploy", help="a SuperLink and N SuperNodes on loopback (no Ray), optionally with TLS and node auth")
    from fedkd import deploy as deploy_module

    deploy_module.add_arguments(deploy)
    deploy.set_defaults(deploy_main=deploy_module.main)
    audit = sub.add_parser("audit", help="attack what the server receives (plain, secagg, known others, DP) and "
                                         "compare with the privacy accountant")
    from fedkd.privacy import audit as audit_module

    audit_module.add_arguments(audit)
    audit.set_defaults(audit_main=audit_module.main)
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    secagg = bench_sub.add_parser("secagg", help="secure aggregation in memory: time, bytes, memory, exactness")
    try:
        from fedkd.bench import secagg as secagg_bench

        secagg_bench.add_arguments(secagg)
        secagg.set_defaults(bench_main=secagg_bench.main)
    except ImportError:  # the secure-aggregation library is optional at import time
        secagg.set_defaults(bench_main=None)
    from fedkd.bench import round as round_bench

    rnd = bench_sub.add_parser("round", help="time one full fd round by phase in a Flower simulation")
    round_bench.add_arguments(rnd)
    rnd.set_defaults(bench_main=round_bench.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "deploy":
        return int(args.deploy_main(args) or 0)
    if args.command == "audit":
        return int(args.audit_main(args) or 0)
    if args.command == "bench":
        if args.bench_main is None:
            parser.error(f"bench '{args.bench}' is not available in this installation")
        return int(args.bench_main(args) or 0)
    try:
        config = config_from_args(args)
        _check_data(config)
    except (ConfigError, ValueError) as exc:
        print(f"fedkd: error: {exc}", file=sys.stderr)
        return 2
    return run_command(config, verbose=args.verbose)


def _check_data(config: Config) -> None:
    """Load the splits once here so a data problem is one line, not a Ray traceback; also check
    that every teacher architecture fits the data (and DP-SGD), and that the DP sizes fit the ring."""
    from fedkd.models import build_model
    from fedkd.privacy.mechanism import PrivacyError
    from fedkd.task import dp_params, resolve_device, splits_for

    splits = splits_for(config)
    try:
        for name in set(config.teacher_model_list) | {config.student_model}:
            model = build_model(name, splits.input_shape, splits.num_classes)
            if config.teacher_dp_enabled and name in config.teacher_model_list:
                from fedkd.privacy import dpsgd

                dpsgd.check_model(model, name)
        if config.dp_enabled:  # bit width and noise-share size, which depend on the data's classes
            dp_params(config, splits.num_classes, 1)
        resolve_device(config.device)
    except (PrivacyError, RuntimeError) as exc:
        raise ValueError(str(exc)) from None


def run_command(config: Config, verbose: bool = False) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    task = progress.add_task(f"{config.method} rounds", total=config.rounds)

    def on_round(record: dict) -> None:
        progress.console.print(_round_line(record))
        progress.advance(task)

    started = time.perf_counter()
    with progress:
        try:
            results = simulate(config, on_round=on_round, verbose=verbose)
        except KeyboardInterrupt:
            progress.stop()
            from fedkd.results import halt_saving

            halt_saving()  # the ServerApp thread may still finish a round: it must not overwrite this
            _mark_interrupted(config.out)
            console.print(f"[yellow]fedkd: interrupted[/yellow]; rounds completed so far are in {config.out}/results.json")
            _exit_now(130)
        except Exception as exc:  # a run that stops: one line, files kept
            progress.stop()
            console.print(f"[red]fedkd: run failed:[/red] {_root_cause(exc)}")
            if os.path.exists(os.path.join(config.out, "results.json")):
                console.print(f"Rounds completed so far are saved in {config.out}/results.json")
            return 1
    console.print(summary_table(results, time.perf_counter() - started))
    if results.get("stopped"):
        label = "privacy budget reached" if results["status"] == "budget-exhausted" else "stopped for privacy"
        console.print(f"[yellow]fedkd: {label}:[/yellow] {results['stopped']}")
    if results.get("privacy"):
        p = results["privacy"]
        console.print(f"Privacy spent: epsilon {p['epsilon']:.3f} at delta {p['delta']:g} "
                      f"over {p['rounds_released']} released rounds")
    console.print(f"Saved {config.out}/config.json, results.json, curves.png")
    return 0


def _exit_now(code: int) -> None:
    """Leave at once: Flower's ServerApp thread would otherwise wait out its reply timeout for
    clients that Ray has already stopped. Ray is shut down first so no worker is left behind."""
    try:
        import ray

        ray.shutdown()
    except Exception:  # best effort: we are leaving anyway
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _mark_interrupted(out: str) -> None:
    """Record in results.json that the run was stopped by the user (its rounds stay as saved)."""
    import json

    from fedkd.results import write_json_atomic

    path = os.path.join(out, "results.json")
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return
    if saved.get("status") == "running":
        saved["status"] = "interrupted"
        write_json_atomic(Path(path), saved)


def simulate(config: Config, on_round=None, verbose: bool = False, observe_grid=None) -> dict:
    """Run `config` end to end (a Flower simulation unless method is central) and return results.json's dict."""
    from fedkd.apps.driver import run_federation
    from fedkd.results import RunRecorder

    if config.method == "central":  # the union of private data in one place: no clients to simulate
        return run_federation(None, config, RunRecorder(config, on_round=on_round))

    from flwr.simulation import run_simulation

    from fedkd.apps.client_app import app as client_app
    from fedkd.apps.server_app import make_server_app

    if not verbose:  # Flower's deprecation notice for run_simulation and per-round INFO lines
        logging.getLogger("flwr").setLevel(logging.ERROR)
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    holder: dict = {}
    backend = {
        "client_resources": {"num_cpus": config.client_cpus, "num_gpus": config.client_gpus},
        "init_args": {"logging_level": logging.ERROR if not verbose else logging.INFO, "log_to_driver": verbose},
    }
    server_app = make_server_app(config, on_round=on_round, results=holder, observe_grid=observe_grid)
    run_simulation(server_app, client_app,
                   num_supernodes=config.num_clients, backend_config=backend, verbose_logging=verbose)
    if "value" not in holder:
        raise RuntimeError("the simulation ended without results (see the log above)")
    return holder["value"]


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{exc}"


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _round_line(r: dict) -> str:
    line = (f"round {r['round']}: student {_fmt(r['student_accuracy'])}  ensemble {_fmt(r['ensemble_accuracy'])}  "
            f"teachers {_fmt(r['teacher_accuracy_mean'])}  ({_fmt(r['seconds'], 1)} s)")
    if r.get("privacy"):
        line += f"  epsilon {r['privacy']['epsilon']:.3f}"
    if r.get("teacher_epsilon"):
        line += f"  teacher epsilon <= {r['teacher_epsilon']['max']:.3f}"
    return line


def summary_table(results: dict, wall: float):
    from rich.table import Table

    cfg = results["config"]
    table = Table(title=f"fedkd {cfg['method']} on {cfg['dataset']}: {cfg['num-clients']} clients, "
                        f"{cfg['partition']} alpha={cfg['alpha']}, T={cfg['temperature']}")
    secure = any(r.get("secagg") for r in results["rounds"])
    columns = ["round", "student acc", "NLL", "ECE", "ensemble acc", "teacher acc (mean±sd)", "upload B/client", "s"]
    private = any(r.get("privacy") for r in results["rounds"])
    if secure:
        columns += ["secagg s", "survivors", "dropped (stage: ids)"]
    dpsgd = any(r.get("teacher_epsilon") for r in results["rounds"])
    if private:
        columns += ["epsilon"]
    if dpsgd:
        columns += ["teacher eps (max)"]
    for col in columns:
        table.add_column(col, justify="right")
    for r in results["rounds"]:
        teacher = "-" if r["teacher_accuracy_mean"] is None else f"{r['teacher_accuracy_mean']:.4f}±{r['teacher_accuracy_std']:.3f}"
        upload = "-" if r["upload_bytes_per_client"] is None else f"{r['upload_bytes_per_client']:,.0f}"
        row = [str(r["round"]), _fmt(r["student_accuracy"]), _fmt(r["student_nll"], 3), _fmt(r["student_ece"], 3),
               _fmt(r["ensemble_accuracy"]), teacher, upload, _fmt(r["seconds"], 1)]
        if secure:
            sa = r.get("secagg") or {}
            dropped = "; ".join(f"{stage}: {','.join(map(str, ids))}" for stage, ids in sa.get("dropped", {}).items())
            row += [_fmt(sa.get("seconds_total"), 2), str(len(sa.get("survivors", []))), dropped or "-"]
        if private:
            row += [_fmt((r.get("privacy") or {}).get("epsilon"), 3)]
        if dpsgd:
            row += [_fmt((r.get("teacher_epsilon") or {}).get("max"), 3)]
        table.add_row(*row)
    table.caption = f"total {wall:.1f} s"
    return table


if __name__ == "__main__":
    sys.exit(main())
