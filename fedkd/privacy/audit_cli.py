"""`fedkd audit` on the command line: its options, the table, the JSON file and the ROC plot.

Owns: the command's arguments (one per keyword of `fedkd.privacy.audit.prepare`, with the same
defaults; clients and temperature are `fedkd run`'s, from Config), how a result is shown (a rich
table, or JSON on stdout), the files it writes (audit.json, audit_roc.png, and each finished
training in trainings/ as it finishes: `TrainingFolder`), the one-line errors with exit code 2,
and stopping: SIGINT or SIGTERM ends the audit with one line, exit 130 or 143, every finished
training kept for the same command to go on from. Must not touch: the scenario or the statistics
(`fedkd.privacy.audit`, `.audit_stats`); parsing the arguments imports neither torch nor the data.
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from fedkd.errors import UserError, report
from fedkd.privacy.audit import MIN_CANARIES, RUN, VIEWS, Setting, execute, prepare, trainings
from fedkd.privacy.audit_stats import CONFIDENCE, AuditError
from fedkd.results import write_atomic

TRAININGS = "trainings"  # the folder in --out that keeps each finished training


class TrainingFolder:
    """The audit's finished trainings (`fedkd.privacy.audit.Pieces`) as files: NAME.npz holds the
    release (d,) float64 and the key of what it was trained from, written atomically when the
    training ends. A file under another key (other settings) is trained again and replaced."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.reused = 0  # trainings read back instead of run
        self.names: set[str] = set()  # the trainings of this audit that are on disk

    def get(self, name: str, key: str) -> np.ndarray | None:
        try:
            with np.load(self.folder / f"{name}.npz") as kept:
                if str(kept["key"]) != key:
                    return None
                release = kept["release"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # missing, or not one of ours
            return None
        self.reused += 1
        self.names.add(name)
        return release

    def put(self, name: str, key: str, release: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, release=release, key=np.array(key))
        write_atomic(self.folder / f"{name}.npz", buffer.getvalue())
        self.names.add(name)


def plot_roc(result: dict, path: Path) -> None:
    """ROC of every view on log-log axes (the low-FPR corner is what matters), written to `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    floor = 1e-4  # log axes cannot show 0
    for view, entry in result["views"].items():
        roc = entry["membership"]["roc"]
        dashed = view == "secagg-known-others"  # it lies on top of plain: keep both visible
        ax.step(np.maximum(roc["fpr"], floor), np.maximum(roc["tpr"], floor), where="post",
                linestyle="--" if dashed else "-", linewidth=1.2 if dashed else 2.0,
                label=f"{view} (AUC {entry['membership']['auc']:.3f})")
    ax.plot([floor, 1], [floor, 1], color="grey", linestyle=":", label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1.05), xlabel="false positive rate",
           ylabel="true positive rate", title="canary membership inference (test half)")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(result: dict):
    """The result as a rich table, one row per view (fits 80 columns)."""
    from rich import box
    from rich.table import Table

    s, dp = result["setting"], result["dp"]
    out = Table(title=f"fedkd audit: client {s['target']} ({s['target_examples']} examples) of {s['clients']}, "
                      f"{s['queries']} queries x {s['classes']} classes, T={s['temperature']}",
                box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left")
    for col in ("view", "label\nKL", "prior\nKL", "AUC", "TPR at\n1% FPR", "TPR at\n.1% FPR", "eps\n>=", "eps\nacct"):
        out.add_column(col, justify="left" if col == "view" else "right", no_wrap=True)
    for view, e in result["views"].items():
        mem, lab = e["membership"], e["label_inference"]
        acc = "inf" if e["accountant_epsilon"] is None else f"{e['accountant_epsilon']:.2f}"
        out.add_row(view, f"{lab['kl']:.3f}", f"{lab['baseline_kl']:.3f}", f"{mem['auc']:.3f}",
                    f"{mem['tpr_at_fpr']['0.01']:.3f}", f"{mem['tpr_at_fpr']['0.001']:.3f}", f"{mem['eps_lb']:.2f}", acc)
    out.caption = (f"{s['trials']} canary trials ({s['runs']} runs x {s['canaries_per_run']}, {s['in']} IN); test fitted "
                   f"on one half, measured on the other. TPR at FPR 1% / 0.1%; eps >=: empirical lower bound, "
                   f"{CONFIDENCE:.0%} confidence, delta={s['delta']:g}; eps acct: the accountant's for one release "
                   f"({dp['mechanism']}, z={dp['noise_multiplier']}, clip={dp['clip']}). {result['seconds']:.1f} s")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--view", default="all", help=f"{' | '.join(VIEWS)} | all (default: all)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--out", default="runs/audit", help="folder for audit.json and audit_roc.png (default: runs/audit)")
    parser.add_argument("--clients", type=int, default=RUN.num_clients,
                        help=f"clients n, the target included (default: {RUN.num_clients})")
    parser.add_argument("--canaries", type=int, default=1000, help=f"canary trials, >= {MIN_CANARIES} (default: 1000)")
    parser.add_argument("--canaries-per-run", type=int, default=50,
                        help="canaries per training run; 1 gives classical independent trials (default: 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dp-noise-multiplier", type=float, default=1.0, metavar="Z", help="(default: 1.0)")
    parser.add_argument("--dp-clip", type=float, default=2.0, metavar="C",
                        help="L2 clip of a client's centred vector (default: 2.0)")
    parser.add_argument("--delta", type=float, default=1e-5, help="(default: 1e-5)")
    parser.add_argument("--dp-mechanism", default="ddg", help="ddg | skellam (default: ddg)")
    parser.add_argument("--temperature", type=float, default=RUN.temperature, help=f"(default: {RUN.temperature})")
    parser.add_argument("--local-epochs", type=int, default=100,
                        help="the teachers' local epochs; the default lets them fit their data, the case an "
                             "auditor must assume (default: 100)")


OPTIONS = ("view", "clients", "canaries", "canaries_per_run", "seed", "dp_noise_multiplier", "dp_clip", "delta",
           "dp_mechanism", "temperature", "local_epochs")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        setting = prepare(**{name: getattr(args, name) for name in OPTIONS})
        out.mkdir(parents=True, exist_ok=True)
    except (UserError, OSError) as exc:
        return report(exc, "fedkd audit")
    kept = TrainingFolder(out / TRAININGS)
    try:
        with _term_as_interrupt():
            result = _execute_with_progress(setting, kept, show=not args.json)
    except AuditError as exc:  # too few IN or OUT canaries in a half: known only after training
        return report(exc, "fedkd audit")
    except KeyboardInterrupt as stop:
        print(f"fedkd audit: {stop.args[0] if stop.args else 'interrupted'}; {len(kept.names)} of "
              f"{trainings(setting)} trainings are kept in {kept.folder}: the same command goes on from them",
              file=sys.stderr)
        return 143 if stop.args else 130
    text = json.dumps(result, indent=2, allow_nan=False)
    (out / "audit.json").write_text(text + "\n")
    plot_roc(result, out / "audit_roc.png")
    if args.json:
        print(text)
        return 0
    from rich.console import Console

    console = Console()
    console.print(table(result))
    reused = f" ({kept.reused} of them read back, not trained again)" if kept.reused else ""
    console.print(f"Saved {out}/audit.json, audit_roc.png; the {trainings(setting)} trainings in {kept.folder}{reused}",
                  highlight=False, soft_wrap=True)
    return 0


@contextmanager
def _term_as_interrupt() -> Iterator[None]:
    """SIGTERM (`timeout`, batch schedulers) stops the audit as Ctrl-C does."""
    def stop(signum, frame):
        raise KeyboardInterrupt("terminated (SIGTERM)")

    try:
        before = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave SIGTERM as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _execute_with_progress(setting: Setting, kept: TrainingFolder, show: bool) -> dict:
    """`execute`, keeping each training in `kept`, with a progress bar over the training runs on
    stderr when `show`."""
    if not show:
        return execute(setting, pieces=kept)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[bold]training runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True)
    task = progress.add_task("runs", total=setting.runs + 1)
    with progress:
        return execute(setting, lambda done, total: progress.update(task, completed=done, total=total), pieces=kept)
