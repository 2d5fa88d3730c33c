"""The command line of `fedkd deploy N` (and `python -m fedkd.deploy N`): arguments, console, exit codes.

Owns: the deploy options (`add_arguments`, shared with `fedkd.cli`'s subcommand), the console
(`--quiet` shows only this command's own `deploy |` lines), the one-line error and the exit code:
0 completed, 1 the deployment or its run failed, 2 bad usage, 130 interrupted (Ctrl-C or SIGTERM),
and the closing summary line. Must not touch: what a deployment does (`run.run_deployment`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from fedkd.deploy.procs import terminate_as_interrupt
from fedkd.deploy.run import Options, run_deployment
from fedkd.deploy.superlink import DeployError
from fedkd.errors import UsageError, report

PROG = "fedkd deploy"  # the name in every line this command prints about itself


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("num_nodes", metavar="N", type=int, help="number of SuperNodes (one client each), at least 3 with secure aggregation "
                             "(the default), 2 with --run-config 'aggregation=\"plain\"'")
    parser.add_argument("--secure", action="store_true",
                        help="TLS on every connection and SuperNode authentication (only enrolled keys join)")
    parser.add_argument("--certs-dir", type=Path, default=None,
                        help="with --secure: folder for the CA, the server certificate and node keys (reused if valid)")
    parser.add_argument("--run-config", default="", metavar="'K=V ...'",
                        help="run settings as for `flwr run --run-config`; num-clients is set to N")
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                        help="seconds for the whole deployment before it is stopped (default: 3600)")
    parser.add_argument("--app", default=None, metavar="DIR",
                        help="folder of the fedkd project to submit (default: the one this module comes from, "
                             "else the current folder)")
    parser.add_argument("--probe-unenrolled", action="store_true",
                        help="with --secure: also start a SuperNode with an unenrolled key and require its refusal")
    parser.add_argument("--quiet", action="store_true",
                        help="show only this command's own lines, not the processes' logs (those are in run.log)")
    parser.add_argument("--force", action="store_true",
                        help="replace the results of an earlier run in the run's out folder (otherwise refused)")
    parser.add_argument("--no-roster", dest="roster", action="store_false",
                        help="start the SuperNodes without a secure-aggregation roster: keys the server relays are then "
                             "taken on trust (by default each node gets an Ed25519 identity and every node's public "
                             "identity, and refuses keys not signed by their owner's identity)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fedkd.deploy",
                                     description="Run fedkd on a local Flower deployment: 1 SuperLink, N SuperNodes.")
    add_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    """Run `fedkd deploy` from parsed arguments: 0 completed, 1 the run failed, 2 bad usage, 130 interrupted."""
    opts = Options(num_nodes=args.num_nodes, secure=args.secure, certs_dir=args.certs_dir,
                   run_config=args.run_config, timeout=args.timeout, app=args.app,
                   probe_unenrolled=args.probe_unenrolled, quiet=args.quiet, force=args.force, roster=args.roster)
    previous = terminate_as_interrupt()
    try:
        results = run_deployment(opts, echo=_console(opts.quiet))
    except UsageError as exc:
        return report(exc, PROG)
    except DeployError as exc:
        print(f"{PROG}: run failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; every process was stopped", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, handler)
    print(_summary(results, opts.num_nodes), flush=True)
    return 0


def _console(quiet: bool):
    """The echo for the console: whole lines (the processes' reader threads share it); with `quiet`
    only this command's own `deploy |` lines."""
    lock = threading.Lock()

    def echo(line: str) -> None:
        if quiet and not line.startswith("deploy"):
            return
        with lock:
            print(line, flush=True)

    return echo


def _summary(results: dict, num_nodes: int) -> str:
    acc = results.get("final", {}).get("student_accuracy")
    rounds = len(results.get("rounds", []))
    return (f"{PROG}: completed {rounds} round{'s' if rounds != 1 else ''} on {num_nodes} SuperNodes in "
            f"{results['deploy_seconds']:.1f}s; student accuracy "
            f"{'n/a' if acc is None else f'{acc:.4f}'}; results in {results.get('config', {}).get('out')}")
