"""The client side of secure aggregation: a state machine with no I/O.

Owns: the client's keys and secrets, the checks an honest client makes before answering,
and the masking of its encoded vector. Must not touch: transport, Flower, torch, files.

Transition table. The client is in one state at a time; `handle(request)` accepts only the
request listed for its state, answers with the listed reply and moves on. Anything else
(other type, other session, other recipient, a second copy of a request already answered)
raises ProtocolError. Any ProtocolError or RoundFailed is fatal: the client wipes its
secrets, moves to FAILED and refuses everything afterwards (h11 style: no recovery).
A bad or missing *vector* at MASKED_INPUT (or a vector with another request) is the
caller's mistake, not the server's: it raises ValueError and leaves the state as it was.

    state              accepts                   replies                   next state
    ADVERTISE_KEYS     AdvertiseKeysRequest      AdvertiseKeysReply        SHARE_KEYS
    SHARE_KEYS         ShareKeysRequest          ShareKeysReply            MASKED_INPUT
    MASKED_INPUT       MaskedInputRequest+vector MaskedInputReply          CONSISTENCY_CHECK if on,
                                                                           else UNMASK
    CONSISTENCY_CHECK  ConsistencyCheckRequest   ConsistencyCheckReply     UNMASK
    UNMASK             UnmaskRequest             UnmaskReply               DONE

What it reveals, and when (the bound is in `config`'s module doc and docs/secagg.md): at UNMASK,
for each neighbour j it masked with, either its share of j's self-mask seed (j listed as survivor)
or the pairwise seed it shares with j (j listed as dropped), never both, in one answer per session;
and only while at least m of the neighbours it masked with are listed as survivors.

Refusals an honest client makes (ProtocolError): parameters that differ from its own config or
fall below its `Pins` (fewer clients, fewer colluders tolerated, check off); keys or envelopes from
non-neighbours, or duplicated keys; a masked-input request with fewer than m envelopes; survivor
and drop-out lists that overlap, omit a neighbour it masked with, name a neighbour it did not mask
with, list itself as dropped, or leave fewer than m of its partners surviving; with the
consistency check on, lists with too few survivors or a thin stretch of the ring (the sum
bound's rule W, docs/secagg.md), lists different from the pair it signed, fewer than the committee's
quorum of valid signatures on that pair, or a surviving partner without a valid attestation that it
masked with exactly its listed neighbours; a k below c + 2 for the c its pins require; in roster mode, ids outside the roster or neighbours' keys not signed by
their enrolled identity keys. Too few neighbours' keys at SHARE_KEYS raises RoundFailed.

An envelope that fails to open or holds no field element is its sender's fault, not the server's:
the client keeps the pairwise mask with that sender but holds no share of its seed (as if the
sender's envelope had been lost), and the round goes on.

After MASKED_INPUT only the signing key, the held seed shares and the pairwise seeds with the
partners (needed if they turn out to have dropped) are kept; cipher key, mask key and self-mask
seed are wiped.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Mapping

import numpy as np

from fedkd.secagg import crypto, shamir
from fedkd.secagg.config import (
    Pins, SecAggConfig, committee, default_colluders, default_neighbors, min_survivors, quorum,
)
from fedkd.secagg.crypto import RandomBytes
from fedkd.secagg.graph import neighbour_rows, neighbours_of, thinnest_window
from fedkd.secagg.messages import (
    AdvertiseKeysReply, AdvertiseKeysRequest, ConsistencyCheckReply, ConsistencyCheckRequest,
    MaskedInputReply, MaskedInputRequest, ShareKeysReply, ShareKeysRequest, UnmaskReply, UnmaskRequest,
)
from fedkd.secagg.quantize import pack, ring_mask
from fedkd.secagg.stages import (
    ADVERTISE_KEYS, CONSISTENCY_CHECK, MASKED_INPUT, SHARE_KEYS, UNMASK, ProtocolError, RoundFailed,
)

DONE = "done"
FAILED = "failed"

# state -> the request it accepts
ACCEPTS: dict[str, type] = {
    ADVERTISE_KEYS: AdvertiseKeysRequest,
    SHARE_KEYS: ShareKeysRequest,
    MASKED_INPUT: MaskedInputRequest,
    CONSISTENCY_CHECK: ConsistencyCheckRequest,
    UNMASK: UnmaskRequest,
}

ENVELOPE_PLAINTEXT = shamir.SHARE_BYTES + crypto.SALT_BYTES  # one share of the sender's seed, its salt


def _check_ids(ids: object, known: frozenset[int], what: str) -> tuple[int, ...]:
    if not isinstance(ids, tuple) or list(ids) != sorted(set(ids)):
        raise ProtocolError(f"{what} must be a sorted tuple of distinct client ids")
    unknown = set(ids) - known
    if unknown:
        raise ProtocolError(f"{what} names clients outside the session: {sorted(unknown)[:5]}")
    return ids


class SecAggClient:
    """One client's side of one round (one session id)."""

    def __init__(
        self,
        client_id: int,
        config: SecAggConfig,
        session_id: bytes,
        random_bytes: RandomBytes = os.urandom,
        add_noise: Callable[[np.ndarray], np.ndarray] | None = None,
        pins: Pins | None = None,
        roster: Mapping[int, bytes] | None = None,
        identity_key: bytes | None = None,
    ) -> None:
        if not (isinstance(client_id, int) and 0 <= client_id <= crypto.MAX_ID):
            raise ValueError(f"client_id must be an int in 0..2^64-1, got {client_id!r}")
        self.client_id = client_id
        self.config = config
        self.session_id = crypto.check_session_id(session_id)
        self.pins = Pins() if pins is None else pins
        # Roster mode: enrolled clients' Ed25519 identity public keys, known out of band; every
        # neighbour's advertised keys must carry its identity signature, and only enrolled ids may
        # take part. identity_key: this client's own Ed25519 private key (32 bytes) that signs its keys.
        self._roster = None if roster is None else dict(roster)
        self._identity_key = identity_key
        self._random_bytes = random_bytes
        self._add_noise = add_noise  # quantize.FixedPoint.encode's noise hook
        self.state = ADVERTISE_KEYS
        # The round's state, filled in stage by stage; all of it is listed in to_state().
        self._digest = b""  # config digest agreed at set-up
        self._ids: tuple[int, ...] = ()  # sorted; a client's Shamir x coordinate is its index + 1
        self._dim = 0
        self._threshold = 0
        self._min_partners = 0  # m: the fewest live partners this client masks with
        self._colluders = 0  # c: colluders the session tolerates
        self._neighbours: frozenset[int] = frozenset()
        self._secrets: dict[str, bytes] = {}  # cipher, mask, signing private keys; self-mask seed
        self._cipher_pks: dict[int, bytes] = {}  # neighbours' public keys, as the server relayed them
        self._mask_pks: dict[int, bytes] = {}
        self._signing_pks: dict[int, bytes] = {}
        self._committee_pks: dict[int, bytes] = {}  # committee member -> signing key (for the quorum)
        self._open_keys: dict[int, bytes] = {}  # neighbour -> key of the envelope it sends here
        self._held: dict[int, int] = {}  # neighbour -> its seed share (valid envelopes only)
        self._salts: dict[int, bytes] = {}  # neighbour -> the salt of its share's commitment
        self._pair_seeds: dict[int, bytes] = {}  # partner -> seed of the mask shared with it
        self._masked_with: frozenset[int] = frozenset()  # neighbours whose envelopes arrived
        self._signed: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # (survivors, dropped) signed
        self._revealed: dict[int, str] = {}  # peer -> "seed" or "pair": never both for one peer

    # --- public ---------------------------------------------------------------------------

    def handle(self, request: object, vector: np.ndarray | None = None) -> object:
        """Answer the request for the current state; `vector` (float, shape (dim,)) is required
        with the MaskedInputRequest and refused with any other."""
        expected = ACCEPTS.get(self.state)
        if expected is None:
            raise ProtocolError(f"client {self.client_id} is {self.state}; got {type(request).__name__}")
        try:
            if type(request) is not expected:
                raise ProtocolError(f"client {self.client_id} expects {expected.__name__} at stage "
                                    f"{self.state!r}, got {type(request).__name__}")
            if (request.session_id != self.session_id or type(request.recipient) is not int
                    or request.recipient != self.client_id):
                raise ProtocolError(f"message for session {request.session_id!r} / client "
                                    f"{request.recipient}, this is {self.session_id!r} / {self.client_id}")
        except ProtocolError:
            self._fail()
            raise
        if (vector is not None) != (self.state == MASKED_INPUT):
            raise ValueError("a vector goes with the masked-input request and with nothing else")
        codes = self._encode(vector) if vector is not None else None  # ValueError: state unchanged
        try:
            if self.state == ADVERTISE_KEYS:
                return self._advertise_keys(request)
            if self.state == SHARE_KEYS:
                return self._share_keys(request)
            if self.state == MASKED_INPUT:
                return self._masked_input(request, codes)
            if self.state == CONSISTENCY_CHECK:
                return self._consistency_check(request)
            return self._unmask(request)
        except (ProtocolError, RoundFailed):
            self._fail()
            raise
        except (TypeError, ValueError, AttributeError, KeyError) as err:  # malformed fields of a request
            self._fail()
            raise ProtocolError(f"malformed {type(request).__name__}: {err!r}") from err

    def to_state(self) -> dict[str, object]:
        """Everything the client remembers between stages, as the plain values messages use
        (int, str, bytes, tuples, dicts with int or str keys), for transports that do not keep
        this object alive between messages (a Flower ClientApp can keep it in context.state).
        It holds private keys: store it only where the client's own secrets may live."""
        return {
            "client_id": self.client_id, "session_id": self.session_id, "state": self.state,
            "config_digest": self._digest, "ids": self._ids, "dim": self._dim, "threshold": self._threshold,
            "min_partners": self._min_partners, "colluders": self._colluders,
            "neighbours": tuple(sorted(self._neighbours)), "secrets": dict(self._secrets),
            "cipher_pks": dict(self._cipher_pks), "mask_pks": dict(self._mask_pks),
            "signing_pks": dict(self._signing_pks), "open_keys": dict(self._open_keys),
            "committee_pks": dict(self._committee_pks),
            "held": {j: shamir.encode_share(y) for j, y in self._held.items()},
            "salts": dict(self._salts),
            "pair_seeds": dict(self._pair_seeds),
            "masked_with": tuple(sorted(self._masked_with)), "signed": self._signed,
            "revealed": dict(self._revealed),
        }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, object],
        config: SecAggConfig,
        random_bytes: RandomBytes = os.urandom,
        add_noise: Callable[[np.ndarray], np.ndarray] | None = None,
        pins: Pins | None = None,
        roster: Mapping[int, bytes] | None = None,
        identity_key: bytes | None = None,
    ) -> SecAggClient:
        """Rebuild a client from `to_state()`; refuses a state made under another config. The roster
        and identity key are not in the state: pass them again."""
        client = cls(state["client_id"], config, state["session_id"], random_bytes, add_noise, pins, roster,
                     identity_key)
        if state["state"] not in (*ACCEPTS, DONE, FAILED):
            raise ValueError(f"unknown client state {state['state']!r}")
        ids = tuple(state["ids"])
        if ids and config.digest(client.session_id, ids, state["dim"]) != state["config_digest"]:
            raise ValueError("the saved client state was made under a different config")
        client.state = state["state"]
        client._digest, client._ids = state["config_digest"], ids
        client._dim, client._threshold = state["dim"], state["threshold"]
        client._min_partners, client._colluders = state["min_partners"], state["colluders"]
        client._neighbours = frozenset(state["neighbours"])
        client._secrets = dict(state["secrets"])
        client._cipher_pks, client._mask_pks = dict(state["cipher_pks"]), dict(state["mask_pks"])
        client._signing_pks, client._open_keys = dict(state["signing_pks"]), dict(state["open_keys"])
        client._committee_pks = dict(state["committee_pks"])
        client._held = {j: shamir.decode_share(v) for j, v in state["held"].items()}
        client._salts = dict(state["salts"])
        client._pair_seeds = dict(state["pair_seeds"])
        client._masked_with = frozenset(state["masked_with"])
        client._signed = (tuple(state["signed"][0]), tuple(state["signed"][1]))
        client._revealed = dict(state["revealed"])
        return client

    # --- stages ---------------------------------------------------------------------------

    def _advertise_keys(self, req: AdvertiseKeysRequest) -> AdvertiseKeysReply:
        ids = req.client_ids
        if not isinstance(ids, tuple) or list(ids) != sorted(set(ids)) or self.client_id not in ids:
            raise ProtocolError("client_ids must be a sorted tuple of distinct ids including this client")
        if any(not (isinstance(i, int) and 0 <= i <= crypto.MAX_ID) for i in ids):
            raise ProtocolError("client ids must be ints in 0..2^64-1")
        try:
            k, t, c, m = self.config.session(len(ids), req.dim)
            digest = self.config.digest(self.session_id, ids, req.dim)
        except ValueError as err:
            raise ProtocolError(f"session parameters do not fit this client's config: {err}") from err
        if (k, t) != (req.neighbors, req.threshold) or digest != req.config_digest:
            raise ProtocolError(f"server runs k={req.neighbors}, t={req.threshold} and digest "
                                f"{req.config_digest.hex()[:16]}; this client has k={k}, t={t}, "
                                f"digest {digest.hex()[:16]}")
        self._check_pins(len(ids), k, c)
        if self._roster is not None and not set(ids) <= set(self._roster):
            raise ProtocolError(f"clients outside the roster: {sorted(set(ids) - set(self._roster))[:5]}")
        self._digest, self._ids, self._dim, self._threshold, self._min_partners = digest, ids, req.dim, t, m
        self._colluders = c
        self._neighbours = neighbours_of(self.session_id, ids, k, self.client_id)
        rb = self._random_bytes
        self._secrets["cipher"], cipher_pk = crypto.x25519_keypair(rb)
        self._secrets["mask"], mask_pk = crypto.x25519_keypair(rb)
        signing_pk = b""
        if self.config.consistency_check:
            self._secrets["signing"], signing_pk = crypto.ed25519_keypair(rb)
        vouch = b""
        if self._identity_key is not None:
            statement = crypto.identity_statement(self.session_id, self.client_id, cipher_pk, mask_pk, signing_pk)
            vouch = crypto.sign(self._identity_key, statement)
        self.state = SHARE_KEYS
        return AdvertiseKeysReply(self.session_id, self.client_id, cipher_pk, mask_pk, signing_pk, vouch)

    def _share_keys(self, req: ShareKeysRequest) -> ShareKeysReply:
        peers = set(req.cipher_public_keys)
        sig_keys = req.signing_public_keys
        if set(req.mask_public_keys) != peers or (
            set(sig_keys) != peers if self.config.consistency_check else sig_keys
        ):
            raise ProtocolError("the key tables name different clients")
        if not peers <= self._neighbours:
            raise ProtocolError(f"keys of non-neighbours {sorted(peers - self._neighbours)[:5]}")
        keys = [*req.cipher_public_keys.values(), *req.mask_public_keys.values(), *sig_keys.values()]
        if any(not isinstance(key, bytes) or len(key) != crypto.KEY_BYTES for key in keys):
            raise ProtocolError("public keys must be 32 bytes")
        if len(set(keys)) != len(keys):
            raise ProtocolError("two advertised public keys are identical")
        if self._roster is not None:
            self._check_identities(req)
        committee_pks = self._committee_keys(req.committee_keys)
        need = max(self._threshold, self._min_partners)
        if len(peers) < need:
            raise RoundFailed(SHARE_KEYS, need, len(peers),
                              f"client {self.client_id} received keys of too few neighbours")
        self._cipher_pks = dict(req.cipher_public_keys)
        self._mask_pks = dict(req.mask_public_keys)
        self._signing_pks = dict(sig_keys)
        self._committee_pks = committee_pks
        rb = self._random_bytes
        seed = self._secrets["seed"] = rb(crypto.KEY_BYTES)  # b_i, the self-mask seed
        holders = sorted(peers)
        xs = [bisect.bisect_left(self._ids, j) + 1 for j in holders]
        seed_shares = shamir.split(seed, self._threshold, xs, rb)
        cipher = crypto.x25519_private(self._secrets["cipher"])
        envelopes, commitments, self._open_keys = {}, {}, {}
        for j, s in zip(holders, seed_shares):
            key, self._open_keys[j] = crypto.share_keys(cipher, self._cipher_pks[j], self.session_id, self.client_id, j)
            share, salt = shamir.encode_share(s), rb(crypto.SALT_BYTES)
            commitments[j] = crypto.share_commitment(self.session_id, self.client_id, j, share, salt)
            envelopes[j] = crypto.seal(key, rb(crypto.NONCE_BYTES), share + salt, self.session_id, self.client_id, j)
        self.state = MASKED_INPUT
        commitment = crypto.seed_commitment(self.session_id, self.client_id, seed)
        return ShareKeysReply(self.session_id, self.client_id, envelopes, commitment, commitments)

    def _encode(self, vector: np.ndarray) -> tuple[np.ndarray, int]:
        x = np.asarray(vector)
        if x.shape != (self._dim,):
            raise ValueError(f"vector must have shape ({self._dim},), got {x.shape}")
        rb = self._random_bytes if self.config.stochastic_rounding else None
        return self.config.fixed_point.encode(x, random_bytes=rb, add_noise=self._add_noise)

    def _masked_input(self, req: MaskedInputRequest, encoded: tuple[np.ndarray, int]) -> MaskedInputReply:
        senders = set(req.envelopes)
        if not senders <= set(self._cipher_pks):
            raise ProtocolError(f"envelopes from clients whose keys this client never got: "
                                f"{sorted(senders - set(self._cipher_pks))[:5]}")
        if len(senders) < self._min_partners:  # an honest server excludes such a client beforehand
            raise ProtocolError(f"client {self.client_id} got envelopes from {len(senders)} neighbours; it masks "
                                f"with no fewer than m={self._min_partners}")
        if any(not isinstance(e, bytes) for e in req.envelopes.values()):
            raise ProtocolError("envelopes must be bytes")
        held, salts = {}, {}
        for j in sorted(senders):
            opened = self._open_envelope(j, req.envelopes[j])
            if opened is not None:
                held[j], salts[j] = opened
        self._held, self._salts = held, salts
        self._masked_with = frozenset(senders)

        codes, clipped = encoded
        dtype = codes.dtype
        count = self.config.fixed_point.encode_count(clipped, self._dim)
        y = np.empty(self._dim + count.size, dtype=dtype)  # (dim + slots,) codes, then the clipped count
        y[: self._dim] = codes
        y[self._dim :] = count
        private = crypto.x25519_private(self._secrets["mask"])
        masks = [(self._secrets["seed"], +1)]  # the self mask
        for j in sorted(senders):  # the lower id adds a pair's mask, the higher subtracts it
            seed = self._pair_seeds[j] = crypto.pair_mask_seed(private, self._mask_pks[j], self.session_id,
                                                               self.client_id, j)
            masks.append((seed, +1 if self.client_id < j else -1))
        crypto.apply_masks(y, masks)
        y &= dtype.type(ring_mask(self.config.bit_width))
        for name in ("cipher", "mask", "seed"):  # only the signing key is needed from here on
            self._secrets.pop(name, None)
        self._open_keys, self._cipher_pks, self._mask_pks = {}, {}, {}
        attestation = b""
        if self.config.consistency_check:  # "I masked with exactly these": see _check_attestations
            statement = crypto.partners_statement(self.session_id, self.client_id, self._masked_with)
            attestation = crypto.sign(self._secrets["signing"], statement)
        self.state = CONSISTENCY_CHECK if self.config.consistency_check else UNMASK
        return MaskedInputReply(self.session_id, self.client_id, pack(y, self.config.bit_width), attestation)

    def _open_envelope(self, sender: int, envelope: bytes) -> tuple[int, bytes] | None:
        """(seed share, salt) in `sender`'s envelope, or None when the envelope is spoilt (its sender's
        doing, or the server's: either way this client just holds no share of that sender)."""
        try:
            plaintext = crypto.open_sealed(self._open_keys[sender], envelope, self.session_id, sender, self.client_id)
            if len(plaintext) != ENVELOPE_PLAINTEXT:
                return None
            return shamir.decode_share(plaintext[: shamir.SHARE_BYTES]), plaintext[shamir.SHARE_BYTES :]
        except (ProtocolError, ValueError):
            return None

    def _consistency_check(self, req: ConsistencyCheckRequest) -> ConsistencyCheckReply:
        survivors, dropped = self._check_lists(req.survivors, req.dropped)
        self._signed = (survivors, dropped)
        statement = crypto.survivors_statement(self.session_id, survivors, dropped)
        self.state = UNMASK
        return ConsistencyCheckReply(self.session_id, self.client_id, crypto.sign(self._secrets["signing"], statement))

    def _unmask(self, req: UnmaskRequest) -> UnmaskReply:
        survivors, dropped = self._check_lists(req.survivors, req.dropped)
        if self.config.consistency_check:
            self._check_quorum(survivors, dropped, req.signatures)
            self._check_attestations(survivors, dropped, req.attestations)
        elif req.signatures or req.attestations:
            raise ProtocolError("signatures sent but the consistency check is off")
        seed_shares, pair_seeds = {}, {}
        for j in sorted(self._masked_with):
            kind = "seed" if j in survivors else "pair"
            if self._revealed.setdefault(j, kind) != kind:  # unreachable: one answer per session
                raise ProtocolError(f"refusing to reveal both secrets of client {j}")
            if kind == "pair":
                pair_seeds[j] = self._pair_seeds[j]
            elif j in self._held:  # no share of a neighbour whose envelope was spoilt
                seed_shares[j] = shamir.encode_share(self._held[j]) + self._salts[j]
        self._wipe()
        self.state = DONE
        return UnmaskReply(self.session_id, self.client_id, seed_shares, pair_seeds)

    # --- checks and clean-up --------------------------------------------------------------

    def _check_pins(self, num_clients: int, k: int, colluders: int) -> None:
        pins = self.pins
        if num_clients < pins.min_clients:
            raise ProtocolError(f"session of {num_clients} clients; this node requires at least {pins.min_clients}")
        # the node's own figure: from n and the k it would choose itself, never from the server's k
        own = default_colluders(num_clients, default_neighbors(num_clients))
        want = own if pins.max_colluders is None else pins.max_colluders
        if want and k < want + 2 and k != num_clients - 1:
            raise ProtocolError(f"session has k={k} neighbours; tolerating the {want} colluders this node "
                                f"requires takes k >= {want + 2}")
        if colluders < want:
            raise ProtocolError(f"session tolerates {colluders} colluders; this node requires {want}")
        if pins.require_check and not self.config.consistency_check:
            raise ProtocolError("session runs without the consistency check; this node requires it")

    def _committee_keys(self, relayed: object) -> dict[int, bytes]:
        """Committee member -> signing key, from the relayed advertised keys: members only, the same keys
        as relayed for a member that is also a neighbour, and in roster mode vouched for by the member's
        enrolled identity key."""
        if not isinstance(relayed, dict):
            raise ProtocolError("committee keys must be a dict")
        if not self.config.consistency_check:
            if relayed:
                raise ProtocolError("committee keys sent but the consistency check is off")
            return {}
        members = set(committee(self._ids, self._colluders))
        if not set(relayed) <= members - {self.client_id}:
            raise ProtocolError(f"committee keys of non-members: {sorted(set(relayed) - members)[:5]}")
        out = {}
        for j, blob in relayed.items():
            if not (isinstance(blob, bytes) and len(blob) in (3 * crypto.KEY_BYTES, 3 * crypto.KEY_BYTES + 64)):
                raise ProtocolError(f"committee keys of client {j} must be 96 or 160 bytes")
            cipher, mask, signing = (blob[i: i + crypto.KEY_BYTES] for i in range(0, 96, 32))
            if j in self._signing_pks and self._signing_pks[j] != signing:
                raise ProtocolError(f"client {j}'s signing key differs between its neighbour and committee entries")
            if self._roster is not None and not crypto.verify(
                    self._roster[j], blob[96:], crypto.identity_statement(self.session_id, j, cipher, mask, signing)):
                raise ProtocolError(f"the committee keys relayed for client {j} are not signed by its enrolled "
                                    f"identity key")
            out[j] = signing
        if self.client_id in members:
            out[self.client_id] = crypto.ed25519_public(self._secrets["signing"])
        return out

    def _check_identities(self, req: ShareKeysRequest) -> None:
        """Roster mode: each neighbour's keys must be vouched for by its enrolled identity key."""
        vouches = req.identity_signatures
        if not isinstance(vouches, dict):
            raise ProtocolError("identity signatures must be a dict")
        for j in sorted(req.cipher_public_keys):
            statement = crypto.identity_statement(self.session_id, j, req.cipher_public_keys[j],
                                                  req.mask_public_keys[j], req.signing_public_keys.get(j, b""))
            vouch = vouches.get(j)
            if not (isinstance(vouch, bytes) and crypto.verify(self._roster[j], vouch, statement)):
                raise ProtocolError(f"the keys relayed for client {j} are not signed by its enrolled identity "
                                    f"key (substituted keys, or a client outside the roster)")

    def _check_lists(self, survivors: object, dropped: object) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The survivor and drop-out lists, checked against what this client saw."""
        known = frozenset(self._ids)
        survivors = _check_ids(survivors, known, "survivors")
        dropped = _check_ids(dropped, known, "dropped")
        both = set(survivors) & set(dropped)
        if both:
            raise ProtocolError(f"server asks for both secrets of clients {sorted(both)[:5]}")
        if self.client_id in dropped:
            raise ProtocolError(f"client {self.client_id} sent masked input but is listed as dropped")
        if self.client_id not in survivors:
            raise ProtocolError(f"client {self.client_id} sent masked input but is not listed as a survivor")
        listed = (set(survivors) | set(dropped)) & self._neighbours
        if listed != self._masked_with:
            raise ProtocolError(
                f"survivors and drop-outs do not match this client's neighbourhood: masked with "
                f"{sorted(self._masked_with)[:5]}..., listed {sorted(listed)[:5]}..."
            )
        alive = len(set(survivors) & self._masked_with)
        if alive < self._min_partners:
            raise ProtocolError(f"only {alive} of client {self.client_id}'s partners listed as survivors; it "
                                f"reveals pairwise seeds only while at least m={self._min_partners} survive")
        if self.config.consistency_check:
            self._check_spread(survivors)
        return survivors, dropped

    def _check_spread(self, survivors: tuple[int, ...]) -> None:
        """The sum bound's list rules: more than (n + c) / 2 survivors, and more than c of them in
        every k/2 consecutive ring positions (so the honest survivors are connected in the graph)."""
        n, c, k = len(self._ids), self._colluders, len(self._neighbours)
        fewest = min_survivors(n, c)
        if len(survivors) < fewest:
            raise ProtocolError(f"only {len(survivors)} of {n} clients listed as survivors; client {self.client_id} "
                                f"reveals only under a list of at least {fewest} (more than (n + c) / 2, c = {c})")
        thinnest = thinnest_window(self.session_id, self._ids, k, survivors)
        if thinnest <= c:
            raise ProtocolError(f"a stretch of {k // 2} consecutive ring positions holds only {thinnest} listed "
                                f"survivors; client {self.client_id} requires more than c = {c} in each, so that "
                                f"no sum of a few honest clients can be cut out")

    def _check_quorum(self, survivors: tuple[int, ...], dropped: tuple[int, ...], signatures: object) -> None:
        """The pair must be the one this client signed, with valid signatures on it from a quorum of
        the session's committee: so at most one pair is ever unmasked under (docs/secagg.md)."""
        if (survivors, dropped) != self._signed:
            raise ProtocolError("the survivor and drop-out lists: the pair differs from the one this client signed")
        if not isinstance(signatures, dict):
            raise ProtocolError("signatures must be a dict")
        members = committee(self._ids, self._colluders)
        strangers = set(signatures) - (set(members) & set(survivors))
        if strangers:
            raise ProtocolError(f"signatures from clients that are not surviving committee members: "
                                f"{sorted(strangers)[:5]}")
        need = quorum(len(members), self._colluders)
        if len(signatures) < need:
            raise ProtocolError(f"client {self.client_id} got {len(signatures)} committee signatures on the lists; "
                                f"it needs {need} of the {len(members)}")
        statement = crypto.survivors_statement(self.session_id, survivors, dropped)
        for j, signature in signatures.items():
            key = self._committee_pks.get(j)
            if not (key is not None and isinstance(signature, bytes) and crypto.verify(key, signature, statement)):
                raise ProtocolError(f"client {j}'s signature on the survivor and drop-out lists does not verify")

    def _check_attestations(self, survivors: tuple[int, ...], dropped: tuple[int, ...], attestations: object) -> None:
        """Each surviving partner j whose seed share this client is to reveal must have signed, with its
        masked input, that it masked with exactly its neighbours on these lists."""
        if not isinstance(attestations, dict):
            raise ProtocolError("attestations must be a dict")
        owners = sorted(self._masked_with & set(survivors))
        listed = set(survivors) | set(dropped)
        rows = neighbour_rows(self.session_id, self._ids, len(self._neighbours), owners)
        for j in owners:
            statement = crypto.partners_statement(self.session_id, j, rows[j] & listed)
            attestation = attestations.get(j)
            if not (isinstance(attestation, bytes) and crypto.verify(self._signing_pks[j], attestation, statement)):
                raise ProtocolError(f"client {j} has not signed that it masked with exactly its listed neighbours; "
                                    f"client {self.client_id} reveals no share of its seed")

    def _wipe(self) -> None:
        self._secrets.clear()
        self._open_keys = {}
        self._held = {}
        self._salts = {}
        self._pair_seeds = {}

    def _fail(self) -> None:
        self._wipe()
        self.state = FAILED
