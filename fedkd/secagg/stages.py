"""Stage names of the secure-aggregation round and the two errors the protocol raises.

Owns: the stage constants (plain strings, so they travel in messages and logs) and the
exception classes. Must not import anything beyond the standard library.
"""

from __future__ import annotations

ADVERTISE_KEYS = "advertise_keys"
SHARE_KEYS = "share_keys"
MASKED_INPUT = "masked_input"
CONSISTENCY_CHECK = "consistency_check"
UNMASK = "unmask"

# In protocol order; CONSISTENCY_CHECK is skipped when the config turns it off.
STAGES: tuple[str, ...] = (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, CONSISTENCY_CHECK, UNMASK)


def stages_for(consistency_check: bool) -> tuple[str, ...]:
    """The stages a round actually runs through."""
    if consistency_check:
        return STAGES
    return tuple(s for s in STAGES if s != CONSISTENCY_CHECK)


class ProtocolError(Exception):
    """A message that breaks the protocol: wrong session, wrong stage, unknown or repeated
    sender, malformed content, or a server request an honest client must refuse.

    A client that raises it has wiped its secrets and will refuse every later message.
    The server raises it for the offending message only; its own state is unchanged,
    so the caller may drop that message and carry on.
    """


class RoundFailed(Exception):
    """Too many clients dropped for the round to finish.

    `stage` is the stage at which the shortfall was found, `needed` how many
    participants (neighbours, or shares) were required, `available` how many were there.
    """

    def __init__(self, stage: str, needed: int, available: int, detail: str) -> None:
        self.stage = stage
        self.needed = needed
        self.available = available
        self.missing = needed - available
        super().__init__(
            f"secure aggregation failed at stage {stage!r}: {detail} "
            f"(needed {needed}, had {available}, {self.missing} missing)"
        )
