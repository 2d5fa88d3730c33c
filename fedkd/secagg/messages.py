"""The messages of the secure-aggregation protocol: frozen dataclasses of plain values.

Owns: one class per (stage, direction), the registry MESSAGE_TYPES a codec uses to look
classes up by name, and `wire_size`, the payload size used for byte accounting.
Must not touch: protocol logic, serialisation formats, I/O.

Field types are limited to int, float, str, bytes, bool, numpy arrays, and tuples or dicts
(int or str keys) of those, so a codec can map each message to a Flower RecordDict without
pickle. Every message names its session and its sender (client -> server, `*Reply`) or
recipient (server -> client, `*Request`). Server-to-client requests are what the server emits;
client replies are what clients emit. Dicts are keyed by client id.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from fedkd.secagg.stages import ADVERTISE_KEYS, CONSISTENCY_CHECK, MASKED_INPUT, SHARE_KEYS, UNMASK


@dataclass(frozen=True)
class AdvertiseKeysRequest:
    """Opens the round: who takes part, the vector length and the agreed parameters."""

    session_id: bytes
    recipient: int
    client_ids: tuple[int, ...]  # sorted; the neighbour graph and share x coordinates come from it
    dim: int
    neighbors: int
    threshold: int
    config_digest: bytes  # SecAggConfig.digest(); the client refuses to run under other parameters


@dataclass(frozen=True)
class AdvertiseKeysReply:
    session_id: bytes
    sender: int
    cipher_public_key: bytes  # X25519, for the share envelopes
    mask_public_key: bytes  # X25519, for pairwise mask seeds
    signing_public_key: bytes  # Ed25519; b"" when the consistency check is off
    identity_signature: bytes  # Ed25519 by the client's enrolled identity key over the three keys; b"": none


@dataclass(frozen=True)
class ShareKeysRequest:
    """The public keys of the recipient's neighbours that advertised (recipient not included)."""

    session_id: bytes
    recipient: int
    cipher_public_keys: dict[int, bytes]
    mask_public_keys: dict[int, bytes]
    signing_public_keys: dict[int, bytes]
    identity_signatures: dict[int, bytes]  # each neighbour's identity_signature, relayed as received
    # committee member (config.committee) that advertised -> its advertised keys as relayed: cipher,
    # mask and signing public keys, then its identity signature (32 + 32 + 32 + 0 or 64 bytes); the
    # recipient checks the quorum's signatures with them. Empty when the check is off.
    committee_keys: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class ShareKeysReply:
    session_id: bytes
    sender: int
    envelopes: dict[int, bytes]  # recipient -> encrypted (share of the sender's self-mask seed, salt)
    seed_commitment: bytes  # crypto.seed_commitment(): lets the server check the seed it rebuilds
    share_commitments: dict[int, bytes]  # recipient -> crypto.share_commitment() of the share sealed to it


@dataclass(frozen=True)
class MaskedInputRequest:
    session_id: bytes
    recipient: int
    envelopes: dict[int, bytes]  # sender -> the envelope that sender sealed for the recipient


@dataclass(frozen=True)
class MaskedInputReply:
    session_id: bytes
    sender: int
    masked: bytes  # dim codes + FixedPoint.count_slots(dim) clipped-count digits, b bits each, packed
    # Ed25519 over crypto.partners_statement(session, sender, the neighbours it masked with); b"" when
    # the check is off. A neighbour reveals its share of the sender's seed only if this names exactly
    # the sender's neighbours on the list it is unmasking under.
    attestation: bytes = b""


@dataclass(frozen=True)
class ConsistencyCheckRequest:
    session_id: bytes
    recipient: int
    survivors: tuple[int, ...]  # clients whose masked input the server holds, sorted
    dropped: tuple[int, ...]  # shared keys but sent no masked input, sorted


@dataclass(frozen=True)
class ConsistencyCheckReply:
    session_id: bytes
    sender: int
    signature: bytes  # Ed25519 over crypto.survivors_statement(session_id, survivors, dropped)


@dataclass(frozen=True)
class UnmaskRequest:
    session_id: bytes
    recipient: int
    survivors: tuple[int, ...]  # sent masked input: reveal their self-mask seed shares
    dropped: tuple[int, ...]  # shared keys but sent no masked input: reveal the pairwise seed with them
    signatures: dict[int, bytes]  # the committee's signatures on the two lists; empty when the check is off
    # surviving partner -> its MaskedInputReply.attestation; empty when the check is off
    attestations: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class UnmaskReply:
    session_id: bytes
    sender: int
    seed_shares: dict[int, bytes]  # survivor -> share of its self-mask seed (33 bytes) and its salt (16)
    pair_seeds: dict[int, bytes]  # dropped partner -> the 32-byte seed of the mask shared with it


Message = (
    AdvertiseKeysRequest | AdvertiseKeysReply | ShareKeysRequest | ShareKeysReply
    | MaskedInputRequest | MaskedInputReply | ConsistencyCheckRequest | ConsistencyCheckReply
    | UnmaskRequest | UnmaskReply
)

MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        AdvertiseKeysRequest, AdvertiseKeysReply, ShareKeysRequest, ShareKeysReply,
        MaskedInputRequest, MaskedInputReply, ConsistencyCheckRequest, ConsistencyCheckReply,
        UnmaskRequest, UnmaskReply,
    )
}

# stage -> (what the server sends, what the client answers)
STAGE_MESSAGES: dict[str, tuple[type, type]] = {
    ADVERTISE_KEYS: (AdvertiseKeysRequest, AdvertiseKeysReply),
    SHARE_KEYS: (ShareKeysRequest, ShareKeysReply),
    MASKED_INPUT: (MaskedInputRequest, MaskedInputReply),
    CONSISTENCY_CHECK: (ConsistencyCheckRequest, ConsistencyCheckReply),
    UNMASK: (UnmaskRequest, UnmaskReply),
}


def _size(value: object) -> int:
    if isinstance(value, (bytes, str)):
        return len(value)
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (bool, int, float)):
        return 8
    if isinstance(value, tuple):
        return sum(_size(v) for v in value)
    if isinstance(value, dict):
        return sum(_size(k) + _size(v) for k, v in value.items())
    raise TypeError(f"unsupported message field type {type(value).__name__}")


def wire_size(message: object) -> int:
    """Payload bytes of a message: bytes and arrays at their length, 8 per number or key.
    Excludes a codec's own framing (names, headers)."""
    return sum(_size(getattr(message, f.name)) for f in fields(message))
