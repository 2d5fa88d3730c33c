"""A node hosts clients: which partition ids a node holds, and how one message carries an entry
per client.

A client is data on a node, not a process. Each node holds a fixed, disjoint set of partition ids
(`hosted_clients`): one under `flwr run` and `fedkd deploy` by default (a SuperNode is an
organisation), several under `fedkd run`, where the nodes follow the workers, not the federation.
Every exchange sends one message per node, carrying the parts all its clients share once and one
entry per client of the round's cohort on that node (`entry_key`); the reply carries one entry per
client, or a `failed` entry naming why that client could not answer. Each client keeps its own
slice of the node's `context.state` (`ClientState`): its teacher where it persists, its secure
aggregation keys and secrets, its DP-SGD history. The grouping is transport only: what a client
computes and sends does not depend on which node hosts it or on who else is there.

Trust: a node sees the data of every client it hosts; grouping several organisations' clients on
one node is for simulations, or for an operator who holds all of them.

Owns: the node settings that name the hosted clients, the per-client record keys, the per-client
state view. Must not touch: what a client computes (`fedkd.task`, `fedkd.apps.secure`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping

from flwr.app import ConfigRecord, RecordDict

CLIENTS = "clients"  # ConfigRecord {"ids": [...]}: the clients a message is for, or a node hosts
FAILED = "failed"  # per-client ConfigRecord {"reason": ...}: that client could not answer
TIMING = "timing"  # a node's MetricRecord {"secagg-seconds": ...}: its clients' protocol work in a stage


class NodeError(ValueError):
    """A node's settings, or a message to it, do not fit the clients it hosts."""


def hosted_clients(node_config: Mapping[str, object], num_clients: int) -> tuple[int, ...]:
    """The partition ids this node hosts, ascending. `partition-ids` ("3,7,11") names them; else
    node `partition-id` of `num-partitions` nodes hosts every num-partitions-th id from its own
    (round robin: `num-partitions` = num-clients gives one client per node, as a SuperNode has);
    without `num-partitions`, just `partition-id`."""
    try:
        if "partition-ids" in node_config:
            text = str(node_config["partition-ids"]).replace(" ", "")
            ids = tuple(sorted({int(item) for item in text.split(",") if item}))
        else:
            first = int(node_config["partition-id"])  # type: ignore[arg-type]
            step = int(node_config.get("num-partitions", num_clients))  # type: ignore[arg-type]
            if step < 1:
                raise ValueError(f"num-partitions={step} must be at least 1")
            ids = tuple(range(first, num_clients, step)) if step != num_clients else (first,)
    except KeyError:
        raise NodeError("the node has neither partition-id nor partition-ids in its node config") from None
    except ValueError as exc:
        raise NodeError(f"this node's partition settings are invalid: {exc}") from None
    outside = [pid for pid in ids if not 0 <= pid < num_clients]
    if outside:
        raise NodeError(f"this node hosts partition ids {outside}, outside 0..num-clients-1={num_clients - 1}")
    return ids


def entry_key(name: str, client_id: int) -> str:
    """The record of client `client_id` under `name` in a node's message: "metrics@3"."""
    return f"{name}@{client_id}"


def clients_record(ids) -> ConfigRecord:
    return ConfigRecord({"ids": [int(i) for i in ids]})


def clients_of(content: RecordDict) -> tuple[int, ...]:
    """The client ids a message names (its `clients` record)."""
    if CLIENTS not in content:
        raise NodeError("the message names no clients")
    return tuple(int(i) for i in content[CLIENTS]["ids"])


def requested(content: RecordDict, hosted: tuple[int, ...]) -> tuple[int, ...]:
    """The clients a message to this node is for; each must be one the node hosts."""
    ids = clients_of(content)
    foreign = sorted(set(ids) - set(hosted))
    if foreign:
        raise NodeError(f"the message is for clients {foreign}, which this node does not host")
    return ids


def failed_record(reason: str) -> ConfigRecord:
    return ConfigRecord({"reason": reason})


def entries(content: RecordDict, name: str) -> dict[int, object]:
    """Client id -> its record under `name`, for every client entry of that name in `content`.
    A key whose client part is not an integer is skipped (it is nobody's entry)."""
    out = {}
    prefix = name + "@"
    for key in content.keys():
        if key.startswith(prefix):
            try:
                out[int(key[len(prefix):])] = content[key]
            except ValueError:
                continue
    return out


class ClientState(MutableMapping):
    """Client `client_id`'s slice of a node's `context.state`: the same keys the client would use
    alone on its node, stored as "key@id" (`entry_key`), so clients on one node never share state."""

    def __init__(self, state: RecordDict, client_id: int):
        self._state, self._suffix = state, f"@{client_id}"

    def __getitem__(self, key: str):
        return self._state[key + self._suffix]

    def __setitem__(self, key: str, value) -> None:
        self._state[key + self._suffix] = value

    def __delitem__(self, key: str) -> None:
        del self._state[key + self._suffix]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key + self._suffix) in self._state

    def __iter__(self) -> Iterator[str]:
        return (k[: -len(self._suffix)] for k in list(self._state.keys()) if k.endswith(self._suffix))

    def __len__(self) -> int:
        return sum(1 for _ in self)
