"""The user-facing error types of fedkd, and the one way every entry point reports them.

Owns: one exception type per kind of user mistake (a bad setting, bad data, an unusable output
folder, a command line that cannot work), the rules that several entry points share (at least
2 clients), and `report`, which turns any of them into the one-line `fedkd: error: ...` and exit
code 2. Must not touch: anything else; every module may import this one, it imports nothing of
fedkd's.
"""

from __future__ import annotations

import sys

MIN_CLIENTS = 2  # fedkd's smallest federation: a sum of one client's vector would be that vector


class UserError(ValueError):
    """A mistake in what the user asked for: entry points print it as one line and exit with 2."""


class ConfigError(UserError):
    """A run setting is out of range; the message names the key, the value and what is allowed."""


class DataError(UserError):
    """Bad data request: the message names the bad value and the valid choices or range."""


class OutputError(UserError):
    """The output folder cannot be used; the message names it and says why, in one line."""


class UsageError(UserError):
    """The command line cannot work as given; the message is one line."""


class TooFewClientsError(ConfigError, DataError, UsageError):
    """Fewer than `MIN_CLIENTS` clients. One rule with one type wherever it is checked (the run
    config, the data splits, `fedkd deploy N`, `fedkd audit --clients`); it is each of the kinds
    above, so a caller that catches any of them sees it."""


def require_clients(option: str, value: int) -> None:
    """Raise `TooFewClientsError` naming `option` (as the user wrote it) when `value` < 2."""
    if value < MIN_CLIENTS:
        named = f"{option} {value}" if option.startswith("-") else f"{option}={value}"  # as typed
        raise TooFewClientsError(f"{named} is too small; it must be >= {MIN_CLIENTS} "
                                 f"(federated distillation needs at least {MIN_CLIENTS} clients)")


def report(exc: BaseException, prog: str = "fedkd") -> int:
    """Print `exc` as the one-line error of `prog` on stderr and return exit code 2."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2
