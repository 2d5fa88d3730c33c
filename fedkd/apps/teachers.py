"""Where a node keeps its clients' teachers between rounds: in memory up to a budget, past it on
the node's disk.

A teacher's weights outlive a round only where the next round starts from them (teacher-init
persist, or a teacher no global student fits). A node hosting thousands of such clients would
otherwise hold every teacher in memory (10,000 digits MLPs: about 1 GiB; CNNs on 28x28 images:
tens of GiB). `teacher-memory` caps what the node keeps in `context.state`; every teacher past
the cap is written to a file of its own under the node's folder (`teacher-dir`, else the
system's temporary folder), readable by this user only, and `context.state` holds its path and
SHA-256 instead. Memory stays flat in the number of clients; results do not depend on where a
teacher was kept (the weights round-trip bit for bit).

A teacher on disk is private data in another form (its weights were fitted to the client's
examples): the files are 0600 in a 0700 folder, and the folder is removed when the process ends.

Owns: the placement rule (memory first, disk past the budget), the file format (one .npz of the
state dict's arrays) and the check on reading. Must not touch: what a teacher is or how it trains.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedkd.apps.node import ClientState

IN_MEMORY = "teacher"  # a client's ArrayRecord of teacher weights, in the node's state
ON_DISK = "teacher-file"  # a client's ConfigRecord {"path", "sha256", "bytes"} for a teacher on disk

_FOLDERS: dict[tuple[str, str], Path] = {}  # (folder root, node) -> this process's folder for it


def _remove_folders() -> None:
    for folder in _FOLDERS.values():
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_remove_folders)


def node_folder(root: str, node: str) -> Path:
    """This process's private folder for node `node`'s teachers, under `root` ("" = the system's
    temporary folder); made on first use (0700), removed at exit."""
    key = (root, node)
    if key not in _FOLDERS:
        base = Path(root) if root else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        _FOLDERS[key] = Path(tempfile.mkdtemp(prefix=f"fedkd-teachers-{node}-", dir=base))  # 0700
    return _FOLDERS[key]


def _nbytes(record: ArrayRecord) -> int:
    return sum(len(array.data) for array in record.values())


class TeacherStore:
    """The teachers of the clients one node hosts, kept in `state` (the node's `context.state`)
    while their total stays within `budget` bytes, each one past it in a file under `folder`.

    `folder` is a callable giving the folder, so a node that never spills makes none."""

    def __init__(self, state: RecordDict, budget: int, folder):
        self._state, self._budget, self._folder = state, budget, folder
        prefix = IN_MEMORY + "@"  # one pass here, then kept up to date: a put is O(1), not O(clients)
        self._used = sum(_nbytes(state[key]) for key in state.keys() if key.startswith(prefix))

    def get(self, pid: int) -> dict | None:
        """Client `pid`'s kept teacher weights (name -> torch tensor), or None when none is kept."""
        import torch

        own = ClientState(self._state, pid)
        if IN_MEMORY in own:
            return own[IN_MEMORY].to_torch_state_dict()
        if ON_DISK not in own:
            return None
        record = own[ON_DISK]
        path = Path(str(record["path"]))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RuntimeError(f"client {pid}'s teacher, kept on this node's disk at {path}, cannot be read "
                               f"({exc.strerror or exc}); it cannot continue from it") from None
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise RuntimeError(f"client {pid}'s teacher file {path} was changed since this node wrote it "
                               f"(its SHA-256 differs); it cannot continue from it")
        with np.load(path, allow_pickle=False) as arrays:
            return {name: torch.from_numpy(arrays[name].copy()) for name in arrays.files}

    def put(self, pid: int, weights: dict) -> str:
        """Keep client `pid`'s teacher weights (name -> tensor); returns where: "memory" or "disk"."""
        self.drop(pid)
        record = ArrayRecord(weights)
        own = ClientState(self._state, pid)
        if self._used + _nbytes(record) <= self._budget:
            own[IN_MEMORY] = record
            self._used += _nbytes(record)
            return "memory"
        path = self._folder() / f"teacher-{pid}.npz"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:  # (the state dict's arrays by name) -> one uncompressed .npz
            np.savez(out, **{name: t.detach().cpu().numpy() for name, t in weights.items()})
        os.replace(tmp, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        own[ON_DISK] = ConfigRecord({"path": str(path), "sha256": digest, "bytes": path.stat().st_size})
        return "disk"

    def drop(self, pid: int) -> None:
        """Forget client `pid`'s teacher (its next round starts from a global student)."""
        own = ClientState(self._state, pid)
        if IN_MEMORY in own:
            self._used -= _nbytes(own[IN_MEMORY])
            del own[IN_MEMORY]
        if ON_DISK in own:
            Path(str(own[ON_DISK]["path"])).unlink(missing_ok=True)
            del own[ON_DISK]
