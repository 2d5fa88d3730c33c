"""The command line of `fedkd deploy N` (and `python -m fedkd.deploy N`): arguments, console, exit codes.

Owns: the deploy options (`add_arguments`, shared with `fedkd.cli`'s subcommand), the console
(`ConsoleView`: by default a progress view like `fedkd run`'s, this command's steps, the round
lines and warnings of the ServerApp and the summary table, every other line in run.log only;
`--quiet` only this command's steps; `--verbose` every process's lines), the one-line error and
the exit code: 0 completed, 1 the deployment or its run failed, 2 bad usage, 130 interrupted
(Ctrl-C or SIGTERM), and the closing summary line. Must not touch: what a deployment does
(`run.run_deployment`).
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedkd.cli import show
from fedkd.deploy.procs import terminate_as_interrupt
from fedkd.deploy.run import Options, run_deployment
from fedkd.deploy.superlink import SAID, STARTING, WAITING, DeployError
from fedkd.errors import UsageError, report
from fedkd.results import RUN_LOG, summary_table

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
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true",
                       help="show only this command's own steps, not the rounds nor the summary table "
                            "(run.log in the output folder has every line)")
    shown.add_argument("--verbose", action="store_true",
                       help="show every line of every process (the SuperLink's, each SuperNode's and the run's), "
                            "as run.log has them")
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
                   probe_unenrolled=args.probe_unenrolled, force=args.force, roster=args.roster)
    view = ConsoleView("quiet" if args.quiet else "verbose" if args.verbose else "progress")
    previous = terminate_as_interrupt()
    try:
        with view:
            results = run_deployment(opts, echo=view, on_start=view.start)
            view.summary(results)
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


# A line of the run's log stream (`flwr log`, named "run"): Flower's level, then the message.
_STREAM = re.compile(rf"^run\s*\| (?:(?P<level>[A-Z]+)\s*:\s+)?(?P<text>.*)$")
_OWN = re.compile(rf"^{SAID}\s*\| \[\s*[\d.]+s\] (?P<text>.*)$")  # a line of `Deployment.say`


class ConsoleView:
    """What the console shows of a deployment; it is the deployment's echo (every line of every
    process and of this command, from several reader threads), and run.log gets every line whatever
    it shows. Modes:

    - "progress" (default), like `fedkd run`: this command's steps, without each process's command
      line; the ServerApp's fedkd lines from the run's log stream: its round lines (`fedkd run`'s)
      and warnings printed, its phases ("round 2: secure sum, unmask") and the waits on the
      progress line (a terminal only: elsewhere it is drawn once, at the end); then the summary table.
      So the number of lines does not grow with time, nodes or Flower's own logging.
    - "quiet": this command's steps only.
    - "verbose": every line, as run.log has it.
    """

    def __init__(self, mode: str, console: Console | None = None):
        self.mode = mode
        self.console = console or Console(highlight=False)
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> "ConsoleView":
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None

    def start(self, out: Path, rounds: int) -> None:
        """The run's output folder and rounds are known: say where everything goes, start the progress line."""
        show(self.console, f"{PROG}: out: {out}; full log in {out / RUN_LOG}")
        if self.mode == "progress":
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=self.console, transient=False)
            self._task = self._progress.add_task("starting the deployment", total=rounds)
            self._progress.start()

    def __call__(self, line: str) -> None:
        with self._lock:
            if self.mode == "verbose":
                self._print(line)
                return
            own = _OWN.match(line)
            if own:
                text = own["text"]
                if text.startswith(WAITING) and self._progress is not None:
                    self._phase(text)
                elif not text.startswith(STARTING):
                    self._print(line)
                return
            stream = _STREAM.match(line)
            if self.mode == "progress" and stream:
                self._from_server_app(stream["level"], stream["text"])

    def _from_server_app(self, level: str | None, text: str) -> None:
        """The ServerApp's own lines (fedkd.apps.server_app): 'fedkd round N: ...', 'fedkd: <phase>',
        and its warnings; Flower's lines are left to run.log."""
        if text.startswith("fedkd round "):
            self._print(text.removeprefix("fedkd "))
            if self._progress is not None:
                self._progress.advance(self._task)
            self._phase("rounds")
        elif text.startswith("fedkd: ") and level == "WARNING":
            self._print(f"fedkd warning: {text.removeprefix('fedkd: ')}", style="yellow")
        elif text.startswith("fedkd: "):
            self._phase(text.removeprefix("fedkd: "))

    def summary(self, results: dict) -> None:
        """The run's summary table, as `fedkd run` ends (progress mode)."""
        with self._lock:
            if self.mode != "progress":
                return
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
            self.console.print(summary_table(results, results["final"]["seconds_total"], width=self.console.width))

    def _phase(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def _print(self, line: str, style: str | None = None) -> None:
        show(self.console, line, style)


def _summary(results: dict, num_nodes: int) -> str:
    acc = results.get("final", {}).get("student_accuracy")
    rounds = len(results.get("rounds", []))
    return (f"{PROG}: completed {rounds} round{'s' if rounds != 1 else ''} on {num_nodes} SuperNodes in "
            f"{results['deploy_seconds']:.1f}s; student accuracy "
            f"{'n/a' if acc is None else f'{acc:.4f}'}; results in {results.get('config', {}).get('out')}")
