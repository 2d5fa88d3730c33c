"""The `fedkd` command: `fedkd run ...` (a Flower simulation in this process), `fedkd deploy N`
(a multi-process local deployment), `fedkd audit` (attacks on what the server sees) and `fedkd bench ...`.

Owns: argument parsing (one option per config field, generated from `Config`; booleans are bare
flags with a `--no-` twin; `--config FILE` reads settings from TOML), early validation (config, data and the output folder, before Ray
starts), what the console shows during a run (what the run resolved, wrapped at word boundaries
in a terminal; one line per round and per Flower warning or error; the phase of the round on the
progress bar) and what of it goes to `run.log` (every line of fedkd's and the phases, beside
Flower's and Ray's full logs). The round line and the summary tables are `fedkd.results`' (which
also writes summary.txt); they read results.json's rows, so a saved file renders as the live run did.
Must not touch: training or protocol code; it only calls `fedkd.simulation` (which runs a run),
`fedkd.deploy`, `fedkd.privacy.audit` and `fedkd.bench`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import sys
import textwrap
import time
import tomllib
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedkd.bench import round as round_bench
from fedkd.cliparser import Parser
from fedkd.config import Config
from fedkd.confighelp import HELP
from fedkd.errors import UsageError, report
from fedkd.privacy.mechanism import PrivacyError
from fedkd.results import (ANSI, RUN_FILES, RUN_LOG, Checkpoint, dropped_text, halt_saving, log_to_file,
                           prepare_out, read_checkpoint, resolved_settings, round_line, stalled_text, summary_table,
                           write_json_atomic, write_summary, write_tables)
from fedkd.rounds import RoundRecord
from fedkd.simulation import simulate

# Imports left inside functions, each for a reason: torch (`fedkd.models`, `fedkd.task`, about
# 1 s), Opacus (`fedkd.privacy.dpsgd`), Flower and Ray load only when a run needs them, so that
# `fedkd --help` stays fast; the secure-aggregation benchmark's library is optional.

# Short spellings for the options people type most; every config field also has its full name.
ALIASES = {"num_clients": ("--clients",), "dp_delta": ("--delta",), "dp_epsilon_budget": ("--epsilon-budget",),
           "dp_target_epsilon": ("--target-epsilon",), "public_sample": ("--queries-per-round",)}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    defaults = Config()
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        names = [*ALIASES.get(f.name, ()), flag]
        default = getattr(defaults, f.name)
        help_text = f"{HELP.get(f.name, '')} (default: {default})".strip()
        if isinstance(default, bool):  # `--download`, `--download true|false` and `--no-download`
            parser.add_argument(*names, dest=f.name, default=None, nargs="?", const="true", metavar="BOOL",
                                help=f"{help_text}; bare {flag} turns it on, --no-{flag[2:]} off".lstrip())
            parser.add_argument("--no-" + flag[2:], dest=f.name, action="store_const", const="false",
                                help=argparse.SUPPRESS)
            continue
        parser.add_argument(*names, dest=f.name, default=None, metavar=type(default).__name__.upper(),
                            help=help_text)


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's settings: those in the --config file, then the options given, which win over it."""
    given = {f.name.replace("_", "-"): getattr(args, f.name) for f in fields(Config) if getattr(args, f.name) is not None}
    from_file = read_config_file(args.config_file) if args.config_file else {}
    return Config.from_run_config({**from_file, **given})


def read_config_file(path: str) -> dict:
    """A TOML file's run settings, under the run config's hyphenated keys (`rounds = 10`,
    `dataset = "digits"`). Unknown keys, and tables or arrays where a setting takes one value, are
    refused here, naming the file; a bad value is refused by `Config`, naming the key and value."""
    try:
        with open(os.path.expanduser(path), "rb") as f:
            settings = tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"--config {path} cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path} is not valid TOML: {exc}") from None
    keys = [f.name.replace("_", "-") for f in fields(Config)]
    for key, value in settings.items():
        if key not in keys:
            close = difflib.get_close_matches(key.replace("_", "-"), keys, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "docs/configuration.md lists the settings"
            raise UsageError(f"--config {path}: unknown setting '{key}'; {hint}")
        if isinstance(value, (dict, list)):
            raise UsageError(f"--config {path}: setting '{key}' takes one value, not a TOML "
                             f"{'table' if isinstance(value, dict) else 'array'} ({key} = {value!r})")
    return settings


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fedkd", description="Federated knowledge distillation with secure aggregation.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a Flower simulation in this process and save its results")
    _add_config_options(run)
    run.add_argument("--config", dest="config_file", metavar="FILE",
                     help="a TOML file of settings with the run config's hyphenated keys, as in pyproject's "
                          "[tool.flwr.app.config] (rounds = 10, num-clients = 20); options given here win over it")
    run.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs on the console too")
    run.add_argument("--force", action="store_true",
                     help="replace the results of an earlier run in --out (otherwise such a folder is refused)")
    run.add_argument("--resume", metavar="DIR",
                     help="continue the stopped run in DIR after its last finished round, with its own settings "
                          "(its config.json); an option that differs from them is refused")
    deploy = sub.add_parser("deploy", help="a SuperLink and N SuperNodes on loopback (no Ray), optionally with TLS and node auth")
    from fedkd import deploy as deploy_module

    deploy_module.add_arguments(deploy)
    deploy.set_defaults(deploy_main=deploy_module.main)
    compare = sub.add_parser("compare", help="methods (and one setting's values) over seeds on the same partitions: "
                                             "a table, a plot and JSON; a stopped comparison resumes")
    from fedkd import compare as compare_module

    compare_module.add_arguments(compare)
    compare.set_defaults(compare_main=compare_module.main)
    audit = sub.add_parser("audit", help="attack what the server receives (plain, secagg, known others, DP) and "
                                         "compare with the privacy accountant")
    from fedkd.privacy import audit_cli as audit_module

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
    rnd = bench_sub.add_parser("round", help="time one full fd round by phase (either engine)")
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
    if args.command == "compare":
        return int(args.compare_main(args) or 0)
    if args.command == "bench":
        if args.bench_main is None:
            parser.error(f"bench '{args.bench}' is not available in this installation")
        return int(args.bench_main(args) or 0)
    checkpoint = None
    try:
        if args.resume is not None:
            config, checkpoint = resume_config(args)
            resolved = _check_data(config)
            _check_resumable(config, checkpoint, resolved)
        else:
            config = config_from_args(args)
            resolved = _check_data(config)
            config = config.replace(out=str(prepare_out(config.out, force=args.force)))
    except ValueError as exc:  # a UserError, or a check of the data or models that failed
        return report(exc)
    return run_command(config, verbose=args.verbose, resolved=resolved, resume=checkpoint)


def resume_config(args: argparse.Namespace) -> tuple[Config, Checkpoint]:
    """`--resume DIR`: the stopped run's settings (out: DIR) and its checkpoint. Settings given as
    well (options, --config) must equal the run's: the resumed rounds are those of the same run."""
    where = f"--resume {args.resume}"
    if args.force:
        raise UsageError(f"{where} continues the run there; --force (which replaces a run) does not go with it")
    checkpoint = read_checkpoint(args.resume)
    given = {f.name.replace("_", "-"): getattr(args, f.name) for f in fields(Config) if getattr(args, f.name) is not None}
    given = {**(read_config_file(args.config_file) if args.config_file else {}), **given}
    if "out" in given:
        raise UsageError(f"{where} writes into {args.resume}; leave out --out")
    folder, out = Path(args.resume).expanduser(), checkpoint.settings["out"]
    if Path(out).resolve() != folder.resolve():  # moved, or named from elsewhere: the folder as given
        out = str(folder)
    saved = {**checkpoint.settings, "out": out}
    asked = Config.from_run_config({**saved, **given}).to_run_config()  # the given values, typed and checked
    for key in given:
        if asked[key] != saved[key]:
            raise UsageError(f"{where} continues that run with its own settings: {key} {given[key]} differs from "
                             f"its {key} {saved[key]}; leave the option out")
    return Config.from_run_config(saved), checkpoint


def _check_resumable(config: Config, checkpoint: Checkpoint, resolved: dict) -> None:
    """Refuse, in one line, a resume that would not continue the same run: its nodes keep state
    that is not saved, or the data or fedkd resolve its settings differently now."""
    from fedkd.apps.driver import node_state_reason
    from fedkd.task import splits_for

    where = f"--resume {config.out}"
    reason = node_state_reason(config, splits_for(config))
    if reason:
        raise UsageError(f"{where}: that run cannot be resumed: {reason}")
    before = checkpoint.described.get("resolved")
    now = json.loads(json.dumps(resolved))  # as config.json holds it: lists, not tuples
    if before != now:
        changed = [k for k in now if now.get(k) != (before or {}).get(k)] or ["resolved"]
        raise UsageError(f"{where}: the data or fedkd changed since that run started (its {changed[0]} differs); "
                         "resume it with the data and fedkd it ran with")


def _check_data(config: Config) -> dict:
    """Load the splits once here so a data problem is one line, not a Ray traceback; also check
    that every teacher architecture fits the data (and DP-SGD), and that the DP sizes fit the ring.
    Returns what the run resolved (`fedkd.results.resolved_settings`)."""
    from fedkd.models import build_model  # torch
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
        config.views_for(splits.input_shape)  # explicit public-views need images
        resolve_device(config.device)
        return resolved_settings(config, splits)  # also checks the secure-aggregation parameters
    except (PrivacyError, RuntimeError) as exc:
        raise ValueError(str(exc)) from None


def describe(config: Config, resolved: dict) -> list[str]:
    """What the run resolved, in a few console lines (config.json has it all)."""
    sizes = resolved["partition_sizes"]
    teachers = resolved["teacher_models"]
    kinds = sorted(set(teachers), key=teachers.index)
    teacher_text = teachers[0] if len(kinds) == 1 else ", ".join(f"{m} x{teachers.count(m)}" for m in kinds)
    lines = [
        f"data: {config.dataset}, input {tuple(resolved['input_shape'])}, {resolved['num_classes']} classes; "
        f"scaling: {resolved['scaling']}",
        f"partitions: {len(sizes)} clients with {min(sizes)}..{max(sizes)} examples ({sum(sizes)} in all); "
        f"public {resolved['num_public']}, test {resolved['num_test']}",
        f"models: teachers {teacher_text}, student {resolved['student_model']}",
    ]
    if config.method == "fd" and "transfer" in resolved:
        tr = resolved["transfer"]
        weighting = (f"votes weighted per class ({tr['vote_weighting']})" if tr["vote_weighting"] != "none" else
                     f"votes weighted per example ({tr['confidence_weighting']})"
                     if tr["confidence_weighting"] != "none" else "votes unweighted")
        own = tr.get("architecture_students") or []  # teacher architectures with a global student of their own
        start = "the global student"
        if tr["teacher_init"] != "student":
            start = "their own weights"
        elif own and set(teachers) <= set(own):
            start = "their architecture's own global student"
        elif own:
            start += f" ({', '.join(own)} teachers: their architecture's own global student)"
        lines.append(f"transfer: teachers start from {start}, "
                     f"consensus weight {tr['consensus_weight']:g} in local training; {tr['ensemble']} ensemble at "
                     f"T={tr['temperature']:g}, {weighting}, server step {tr['server_step']:g}")
    if config.clients_per_round:
        lines.append(f"cohort: {config.clients_per_round} of {config.num_clients} clients per round, drawn from "
                     f"the seed (results.json records each round's)")
    if "secagg" in resolved:
        sa = resolved["secagg"]
        scale = sa["scale"]
        scale_text = f"2^{int(scale).bit_length() - 1}" if scale >= 1 and float(scale).is_integer() \
            and int(scale) & (int(scale) - 1) == 0 else f"{scale:g}"
        check = "consistency check on" if sa["consistency_check"] else "consistency check OFF"
        per_round = f" (sessions of the {config.cohort_size} cohort clients)" if config.clients_per_round else ""
        lines.append(f"secure aggregation{per_round}: {sa['neighbors']} neighbours, threshold {sa['threshold']}, "
                     f"sized for {sa['max_colluders']} colluding clients ({check}; docs/secagg.md says "
                     f"against whom); clip {sa['clip']:g}, scale {scale_text}, {sa['bit_width']} bits")
    if "dp_noise_multiplier" in resolved:
        lines.append(f"distributed DP: noise multiplier {resolved['dp_noise_multiplier']:.4g}")
    return lines


def run_command(config: Config, verbose: bool = False, resolved: dict | None = None,
                resume: Checkpoint | None = None) -> int:
    console = Console(stderr=True)
    out = Path(config.out)
    header = describe(config, resolved) if resolved else []
    if resume is not None:
        todo = f"rounds {resume.round + 1}..{config.rounds}" if resume.round < config.rounds else "no round left"
        header.append(f"resuming: {todo}, after round {resume.round} of the stopped run in {out} (its settings, "
                      f"checkpoint.pt)")
    latest = out.parent / "latest"
    linked = f" ({latest} links to it)" if latest.is_symlink() and latest.resolve() == out.resolve() else ""
    header.append(f"out: {out}{linked}; full log in {out / LOG_FILE}")
    for line in header:
        show(console, line)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    task = progress.add_task(f"{config.method} rounds", total=config.rounds, completed=resume.round if resume else 0)

    def say(line: str) -> None:
        show(progress.console, line, style="yellow")

    def on_round(record: RoundRecord) -> None:  # the console and run.log get the same lines
        line = round_line(record, config.num_clients)
        show(progress.console, line)
        log.info(line)
        for warning in (dropped_text(record), stalled_text(record)):
            if warning:
                say(f"fedkd warning: {warning}")
                log.warning(warning)
        progress.update(task, description=f"{config.method} rounds")
        progress.advance(task)

    def on_phase(text: str) -> None:
        progress.update(task, description=text)
        log.info(text)

    started = time.perf_counter()
    with run_logging(out / LOG_FILE, say=None if verbose else say), progress, _term_as_interrupt():
        for line in header:  # run.log opens with what the console opened with
            log.info(line)
        try:
            results = simulate(config, on_round=on_round, verbose=verbose, on_phase=on_phase, resume=resume)
        except KeyboardInterrupt as stop:
            progress.stop()
            halt_saving()  # the ServerApp thread may still finish a round: it must not overwrite this
            saved = _mark_interrupted(config.out)
            if saved is not None:  # summary.txt for the rounds that finished
                write_summary(saved, time.perf_counter() - started, out / "summary.txt")
            console.print(f"[yellow]fedkd: {stop.args[0] if stop.args else 'interrupted'}[/yellow]; rounds completed "
                          f"so far are in {config.out}/results.json, summary.txt beside it")
            _exit_now(143 if stop.args else 130)
        except Exception as exc:  # a run that stops: one line, files kept
            progress.stop()
            log.error("run failed", exc_info=exc)
            console.print(f"[red]fedkd: run failed:[/red] {_root_cause(exc)}", highlight=False, soft_wrap=True)
            if os.path.exists(os.path.join(config.out, "results.json")):
                console.print(f"Rounds completed so far are saved in {config.out}/results.json")
            console.print(f"Full log: {out / LOG_FILE}", highlight=False)
            return 1
    wall = time.perf_counter() - started
    console.print(summary_table(results, wall, width=console.width))  # summary.txt: written as the run finished
    if results.get("stopped"):
        label = "privacy budget reached" if results["status"] == "budget-exhausted" else "stopped for privacy"
        console.print(f"[yellow]fedkd: {label}:[/yellow] {results['stopped']}")
    if results.get("privacy"):
        p = results["privacy"]
        console.print(f"Privacy spent: epsilon {p['epsilon']:.3f} at delta {p['delta']:g} "
                      f"over {p['rounds_released']} released rounds")
    console.print(f"Saved {config.out}/: {', '.join(saved_files(out))}", highlight=False, soft_wrap=True)
    return 0


def saved_files(out: Path) -> list[str]:
    """The run files in `out`, in RUN_FILES' order: those this run wrote (`local`, or a run stopped
    by its privacy budget before its first round, has no student.pt)."""
    return [name for name in RUN_FILES if (out / name).exists()]


# ---- logs: one line per event on the console, everything in run.log ----------------------------

LOG_FILE = RUN_LOG
# Flower's ERROR line that only announces the traceback logged next; that one carries the reason.
PREAMBLES = ("An exception was raised when processing a message by",)
_WRAPPED = re.compile(r"^Exception \w+ occurred\. Message: ")  # how Flower rewraps a ClientApp's error
log = logging.getLogger("fedkd")  # fedkd's own lines in run.log: the header, phases, rounds, warnings


def show(console: Console, text: str, style: str | None = None) -> None:
    """One line of fedkd's on the console. In a terminal a line longer than its width is wrapped
    at word boundaries, continuation lines indented (the terminal itself would cut words); in a
    file or pipe it stays whole."""
    lines = [text]
    if console.is_terminal and len(text) > console.width:
        lines = textwrap.wrap(text, console.width, subsequent_indent="  ", break_long_words=False,
                              break_on_hyphens=False)
    for line in lines:
        console.print(line, style=style, highlight=False, markup=False, soft_wrap=True)


class ConsoleDigest(logging.Handler):
    """One console line per distinct error: the informative last line of a record
    (a traceback ends with the reason), each said once per run."""

    def __init__(self, say: Callable[[str], None]):
        super().__init__(level=logging.ERROR)  # Flower's warnings (deprecations) stay in run.log
        self.say = say
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = digest(record.getMessage())
        except Exception:  # a record that cannot be formatted: it is in run.log as it is
            return
        if not line or line in self.seen or line.startswith(PREAMBLES):
            return
        self.seen.add(line)
        self.say(f"{record.name.split('.')[0]} {record.levelname.lower()}: {line}")


def digest(message: str) -> str:
    """The last non-empty line of a log message, without colour codes or Flower's rewrapping."""
    lines = [ANSI.sub("", ln).strip() for ln in str(message).splitlines()]
    lines = [ln for ln in lines if ln]
    return _WRAPPED.sub("", lines[-1]) if lines else ""


@contextmanager
def run_logging(path: Path, say: Callable[[str], None] | None) -> Iterator[None]:
    """Send Flower's, Ray's and fedkd's log records and Python warnings to `path` in full
    (`fedkd.results.log_to_file`). With `say`, Flower's own console handler is taken off for the
    run and each error reaches the console as one line through `say`; without it (--verbose)
    Flower keeps its console handler, coloured only on a terminal. Everything is put back on exit."""
    from flwr.common.logger import ConsoleHandler

    flwr_logger = logging.getLogger("flwr")
    consoles = [h for h in flwr_logger.handlers if isinstance(h, ConsoleHandler)]
    saved_colour = [(h, h.colored) for h in consoles]
    digest_handler = ConsoleDigest(say) if say is not None else None
    with log_to_file(path):
        if digest_handler is not None:
            for h in consoles:
                flwr_logger.removeHandler(h)
            flwr_logger.addHandler(digest_handler)
        else:
            for h in consoles:
                h.colored = bool(getattr(h.stream, "isatty", lambda: False)())
        try:
            yield
        finally:
            if digest_handler is not None:
                flwr_logger.removeHandler(digest_handler)
                for h in consoles:
                    flwr_logger.addHandler(h)
            for h, colored in saved_colour:
                h.colored = colored


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


def _mark_interrupted(out: str) -> dict | None:
    """Record in results.json that the run was stopped by the user (its rounds stay as saved);
    returns what it holds (None when there is no readable results.json)."""
    path = os.path.join(out, "results.json")
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if saved.get("status") == "running":
        saved["status"] = "interrupted"
        write_json_atomic(Path(path), saved)
        write_tables(saved, Path(out))  # summary.csv's status too
    return saved


@contextmanager
def _term_as_interrupt() -> Iterator[None]:
    """SIGTERM (how `timeout`, `kill` and batch schedulers stop a job) ends a run as Ctrl-C does:
    the finished rounds stay, the files are closed, one line is printed, exit status 143."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt("terminated (SIGTERM)")

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{exc}"


if __name__ == "__main__":
    sys.exit(main())
