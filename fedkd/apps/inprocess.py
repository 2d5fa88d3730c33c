"""An engine without Ray for one machine: fedkd's ServerApp and ClientApp, driven in this process
through a Grid that calls the ClientApp directly.

Why: in Flower's simulation engine every message goes through the link state, which is swept for
every node's messages every 0.1 s (each sweep loops over every stored message), and Ray takes
seconds to start; a ClientApp called directly costs about a millisecond per hundred messages. The
apps are the same ones `flwr run` and `fedkd deploy` run, so results do not depend on the engine
(tests/test_engine.py).

Owns: `InProcessGrid` (push runs the ClientApp on the destination node's `Context` and keeps the
reply until it is pulled) and `run_inprocess` (nodes, their contexts, the ServerApp call). Uses
Flower's public API: `Grid`, `Message`, `Metadata`, `Context`, `Error`, `ClientApp.__call__` and
`ServerApp.__call__`, with one exception: Flower 1.42 takes the sender of a message the ServerApp
creates from a process-wide task identity (`flwr.supercore.task_identity.TaskIdentity`) that its
own runtimes set before a ServerApp starts, and no public API sets it; `run_inprocess` sets it the
same way (where it exists) for the run and restores it after. Must not touch: what the apps do
with their messages.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from flwr.app import Context, Error, Message, Metadata, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

SERVER_NODE_ID = 1  # Flower's SUPERLINK_NODE_ID: the sender of the server's messages
CLIENT_APP_RAISED = 2  # the code Flower's engines give a reply whose ClientApp raised


@dataclass(frozen=True)
class InProcessRun:
    """What `Grid.run` tells the ServerApp (Flower's `Run` lives in a private module)."""

    run_id: int


class InProcessGrid(Grid):
    """A Grid whose nodes are `Context`s in this process: pushing a message runs `client_app` on
    its destination node at once (one node, then the next: no threads), pulling returns the replies.
    A ClientApp that raises gives an error reply, as Flower's engines do."""

    def __init__(self, client_app: ClientApp, run_id: int, node_configs: list[Mapping[str, object]],
                 run_config: Mapping[str, object] | None = None, seed: int = 0):
        self._app, self._run = client_app, InProcessRun(run_id)
        # random node ids, as Flower gives: nothing may depend on their order
        ids = random.Random(seed).sample(range(1, 2**62), len(node_configs))
        self.nodes = {node_id: Context(run_id=run_id, node_id=node_id, node_config=dict(cfg), state=RecordDict(),
                                       run_config=dict(run_config or {}))
                      for node_id, cfg in zip(ids, node_configs)}
        self._replies: dict[str, Message] = {}

    def set_run(self, run) -> None:
        self._run = InProcessRun(int(getattr(run, "run_id", run)))

    @property
    def run(self) -> InProcessRun:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            delivered = self._deliver(msg)
            self._replies[delivered.metadata.message_id] = self._call(delivered)
            ids.append(delivered.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, msg: Message) -> Message:
        """The message as a node receives it: a fresh id, this run, from the server."""
        meta = msg.metadata
        if meta.dst_node_id not in self.nodes:
            raise ValueError(f"no node {meta.dst_node_id} in this run")
        return Message(content=msg.content, metadata=Metadata(
            run_id=self._run.run_id, message_id=uuid.uuid4().hex, src_node_id=SERVER_NODE_ID,
            dst_node_id=meta.dst_node_id, reply_to_message_id="", group_id=meta.group_id,
            created_at=time.time(), ttl=meta.ttl, message_type=meta.message_type))

    def _call(self, msg: Message) -> Message:
        threads = _torch_threads()
        try:
            return self._app(msg, self.nodes[msg.metadata.dst_node_id])
        except Exception as exc:  # what Flower's engines do with a ClientApp that raises
            return Message(Error(code=CLIENT_APP_RAISED, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
        finally:  # the ClientApp sets torch's threads for its share of a core; the server keeps its own
            if threads is not None:
                sys.modules["torch"].set_num_threads(threads)


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def run_inprocess(server_app: ServerApp, client_app: ClientApp, node_configs: list[Mapping[str, object]],
                  run_config: Mapping[str, object] | None = None, run_id: int = 1, seed: int = 0) -> InProcessGrid:
    """Run `server_app` to its end over nodes with `node_configs`; returns the Grid (its nodes'
    contexts hold what the clients kept)."""
    grid = InProcessGrid(client_app, run_id, node_configs, run_config, seed=seed)
    context = Context(run_id=run_id, node_id=SERVER_NODE_ID, node_config={}, state=RecordDict(),
                      run_config=dict(run_config or {}))
    with _task_identity(run_id):
        server_app(grid, context)
    return grid


@contextmanager
def _task_identity(run_id: int) -> Iterator[None]:
    """Flower 1.42's process-wide identity of the running ServerApp (see the module docstring);
    nothing to do on a Flower without it."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:
        yield
        return
    names = ("_task_id", "_run_id", "_node_id")
    before = {name: getattr(TaskIdentity, name, None) for name in names}
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SERVER_NODE_ID
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(TaskIdentity, name, value)
