"""Run outputs: `config.json`, `results.json` (rewritten atomically after every round, so a crash
leaves the last good state) with `rounds.csv` and `summary.csv` beside it, `student.pt` (the
student after the last finished round), `summary.txt`, `curves.png` and `curves.pdf` (every front
end's finished run: `write_finished`), `run.log` (`log_to_file`), the round line and summary tables
that the console and run.log show, and the output folder itself.

Owns: results.json's layout (status, config, rounds, final and how the run ended; a round's
row is `fedkd.rounds.RoundRecord.to_json()` plus "student_to_ensemble"), the files in the output folder, choosing that folder (`prepare_out`:
a `.../latest` out gets a fresh timestamped sibling, an earlier run is never overwritten without
`force`), what a run resolved from its `auto` settings (`resolved_settings`) and the software
versions it ran with (`environment`), and `checkpoint.pt`: the server's state after the last
finished round, which `fedkd run --resume DIR` continues from (`read_checkpoint`; removed once the
run is finished). Must not touch: training or Flower messaging.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import math
import os
import platform
import re
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Mapping

from rich.console import Console
from rich.table import Table

from fedkd import __version__
from fedkd.config import Config
from fedkd.data import Splits, describe_splits
from fedkd.errors import OutputError
from fedkd.rounds import ROUND_BLOCKS, PrivacySpent, RoundRecord

# torch (`fedkd.models`, `fedkd.task`), Flower (`fedkd.apps.secure`) and matplotlib are imported
# in the functions that need them: the CLI imports this module, and `fedkd --help` stays fast.

# Set when the user interrupts a run: from then on no recorder in this process rewrites its files,
# so the interrupted state written by the CLI is the last word (the ServerApp thread may still be
# finishing a round in the background).
_HALTED = threading.Event()


def halt_saving() -> None:
    _HALTED.set()


FINAL_KEYS = ("student_accuracy", "ensemble_accuracy", "teacher_accuracy_mean", "seconds_total")
CHECKPOINT = "checkpoint.pt"
# What a run writes into its folder: with `force`, an earlier run's copies are removed first.
RUN_FILES = ("config.json", "results.json", "rounds.csv", "summary.csv", "student.pt", "curves.png", "curves.pdf",
             "summary.txt", "run.log", CHECKPOINT)
# checkpoint.pt's layout; a fedkd that writes another refuses to resume from this one (and back)
CHECKPOINT_FORMAT = 1
# results.json statuses of a run that ended by itself: there is nothing to resume
FINISHED = ("completed", "budget-exhausted", "too-few-survivors")




# ---- the output folder -------------------------------------------------------------------------

def prepare_out(out: str | os.PathLike, force: bool = False, now: datetime.datetime | None = None) -> Path:
    """The folder this run writes into, created and checked writable before anything starts.

    `DIR/latest` (the default `runs/latest`) keeps every run: the run goes to a fresh sibling
    `DIR/<YYYYmmdd-HHMMSS>` and `DIR/latest` becomes a symlink to it (an old real `latest` folder
    is renamed to its own timestamp). Any other folder is used as given, but one that already
    holds a run's results.json is refused unless `force`, which removes that run's files first.
    """
    path = Path(out).expanduser()
    try:
        if path.name == "latest":
            return _fresh_run_folder(path, now or datetime.datetime.now())
        if (path / "results.json").exists():
            if not force:
                raise OutputError(f"out '{path}' already holds the results of an earlier run; choose another "
                                  "out, delete it, or pass --force to replace them")
            for name in RUN_FILES:
                (path / name).unlink(missing_ok=True)
        path.mkdir(parents=True, exist_ok=True)
        _check_writable(path)
    except OSError as exc:
        raise OutputError(f"out '{path}' cannot be created or written: {exc.strerror or exc}") from None
    return path


def _fresh_run_folder(latest: Path, now: datetime.datetime) -> Path:
    parent = latest.parent
    parent.mkdir(parents=True, exist_ok=True)
    if latest.is_dir() and not latest.is_symlink():  # an older fedkd wrote into latest itself: keep it
        if any(latest.iterdir()):
            stamp = datetime.datetime.fromtimestamp(latest.stat().st_mtime)
            latest.rename(_unique_folder(parent, stamp, create=False))
        else:
            latest.rmdir()
    folder = _unique_folder(parent, now, create=True)
    _check_writable(folder)
    tmp = parent / f".latest-{os.getpid()}-{threading.get_ident()}"
    tmp.unlink(missing_ok=True)
    os.symlink(folder.name, tmp)  # relative: the runs folder can be moved as a whole
    os.replace(tmp, latest)  # atomic: `latest` always points at a complete folder name
    return folder


def _unique_folder(parent: Path, when: datetime.datetime, create: bool) -> Path:
    """parent/YYYYmmdd-HHMMSS, with -2, -3, ... when two runs start in the same second."""
    base = when.strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        folder = parent / (base if i == 1 else f"{base}-{i}")
        if not create:
            if not folder.exists():
                return folder
            continue
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise OSError(f"too many runs named {base}-* in {parent}")


def _check_writable(folder: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
        pass


# ---- what the run ran with ---------------------------------------------------------------------

def environment(now: datetime.datetime | None = None) -> dict:
    """Versions of fedkd and what it runs on, and the date (local time with its offset)."""
    versions = {}
    for package in ("fedkd", "flwr", "torch", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    if versions["fedkd"] is None:  # run from a checkout that is not installed
        versions["fedkd"] = __version__
    versions["python"] = platform.python_version()
    versions["date"] = (now or datetime.datetime.now().astimezone()).isoformat(timespec="seconds")
    return versions


def resolved_settings(config: Config, splits: Splits) -> dict:
    """What the run's `auto` and 0 (automatic) settings became for this data, and the data's
    shape: input shape and scaling, models, partition sizes, secure-aggregation parameters.
    One place to extend when more of the data is described."""
    from fedkd.models import resolve
    from fedkd.task import prototype_architectures

    def model(name: str) -> str:
        return resolve(name, splits.input_shape)

    data = describe_splits(splits)
    resolved: dict = {
        "input_shape": data["input_shape"],
        "num_classes": data["num_classes"],
        "scaling": data["scaling"],
        "data": data,  # everything fedkd.data resolved: layout, value kind, statistics, sizes
        "teacher_models": [model(config.teacher_model_for(i)) for i in range(config.num_clients)],
        "student_model": model(config.student_model),
        "partition_sizes": data["sizes"]["clients"],
        "num_public": data["sizes"]["public"],
        "num_test": data["sizes"]["test"],
        # knowledge transfer, with autos resolved (fedkd.config's vote_rule and joint_weight)
        "transfer": {"teacher_init": config.teacher_init,
                     # the teacher architectures that get a global student of their own (architecture-students)
                     "architecture_students": list(prototype_architectures(config, splits)),
                     "vote_weighting": config.vote_rule,
                     "confidence_weighting": config.confidence_weighting, "consensus_weight": config.joint_weight,
                     "ensemble": config.ensemble, "temperature": config.temperature,
                     "server_step": config.step,
                     "public_views": config.views_for(splits.input_shape), "view_flip": config.view_flip},
    }
    if config.method in ("fd", "local"):  # how a node trains its clients' teachers (fedkd.stacked)
        from fedkd.task import cohort_engine

        resolved["cohort_engine"] = cohort_engine(config, splits)
    if config.method == "fd" and config.aggregation == "secagg":
        from fedkd.aggregate import secagg_config
        from fedkd.task import vector_layout

        sa = secagg_config(config, splits.num_classes, 1)
        neighbours, threshold, colluders, partners = sa.session(config.cohort_size,
                                                                vector_layout(config, splits, 1).length)
        resolved["secagg"] = {"clip": sa.clip, "scale": sa.scale, "bit_width": sa.bit_width,
                              "neighbors": neighbours, "threshold": threshold, "max_colluders": colluders,
                              "min_partners": partners, "consistency_check": sa.consistency_check}
    if config.dp_enabled:  # with dp-target-epsilon the noise multiplier is derived, not given
        from fedkd.task import dp_params

        resolved["dp_noise_multiplier"] = dp_params(config, splits.num_classes, 1).noise_multiplier
    return resolved


def stalled_text(record: RoundRecord, show: int = 8) -> str:
    """A warning for a round in which some clients' local training learnt nothing ('' when none
    did), naming at most `show` of them: clipped steps at a far too high lr end finite and useless
    instead of failing loudly, and too low an lr or too few epochs leave a teacher unfit."""
    ids = record.stalled_clients
    if not ids:
        return ""
    named = ",".join(map(str, ids[:show])) + (f" ... ({len(ids)} clients)" if len(ids) > show else "")
    return (f"round {record.round}: local training learnt nothing on client{'s' if len(ids) > 1 else ''} "
            f"{named} (on their own data no better than their labels' class shares): check lr (far too high, "
            f"or too low for local-epochs), local-epochs and their data")


def dropped_text(record: RoundRecord, show: int = 3) -> str:
    """A warning for a round in which some clients' train replies could not be used ('' when all
    could): who was dropped and why, at most `show` reasons."""
    failed = record.failed_clients
    if not failed:
        return ""
    ids = sorted(failed, key=int)
    reasons = "; ".join(f"client {pid}: {failed[pid]}" for pid in ids[:show])
    more = f"; and {len(ids) - show} more" if len(ids) > show else ""
    return f"round {record.round}: {len(ids)} client{'s' if len(ids) > 1 else ''} dropped: {reasons}{more}"


def cohort_text(record: RoundRecord, num_clients: int, show: int = 8) -> str:
    """A sampled round's cohort for a log line: 'cohort 100/1000: 3,17,22,40,51,58,63,77 ...';
    '' when every client was asked (or the record has no cohort)."""
    cohort = record.cohort
    if not cohort or len(cohort) >= num_clients:
        return ""
    ids = ",".join(map(str, cohort[:show]))
    return f"cohort {len(cohort)}/{num_clients}: {ids}{' ...' if len(cohort) > show else ''}"


def records_of(rows: list[Mapping]) -> list[RoundRecord]:
    """results.json's round rows -> typed records (what every reader of a run's rounds works on)."""
    return [RoundRecord.from_json(row) for row in rows]


def write_json_atomic(path: Path, data: object) -> None:
    """`data` as indented JSON, written atomically (`write_atomic`)."""
    write_atomic(path, (json.dumps(_finite(data), indent=2) + "\n").encode())


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over `path`: readers never see
    half a file, and a failure leaves the previous version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(obj: object) -> object:
    """JSON has no NaN/inf: write them as null. Records (`fedkd.rounds`) are written as their `to_json()`."""
    if hasattr(obj, "to_json"):
        obj = obj.to_json()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ---- the checkpoint: where a stopped run continues ------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    """A run's state after its last finished round, as `checkpoint.pt` holds it (`read_checkpoint`)."""

    round: int  # the last finished round: a resumed run goes on at round + 1
    settings: dict  # the run's settings (config.json's hyphenated keys), which a resumed run keeps
    described: dict  # config.json's "resolved" and "environment"
    rounds: list[dict]  # results.json's rows of rounds 1..round
    outcome: dict  # results.json's keys after "final" so far ("privacy" under distributed DP)
    seconds: float  # the run's time up to the end of `round`
    server: dict  # the server's state, as the round engine wrote it (`fedkd.apps.driver.server_state`)
    # a distributed-DP round after `round` whose noisy sum the server may already have opened: its
    # release is spent even though the round did not finish, so a resumed run accounts for it
    opened: int | None = None


def checkpoint_payload(config: Config, server_round: int, rounds: list[dict], outcome: dict, seconds: float,
                       server: dict, opened: int | None = None) -> dict:
    """checkpoint.pt's contents: tensors, numbers, strings and JSON text only, so it loads with
    `torch.load(weights_only=True)` (no pickled objects run on load)."""
    return {"format": CHECKPOINT_FORMAT, "fedkd": __version__, "round": server_round,
            "settings": json.dumps(config.to_run_config()), "rounds": json.dumps(_finite(rounds)),
            "outcome": json.dumps(_finite(outcome)), "seconds": seconds, "server": server, "opened": opened,
            "process": {"pid": os.getpid(), "host": platform.node()}}


def write_checkpoint(out: Path, payload: dict) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(out / CHECKPOINT, buffer.getvalue())


def read_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    """The checkpoint of the stopped run in `folder`, or OutputError saying in one line why that run
    cannot be resumed: no run there, a finished run, no checkpoint (no round finished, or a fedkd
    before checkpoints wrote it), a checkpoint of another layout, a run still going on."""
    import torch

    path = Path(folder).expanduser()
    where = f"--resume {folder}"
    try:
        saved = json.loads((path / "results.json").read_text())
        config_json = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise OutputError(f"{where}: no fedkd run there (it needs the run's config.json and results.json)") from None
    except (OSError, ValueError) as exc:
        raise OutputError(f"{where}: the run's results.json or config.json cannot be read: {exc}") from None
    status = saved.get("status")
    if status in FINISHED:
        raise OutputError(f"{where}: that run is finished (status {status}); there is nothing to resume")
    if not (path / CHECKPOINT).is_file():
        raise OutputError(f"{where}: no {CHECKPOINT} there (no round of that run finished, or a fedkd without "
                          f"checkpoints ran it); start it again with --out {folder} --force")
    try:
        payload = torch.load(path / CHECKPOINT, weights_only=True)
        layout = payload.get("format") if isinstance(payload, dict) else None
    except Exception as exc:  # a damaged file: torch raises several kinds
        raise OutputError(f"{where}: {CHECKPOINT} cannot be read: {type(exc).__name__}: {exc}") from None
    if layout != CHECKPOINT_FORMAT:
        raise OutputError(f"{where}: its {CHECKPOINT} has layout {layout} (fedkd {payload.get('fedkd')}) and this "
                          f"fedkd {__version__} reads layout {CHECKPOINT_FORMAT}: resume it with the fedkd that ran it")
    process = payload["process"]
    if (status == "running" and process["host"] == platform.node() and process["pid"] != os.getpid()
            and _alive(process["pid"])):
        raise OutputError(f"{where}: that run is still going on (process {process['pid']}); stop it first")
    settings = json.loads(payload["settings"])
    if {k: config_json.get(k) for k in settings} != settings:
        raise OutputError(f"{where}: config.json does not hold the settings its {CHECKPOINT} was written with")
    described = {k: v for k, v in config_json.items() if k not in settings}
    return Checkpoint(round=int(payload["round"]), settings=settings, described=described,
                      rounds=json.loads(payload["rounds"]), outcome=json.loads(payload["outcome"]),
                      seconds=float(payload["seconds"]), server=payload["server"], opened=payload["opened"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process holds that id
        return True
    return True


class RunRecorder:
    """Collects round records and keeps the output folder current.

    `on_round(record)` is called with each round's `RoundRecord` after its row is saved (the CLI's
    progress display uses it). How the run ends: `finish` ("completed" unless `stop` said
    otherwise), `stop` (a clean early end), `fail` (an error; the rounds so far stay saved).
    `resume`: the checkpoint of a stopped run in the same folder, whose rounds this recorder
    continues (config.json's environment gains a "resumed" entry with this session's versions).
    """

    def __init__(self, config: Config, on_round: Callable[[RoundRecord], None] | None = None,
                 on_phase: Callable[[str], None] | None = None, resume: Checkpoint | None = None):
        self.config = config
        self.on_phase = on_phase  # told what a round is doing now ("round 2: 10 clients training")
        self.out = Path(config.out)
        self.rounds: list[dict] = []  # results.json's round rows
        self.on_round = on_round
        self.status = "completed"  # what `finish` records, unless the run was stopped early
        # results.json's keys after "final", in the order they were first set (as files have them):
        # "stopped" (`stop`), "privacy" (`spend`), "error" (`fail`)
        self._outcome: dict = {}
        self.described: dict = {"environment": environment()}  # and "resolved", once the data is loaded
        self.resumed = resume
        self._started = time.perf_counter()
        self._checkpoint: dict | None = None  # the last one written, kept to add `note_opened` to it
        if resume is not None:
            self.rounds, self._outcome = list(resume.rounds), dict(resume.outcome)
            before = resume.described.get("environment", {})
            self.described = {**resume.described, "environment": {
                **before, "resumed": [*before.get("resumed", []), {"after_round": resume.round, **environment()}]}}

    def phase(self, text: str) -> None:
        """Say what the run is doing inside a round (progress between round lines)."""
        if self.on_phase is not None:
            self.on_phase(text)

    def start(self) -> None:
        # a resumed run's clock goes on from its checkpoint (the unfinished round's time is lost)
        self._started = time.perf_counter() - (self.resumed.seconds if self.resumed is not None else 0.0)
        self._write_config()
        self._save("running")

    def elapsed(self) -> float:
        """Seconds the run has taken since `start` (with a resumed run's time before its checkpoint)."""
        return time.perf_counter() - self._started

    def save_checkpoint(self, server_round: int, server: dict) -> None:
        """checkpoint.pt after round `server_round` finished and was saved: the server's state
        (`server`, the engine's record of it), the rounds and outcome so far, written atomically.
        A run stopped later resumes at round `server_round` + 1 (`fedkd run --resume`)."""
        if _HALTED.is_set():
            return
        self._checkpoint = checkpoint_payload(self.config, server_round, self.rounds, self._outcome,
                                              self.elapsed(), server)
        write_checkpoint(self.out, self._checkpoint)

    def note_opened(self, server_round: int) -> None:
        """Distributed DP: round `server_round`'s noisy sum is being opened before its checkpoint
        exists; the checkpoint says so, so that a resumed run accounts for that release too."""
        if _HALTED.is_set() or self._checkpoint is None:  # none yet: round 1 cannot be resumed
            return
        self._checkpoint = {**self._checkpoint, "opened": server_round}
        write_checkpoint(self.out, self._checkpoint)

    def describe(self, resolved: dict) -> None:
        """Record what the run resolved (see `resolved_settings`) in config.json and results.json."""
        self.described["resolved"] = resolved
        self._write_config()
        self._save("running")

    def config_record(self) -> dict:
        """config.json: every setting as given, then what it resolved to and the software versions."""
        return {**self.config.to_run_config(), **self.described}

    def _write_config(self) -> None:
        if not _HALTED.is_set():
            write_json_atomic(self.out / "config.json", self.config_record())

    def add_round(self, record: RoundRecord | Mapping) -> None:
        """Save a round: a `RoundRecord`, or a row of results.json's keys (kept as given).
        `on_round` gets the typed record either way."""
        row = record.to_json() if isinstance(record, RoundRecord) else dict(record)
        if "student_accuracy" in row and "ensemble_accuracy" in row:  # every round the server makes
            row["student_to_ensemble"] = RoundRecord(row.get("round"), student_accuracy=row["student_accuracy"],
                                                     ensemble_accuracy=row["ensemble_accuracy"]).student_to_ensemble
        self.rounds.append(row)
        self._save("running")
        if self.on_round is not None:
            self.on_round(record if isinstance(record, RoundRecord) else RoundRecord.from_json(row))

    def stop(self, status: str, reason: str) -> None:
        """The run ends early but cleanly, its rounds so far standing: `status` is what `finish`
        records ("budget-exhausted" when DP's epsilon budget stopped it, "too-few-survivors" when
        a DP round lost more clients than its noise was sized for), `reason` goes in as "stopped"."""
        self.status = status
        self._outcome["stopped"] = reason

    def spend(self, privacy: PrivacySpent) -> None:
        """The privacy the run has spent so far (results.json's "privacy"), saved with the next write."""
        self._outcome["privacy"] = privacy.to_json()

    def finish(self, seconds_total: float) -> dict:
        """Save the final figures with the run's status and the finished run's files
        (`write_finished`); returns the results."""
        final = self.final(seconds_total)
        if _HALTED.is_set():
            return self.results("interrupted", final)
        results = self.results(self.status, final)
        write_finished(results, self.out)
        (self.out / CHECKPOINT).unlink(missing_ok=True)  # a finished run is not resumed (its files are written)
        return results

    def fail(self, error: str) -> None:
        """Mark the run failed, keeping every round saved so far."""
        self._outcome["error"] = error
        self._save("failed")

    def final(self, seconds_total: float) -> dict:
        return final_figures(self.rounds, seconds_total)

    def save_student(self, state_dict: Mapping) -> None:
        """Save the student after a finished round as `student.pt` (a torch state_dict, written
        atomically: a run that stops keeps the last finished round's student)."""
        import torch

        if _HALTED.is_set():
            return
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
        write_atomic(self.out / "student.pt", buffer.getvalue())

    def results(self, status: str, final: dict | None = None) -> dict:
        return {"status": status, "config": self.config_record(), "rounds": self.rounds,
                "final": final, **self._outcome}

    def _save(self, status: str, final: dict | None = None) -> None:
        if _HALTED.is_set():
            return
        results = self.results(status, final)
        write_json_atomic(self.out / "results.json", results)
        write_tables(results, self.out)


def final_figures(rounds: list[dict], seconds_total: float | None) -> dict:
    """results.json's "final": the last round's figures, the rounds completed and the total time."""
    last = rounds[-1] if rounds else {}
    final = {k: last.get(k) for k in FINAL_KEYS if k != "seconds_total"}
    final["student_nll"] = last.get("student_nll")
    final["student_ece"] = last.get("student_ece")
    final["rounds_completed"] = len(rounds)
    final["seconds_total"] = seconds_total
    return final


# ---- what every front end leaves: the finished run's files, and run.log -------------------------

RUN_LOG = "run.log"
# The loggers whose records run.log holds: Flower's, Ray's (driver side), Python warnings and fedkd's.
LOGGERS = ("flwr", "ray", "py.warnings", "fedkd")
# The ServerApp writes run.log itself unless whoever started it does: `fedkd deploy` sets
# FEDKD_RUN_LOG=launcher in every process it starts, since its run.log already holds every
# process's lines, the ServerApp's included (through `flwr log`).
RUN_LOG_ENV = "FEDKD_RUN_LOG"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_log = logging.getLogger("fedkd")


def write_finished(results: dict, out: Path) -> None:
    """The files a finished run leaves in `out`, whichever front end ran it (`fedkd run`, and the
    ServerApp under `flwr run` and `fedkd deploy`, each through `RunRecorder.finish`): results.json
    with rounds.csv and summary.csv, summary.txt, curves.png and curves.pdf. (student.pt is saved
    after each round, run.log while the run goes on.) The summary table also goes to the `fedkd`
    logger, so that run.log ends with it."""
    write_json_atomic(out / "results.json", results)
    write_tables(results, out)
    seconds = results["final"]["seconds_total"]
    write_summary(results, seconds, out / "summary.txt")
    _log.info("summary (summary.txt):\n%s", summary_text(results, seconds).rstrip())
    plot_curves(results["rounds"], out, title=run_title(results["config"]))


class _LogFile(logging.FileHandler):
    """run.log: timestamped records without colour codes (Ray puts some inside its exception texts).
    Its format is fixed: `ray.init` resets the formatter of every handler on the "ray" logger to
    its own (with colour codes)."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8")
        self.formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.setLevel(logging.INFO)

    def format(self, record: logging.LogRecord) -> str:
        return ANSI.sub("", super().format(record))

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 (logging's name)
        pass


@contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Append every record of LOGGERS at INFO and above, and Python's warnings, to `path` while the
    block runs; the loggers' levels are put back after."""
    handler = _LogFile(path)
    saved = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for name in LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.setLevel(saved[name])
        handler.close()


def app_run_log(out: str | os.PathLike) -> ContextManager[None]:
    """run.log in `out` for a ServerApp that chose its folder itself (under `flwr run`), as
    `fedkd run` writes one; nothing where the process that started it writes run.log (RUN_LOG_ENV)."""
    if os.environ.get(RUN_LOG_ENV) == "launcher":
        return nullcontext()
    return log_to_file(Path(out) / RUN_LOG)


# ---- the same results as tables ----------------------------------------------------------------

def write_tables(results: dict, out: Path) -> None:
    """rounds.csv and summary.csv from results.json's dict (`RunRecorder.results`), atomically."""
    rows = _finite(results["rounds"])
    write_atomic(out / "rounds.csv", _csv(round_columns(rows), [_flat(row) for row in rows]))
    summary = summary_row(results)
    write_atomic(out / "summary.csv", _csv(list(summary), [summary]))


def round_columns(rows: list[dict]) -> list[str]:
    """rounds.csv's columns: every number a round row has, in results.json's order. Blocks (secagg,
    privacy, teacher_epsilon, prototype_accuracy, failed_clients) give one column per value one
    level down, named with a dot ("secagg.seconds_total", "failed_clients.3" with its reason), where a
    row has them; lists and deeper
    levels (cohort, survivors, per-client epsilons, seconds per stage) stay in results.json only."""
    columns: dict[str, None] = {}  # an ordered set
    for row in rows:
        columns.update(dict.fromkeys(_flat(row)))
    return list(columns)


def _flat(row: Mapping) -> dict:
    flat = {}
    for key, value in row.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in value.items() if not isinstance(v, (Mapping, list, tuple))})
        elif not isinstance(value, (list, tuple)) and key not in ROUND_BLOCKS:  # a block's null is not a number
            flat[key] = value
    return flat


def summary_row(results: dict) -> dict:
    """summary.csv's one row: the run's status, its final figures (the last round's while it runs)
    and every setting as given, in a fixed order, so the files of many runs stack into one table."""
    final = results.get("final") or final_figures(results["rounds"], None)
    settings = {k: v for k, v in results["config"].items() if not isinstance(v, Mapping)}  # not resolved/environment
    return {"status": results["status"], **final, **settings}


def _csv(columns: list[str], rows: list[Mapping]) -> bytes:
    """CSV text: a header, then a row per mapping, empty where it has no value (null)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


# ---- the run as text: round lines and summary tables ------------------------------------------

def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _dropped(r: RoundRecord) -> str:
    """Secure-aggregation drop-outs of a round: 'share_keys: 7; unmask: 3', or ''."""
    dropped = r.secagg.dropped if r.secagg is not None else {}
    return "; ".join(f"{stage}: {','.join(map(str, ids))}" for stage, ids in dropped.items())


def round_line(r: RoundRecord, num_clients: int = 0) -> str:
    """A round in one line, as the console and run.log show it, from its record:
    'round 5: student 0.9471 (1.00 of ensemble 0.9499)  teachers 0.9465  1.2 s' and, where they
    apply, the cohort, the drop-outs and the privacy spent."""
    ratio = r.student_to_ensemble
    student = _fmt(r.student_accuracy) if ratio is None else f"{_fmt(r.student_accuracy)} ({ratio:.2f} of"
    line = (f"round {r.round}: student {student} ensemble {_fmt(r.ensemble_accuracy)}"
            f"{')' if ratio is not None else ''}  teachers {_fmt(r.teacher_accuracy_mean)}  {_fmt(r.seconds, 1)} s")
    if cohort_text(r, num_clients):
        line += f"  {cohort_text(r, num_clients)}"
    if _dropped(r):
        line += f"  dropped {_dropped(r)}"
    if r.privacy is not None:
        line += f"  epsilon {r.privacy.epsilon:.3f}"
    if r.teacher_epsilon is not None:
        line += f"  teacher epsilon <= {r.teacher_epsilon.max:.3f}"
    return line


def summary_table(results: dict, wall: float, width: int | None = None):
    """The run's rounds as a rich Table: every column when it fits in `width` (None: always),
    else the key figures only, with secure-aggregation drop-outs listed under the table."""
    full = _full_table(results, wall)
    if width is None or _rendered_width(full) <= width:
        return full
    return _compact_table(results, wall)


def _title(results: dict) -> str:
    return f"fedkd {run_title(results['config'])}"  # as curves.png's title


def _rendered_width(renderable) -> int:
    console = Console(file=io.StringIO(), width=10_000, color_system=None)
    with console.capture() as capture:
        console.print(renderable)
    return max((len(line.rstrip()) for line in capture.get().splitlines()), default=0)


def _compact_table(results: dict, wall: float):
    rounds = records_of(results["rounds"])
    table = Table(title=_title(results))
    columns = ["round", "student", "ensemble", "stu/ens", "teachers", "s"]
    private = any(r.privacy is not None for r in rounds)
    if private:
        columns.append("epsilon")
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True)
    for r in rounds:
        row = [str(r.round), _fmt(r.student_accuracy), _fmt(r.ensemble_accuracy),
               _ratio(r.student_to_ensemble), _fmt(r.teacher_accuracy_mean), _fmt(r.seconds, 1)]
        if private:
            row.append(_fmt(r.privacy.epsilon if r.privacy is not None else None, 3))
        table.add_row(*row)
    notes = [f"round {r.round} dropped {_dropped(r)}" for r in rounds if _dropped(r)]
    table.caption = "\n".join([*notes, f"total {wall:.1f} s; every column in summary.txt"])
    return table


def _full_table(results: dict, wall: float):
    rounds = records_of(results["rounds"])
    table = Table(title=_title(results))
    secure = any(r.secagg is not None for r in rounds)
    columns = ["round", "student acc", "NLL", "ECE", "ensemble acc", "student/ensemble", "teacher acc (mean±sd)",
               "upload B/client", "s"]
    private = any(r.privacy is not None for r in rounds)
    if secure:
        columns += ["secagg s", "survivors", "dropped (stage: ids)"]
    dpsgd = any(r.teacher_epsilon is not None for r in rounds)
    if private:
        columns += ["epsilon"]
    if dpsgd:
        columns += ["teacher eps (max)"]
    for col in columns:
        table.add_column(col, justify="right")
    for r in rounds:
        teacher = "-" if r.teacher_accuracy_mean is None else f"{r.teacher_accuracy_mean:.4f}±{r.teacher_accuracy_std:.3f}"
        upload = "-" if r.upload_bytes_per_client is None else f"{r.upload_bytes_per_client:,.0f}"
        row = [str(r.round), _fmt(r.student_accuracy), _fmt(r.student_nll, 3), _fmt(r.student_ece, 3),
               _fmt(r.ensemble_accuracy), _ratio(r.student_to_ensemble), teacher, upload, _fmt(r.seconds, 1)]
        if secure:
            sa = r.secagg
            row += ([_fmt(sa.seconds_total, 2), str(len(sa.survivors)), _dropped(r) or "-"] if sa is not None
                    else ["-", "0", "-"])
        if private:
            row += [_fmt(r.privacy.epsilon if r.privacy is not None else None, 3)]
        if dpsgd:
            row += [_fmt(r.teacher_epsilon.max if r.teacher_epsilon is not None else None, 3)]
        table.add_row(*row)
    table.caption = f"total {wall:.1f} s"
    return table


def summary_text(results: dict, wall: float) -> str:
    """The full table as plain text (no colour codes), as wide as it needs."""
    table = _full_table(results, wall)
    console = Console(file=io.StringIO(), width=max(80, _rendered_width(table)), color_system=None,
                      force_terminal=False)
    console.print(table)
    return console.file.getvalue()


def write_summary(results: dict, wall: float, path: Path) -> None:
    """summary.txt: `summary_text`, written atomically."""
    write_atomic(path, summary_text(results, wall).encode())


# ---- the curves ----------------------------------------------------------------------------------

METHOD_NAMES = {"fd": "fd", "fedavg": "FedAvg", "central": "central", "local": "local"}
# (key, label, style): the student is drawn last, on top, with small filled markers; the teachers
# under it dashed and dotted with larger hollow markers, so where the student matches its ensemble
# each square still frames a dot. Fixed colours: a series looks the same in every run's plot.
SERIES = (("teacher_accuracy_mean", "mean local teacher",
           {"color": "C2", "linestyle": ":", "marker": "^", "mfc": "none", "markersize": 7, "zorder": 2}),
          ("ensemble_accuracy", "ensemble teacher",
           {"color": "C1", "linestyle": "--", "marker": "s", "mfc": "none", "markersize": 9, "markeredgewidth": 1.5,
            "zorder": 3}),
          ("student_accuracy", "student", {"color": "C0", "linestyle": "-", "marker": "o", "markersize": 5, "zorder": 4}))


def dataset_name(dataset: str) -> str:
    """A dataset's short name for titles: a file's or folder's stem ("my" for ~/data/my.npz), a
    Hugging Face name's last part without its options ("cifar100" for hf:uoft-cs/cifar100?image=img)."""
    path = dataset.removeprefix("hf:").split("?", 1)[0].rstrip("/")
    return Path(path).stem or dataset


def run_title(cfg: Mapping) -> str:
    """A run in one line from its settings (hyphenated keys): method, dataset, clients, partition,
    and the temperature where the method has one (fd's distillation; not FedAvg, central or local)."""
    method = cfg["method"]
    partition = cfg["partition"]
    if partition == "dirichlet":
        partition += f" (alpha={cfg['alpha']:g})"
    elif partition == "pathological" and "classes-per-client" in cfg:
        partition += f" ({cfg['classes-per-client']} classes per client)"
    title = f"{METHOD_NAMES.get(method, method)} on {dataset_name(cfg['dataset'])}: {cfg['num-clients']} clients, {partition}"
    return title + (f", T={cfg['temperature']:g}" if method == "fd" else "")


def curves_figure(rounds: list[dict], title: str = ""):
    """Test accuracy per round of the student, the ensemble teacher and the mean local teacher, on
    whole-round ticks and a y-axis zoomed to the data (0..1 would flatten the differences)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    records = records_of(rounds)
    values, handles = [], []
    for key, label, style in SERIES:
        points = [(r.round, getattr(r, key)) for r in records if getattr(r, key) is not None]
        if points:
            xs, ys = zip(*points)
            handles.append(ax.plot(xs, ys, label=label, clip_on=False, **style)[0])
            values += ys
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if records:  # a quarter round either side, so the first and last markers are not cut
        ax.set_xlim(min(r.round for r in records) - 0.25, max(r.round for r in records) + 0.25)
    if values:
        margin = max(0.01, 0.08 * (max(values) - min(values)))
        ax.set_ylim(max(0.0, min(values) - margin), min(1.0, max(values) + margin))
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    if handles:
        ax.legend(handles=handles[::-1], loc="best")  # the student first
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_curves(rounds: list[dict], out: Path, title: str = "") -> None:
    """`curves_figure` saved as out/curves.png (for a look) and out/curves.pdf (vector, for a paper)."""
    import matplotlib.pyplot as plt

    fig = curves_figure(rounds, title)
    try:
        for name, options in (("curves.png", {"dpi": 150}), ("curves.pdf", {})):
            buffer = io.BytesIO()
            with plt.rc_context({"pdf.fonttype": 42}):  # TrueType in the PDF: journals refuse Type 3 fonts
                fig.savefig(buffer, format=name.rsplit(".", 1)[1], **options)
            write_atomic(out / name, buffer.getvalue())
    finally:
        plt.close(fig)

