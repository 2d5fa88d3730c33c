"""The argument parser class of the `fedkd` command: argparse's, with one-line errors for words it
does not know, naming the closest option of the subcommand they were typed after.

Owns: what `fedkd run --rouds 3` says (`fedkd run: error: unknown option --rouds; did you mean
--rounds?`, exit 2) instead of argparse's top-level usage and "unrecognized arguments".
Must not touch: which options exist (`fedkd.cli` and the subcommands' modules add them).
"""

from __future__ import annotations

import argparse
import difflib
from typing import Sequence


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subparsers are Parsers too (argparse makes them of the parent's
    class), and whose `parse_args` reports words no parser took through the subcommand that got them."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            leaf = _leaf(self, parsed)
            leaf.exit(2, f"{leaf.prog}: error: {unknown_text(extras, _options(leaf))}\n")
        return parsed


def unknown_text(extras: Sequence[str], options: Sequence[str]) -> str:
    """One line about the first word that no option took, with the closest known option if any."""
    typed = next((word for word in extras if word.startswith("-")), None)
    if typed is None:
        return f"unexpected argument {extras[0]!r} (options start with --)"
    name = typed.split("=", 1)[0]
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if close:
        return f"unknown option {name}; did you mean {close[0]}?"
    return f"unknown option {name}; --help lists the options"


def _leaf(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost subcommand's parser that `parsed` came through (`fedkd bench round`: round's)."""
    for action in parser._actions:  # argparse keeps its actions there; it has no public accessor
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(parsed, action.dest, None)
            if chosen in action.choices:
                return _leaf(action.choices[chosen], parsed)
    return parser


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [name for action in parser._actions for name in action.option_strings if name.startswith("--")]
