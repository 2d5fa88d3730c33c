"""One message exchange with the nodes: push every message, then pull the replies with a short
poll that backs off, instead of Flower's fixed sleep between pulls.

Why: Flower 1.41's `Grid.send_and_receive` pulls, then sleeps a fixed interval, until every reply
is in: 0.1 s in a simulation (`InMemoryGrid.pull_interval`, flwr/superlink/grid/inmemory_grid.py
line 177) and 3 s in a deployment (`HttpGrid`, flwr/superlink/grid/http_grid.py line 412). An
exchange whose replies arrive just after a pull waits the whole interval, so every exchange (a
round's train messages, each secure-aggregation stage) pays up to 0.1 s, or 3 s deployed, on top
of its work. Here the first pull follows at once and the wait grows from `MIN_WAIT` to `MAX_WAIT`
while nothing arrives, restarting at `MIN_WAIT` after each reply (replies come in bursts). The
wait is never shorter than `PULL_SHARE` times the last pull's own cost, so a slow pull (an HTTP
round trip, a thousand outstanding messages in the SuperLink's state) is not repeated so often
that polling becomes the work.

Owns: `exchange` (the push and the poll) and `PollingGrid`, a Grid whose `send_and_receive` is
`exchange`, so fedkd's loops and Flower's own strategies (FedAvg) all get it. Uses only the
public Grid API (`push_messages`, `pull_messages`), so it works on any Grid. Must not touch: what
the messages say.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

MIN_WAIT = 0.002  # seconds before the second pull
MAX_WAIT = 0.02  # the longest wait between pulls while nothing arrives: the most an exchange overshoots
BACKOFF = 1.5
PULL_SHARE = 10  # wait at least this many times the last pull's own cost: pulling stays under ~10% of the time


def exchange(grid: Grid, messages: Iterable[Message], timeout: float | None = None, *,
             clock: Callable[[], float] = time.monotonic,
             wait: Callable[[float], None] = time.sleep) -> list[Message]:
    """Push `messages` and return the replies that arrive within `timeout` seconds (None: wait for
    all), in arrival order: what `Grid.send_and_receive` returns, without its fixed sleep.
    A node that never answers costs `timeout` and is simply missing from the result.
    `clock` and `wait` are injected for tests."""
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else clock() + timeout
    replies: list[Message] = []
    delay = MIN_WAIT
    while pending:
        started = clock()
        got = list(grid.pull_messages(pending))
        cost = clock() - started
        replies.extend(got)
        pending.difference_update(msg.metadata.reply_to_message_id for msg in got)
        if not pending:
            break
        delay = MIN_WAIT if got else min(delay * BACKOFF, MAX_WAIT)
        delay = max(delay, PULL_SHARE * cost)
        now = clock()
        if deadline is not None:
            if now >= deadline:
                break
            delay = min(delay, deadline - now)  # one last pull at the deadline
        wait(delay)
    return replies


class PollingGrid(Grid):
    """`grid` with `exchange` as its `send_and_receive`; everything else is the wrapped Grid's."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run) -> None:
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self):
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return exchange(self._grid, messages, timeout)
