"""Run outputs: `config.json`, `results.json` (rewritten atomically after every round, so a crash
leaves the last good state) and `curves.png`.

Owns: the results schema and the files in the output folder. Must not touch: training or Flower.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable

from fedkd.config import Config

# Set when the user interrupts a run: from then on no recorder in this process rewrites its files,
# so the interrupted state written by the CLI is the last word (the ServerApp thread may still be
# finishing a round in the background).
_HALTED = threading.Event()


def halt_saving() -> None:
    _HALTED.set()


FINAL_KEYS = ("student_accuracy", "ensemble_accuracy", "teacher_accuracy_mean", "seconds_total")


def write_json_atomic(path: Path, data: object) -> None:
    """Write to a temporary file in the same folder, then rename over `path`: readers never see
    half a file, and a failure leaves the previous version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_finite(data), f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(obj: object) -> object:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class RunRecorder:
    """Collects round records and keeps the output folder current.

    `on_round(record)` is called after each round is saved (the CLI's progress display uses it).
    """

    def __init__(self, config: Config, on_round: Callable[[dict], None] | None = None):
        self.config = config
        self.out = Path(config.out)
        self.rounds: list[dict] = []
        self.on_round = on_round
        self.extra: dict = {}

    def start(self) -> None:
        write_json_atomic(self.out / "config.json", self.config.to_run_config())
        self._save("running")

    def add_round(self, record: dict) -> None:
        self.rounds.append(record)
        self._save("running")
        if self.on_round is not None:
            self.on_round(record)

    def finish(self, seconds_total: float, status: str = "completed") -> dict:
        """status: "completed", or "budget-exhausted" when DP's epsilon budget stopped the run early,
        "too-few-survivors" when a DP round lost more clients than its noise was sized for."""
        final = self.final(seconds_total)
        self._save(status, final)
        if _HALTED.is_set():
            return self.results("interrupted", final)
        plot_curves(self.rounds, self.out / "curves.png", title=self._title())
        return self.results(status, final)

    def fail(self, error: str) -> None:
        """Mark the run failed, keeping every round saved so far."""
        self.extra["error"] = error
        self._save("failed")

    def final(self, seconds_total: float) -> dict:
        last = self.rounds[-1] if self.rounds else {}
        final = {k: last.get(k) for k in FINAL_KEYS if k != "seconds_total"}
        final["student_nll"] = last.get("student_nll")
        final["student_ece"] = last.get("student_ece")
        final["rounds_completed"] = len(self.rounds)
        final["seconds_total"] = seconds_total
        return final

    def results(self, status: str, final: dict | None = None) -> dict:
        return {"status": status, "config": self.config.to_run_config(), "rounds": self.rounds,
                "final": final, **self.extra}

    def _save(self, status: str, final: dict | None = None) -> None:
        if _HALTED.is_set():
            return
        write_json_atomic(self.out / "results.json", self.results(status, final))

    def _title(self) -> str:
        c = self.config
        return f"{c.method} on {c.dataset}: {c.num_clients} clients, {c.partition} (alpha={c.alpha}), T={c.temperature}"


def plot_curves(rounds: list[dict], path: Path, title: str = "") -> None:
    """Test accuracy per round of the student, the ensemble teacher and the mean local teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    series = (("student_accuracy", "student"), ("ensemble_accuracy", "ensemble teacher"),
              ("teacher_accuracy_mean", "mean local teacher"))
    for key, label in series:
        points = [(r["round"], r[key]) for r in rounds if r.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
