"""The server side of secure aggregation: a state machine with no I/O.

Owns: who is still in the round, relaying keys and envelopes between neighbours, the running
sum of masked inputs (folded in as each arrives: O(dim) memory, never n vectors), deciding
whether drop-outs can still be survived, and rebuilding the masks that do not cancel.
Must not touch: transport, Flower, torch, files, weighting or averaging of the sum.

Transition table. `start()` emits the first requests. Then, per stage, the caller feeds each
reply to `receive(reply)` and closes the stage with `advance()` (or `finish()` at UNMASK),
which returns the requests for the next stage, addressed by client id. `step(replies)` is
`receive` on each then `advance`.

    stage              receives                 advance() sends            to
    ADVERTISE_KEYS     AdvertiseKeysReply       ShareKeysRequest           clients kept (*)
    SHARE_KEYS         ShareKeysReply           MaskedInputRequest         clients kept (*)
    MASKED_INPUT       MaskedInputReply         ConsistencyCheckRequest    survivors, if check on
                                                UnmaskRequest              survivors, if check off
    CONSISTENCY_CHECK  ConsistencyCheckReply    UnmaskRequest              signers
    UNMASK             UnmaskReply              finish() -> SecAggResult

(*) Before masks exist, a client left with fewer than max(t, m) live neighbours cannot have its
seed held safely or mask with enough partners, so it is excluded (recorded as dropped at that
stage), repeatedly until every remaining client has that many. From MASKED_INPUT on, masks are
committed: if a survivor's self-mask seed can no longer be rebuilt from t shares, or a survivor
that masked with a drop-out stops answering (only it can reveal that pairwise seed), the round
raises RoundFailed.

Unmasking: for each survivor, every seed share its neighbours reveal is checked on its own against
the commitment the survivor sent for that holder at SHARE_KEYS (before any share was revealed); bad
shares are dropped, the seed is rebuilt from the first t good ones and checked against the
survivor's seed commitment. So malicious holders cannot sink the round while t honest shares are
there, and the server interpolates once per seed. For each pair (survivor, drop-out) the
survivor reveals the pairwise seed itself. The decoded sum is then range-checked: every coordinate
of the integer sum must be at most count * max_code and the clipped count at most count * dim,
else the round fails (a survivor sent a masked input or a pairwise seed that does not add up).

`receive` raises ProtocolError for a reply of the wrong type or session, from a client that
was not asked in this stage, a repeat (replay), or with bad content (a masked input of the wrong
length, or with bits set past its last b-bit value); the message names the client, and the
server's state is left untouched, so the caller may log and drop that one message and carry on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedkd.secagg import crypto, shamir
from fedkd.secagg.config import SecAggConfig, committee, min_survivors, quorum
from fedkd.secagg.graph import neighbour_graph, thinnest_window
from fedkd.secagg.messages import (
    STAGE_MESSAGES, AdvertiseKeysRequest, ConsistencyCheckRequest, MaskedInputRequest, ShareKeysRequest,
    UnmaskRequest, wire_size,
)
from fedkd.secagg.quantize import packed_size, ring_dtype, ring_mask, unpack
from fedkd.secagg.stages import (
    ADVERTISE_KEYS, CONSISTENCY_CHECK, MASKED_INPUT, SHARE_KEYS, UNMASK, ProtocolError, RoundFailed,
    stages_for,
)

DONE, FAILED = "done", "failed"  # terminal values of SecAggServer.stage
ENVELOPE_BYTES = crypto.NONCE_BYTES + shamir.SHARE_BYTES + crypto.SALT_BYTES + 16  # nonce, share, salt, GCM tag
REVEALED_SHARE_BYTES = shamir.SHARE_BYTES + crypto.SALT_BYTES  # a share at unmask, with its salt


@dataclass(frozen=True)
class SecAggResult:
    """What the server learns: the sum of the survivors' vectors and how many they were.

    sum: (dim,) float64, decoded sum of the survivors' (clipped) vectors.
    integer_sum: (dim,) the same sum in the ring, before decoding.
    survivors: clients whose inputs are in the sum (they sent masked input; some may have
        stopped answering afterwards and still be counted).
    dropped: stage -> clients that stopped (or were excluded) at that stage.
    clipped: total number of clipped entries over all survivors (summed under the masks).
    bytes_in: stage -> payload bytes received (messages.wire_size).
    seconds_per_stage: stage -> server compute seconds.
    """

    sum: np.ndarray
    integer_sum: np.ndarray
    count: int
    survivors: tuple[int, ...]
    dropped: dict[str, tuple[int, ...]]
    clipped: int
    bytes_in: dict[str, int] = field(default_factory=dict)
    seconds_per_stage: dict[str, float] = field(default_factory=dict)


# A fixed scalar for checking advertised keys: X25519 with a low-order point gives the all-zero
# secret, which `crypto.agree` refuses whatever the scalar is.
_PROBE_KEY = bytes(range(1, 33))


class SecAggServer:
    """The server's side of one round (one session id) over a fixed set of clients."""

    def __init__(
        self,
        config: SecAggConfig,
        session_id: bytes,
        client_ids: Sequence[int],
        dim: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        ids = tuple(sorted(client_ids))
        if len(set(ids)) != len(ids) or any(not (isinstance(i, int) and 0 <= i <= crypto.MAX_ID) for i in ids):
            raise ValueError("client_ids must be distinct ints in 0..2^64-1")
        self.config = config
        self.session_id = crypto.check_session_id(session_id)
        self.client_ids = ids
        self.dim = dim
        # ValueError if they do not fit
        self.neighbors, self.threshold, self.colluders, self.min_partners = config.session(len(ids), dim)
        self._need = max(self.threshold, self.min_partners)  # live neighbours a client must keep
        self.committee = committee(ids, self.colluders)  # whose list signatures count (check on)
        self.quorum = quorum(len(self.committee), self.colluders)
        self.graph = neighbour_graph(session_id, ids, self.neighbors)
        self._x = {cid: pos + 1 for pos, cid in enumerate(ids)}
        self._clock = clock
        self._stages = stages_for(config.consistency_check)
        self.stage: str | None = None  # the stage whose replies are awaited; None before start()

        self._asked: set[int] = set()  # clients sent a request in the current stage
        self._replies: dict[int, object] = {}  # this stage's validated replies, by sender
        self._keys: dict[int, object] = {}  # advertised keys of kept clients
        self._seen_keys: set[bytes] = set()  # every public key advertised so far: no client may reuse one
        self._attestations: dict[int, bytes] = {}  # survivor -> its signed list of partners (check on)
        self._envelopes: dict[int, dict[int, bytes]] = {}  # sender -> recipient -> envelope
        self._relayed: dict[int, frozenset[int]] = {}  # recipient -> senders it got shares of
        self._holders: dict[int, frozenset[int]] = {}  # owner -> clients holding its shares
        self._length = dim + config.fixed_point.count_slots(dim)  # codes, then clipped-count digits
        self._sum: np.ndarray | None = None  # (length,) running sum of masked inputs
        self._survivors: tuple[int, ...] = ()
        self._dropped: dict[str, tuple[int, ...]] = {}
        self._lagrange: dict[tuple[int, ...], tuple[int, ...]] = {}  # x coords -> coefficients
        self.bytes_in: dict[str, int] = {}
        self.seconds_per_stage: dict[str, float] = {}

    # --- driving --------------------------------------------------------------------------

    def start(self) -> dict[int, AdvertiseKeysRequest]:
        if self.stage is not None:
            raise ProtocolError("the round has already started")
        digest = self.config.digest(self.session_id, self.client_ids, self.dim)
        self.stage = ADVERTISE_KEYS
        return self._ask({
            cid: AdvertiseKeysRequest(self.session_id, cid, self.client_ids, self.dim,
                                      self.neighbors, self.threshold, digest)
            for cid in self.client_ids
        })

    def receive(self, reply: object) -> None:
        """Validate one reply of the current stage and take it in (masked inputs are summed now)."""
        began, stage = self._clock(), self.stage
        try:
            if self.stage not in STAGE_MESSAGES:
                raise ProtocolError(f"no replies are taken now: the round is {self.stage or 'not started'}")
            expected = STAGE_MESSAGES[self.stage][1]
            if type(reply) is not expected:
                raise ProtocolError(f"stage {self.stage!r} takes {expected.__name__}, got {type(reply).__name__}")
            if reply.session_id != self.session_id:
                raise ProtocolError(f"reply for session {reply.session_id!r}, this is {self.session_id!r}")
            sender = reply.sender
            try:
                if type(sender) is not int or sender not in self._asked:  # bool: True == 1
                    raise ProtocolError(f"client {sender!r} was not asked at stage {self.stage!r}")
                if sender in self._replies:
                    raise ProtocolError(f"second {expected.__name__} from client {sender} (replay)")
                size = wire_size(reply)
                getattr(self, f"_check_{self.stage}")(reply)  # the last step: it may fold in a masked input
            except (TypeError, ValueError, AttributeError, KeyError) as err:  # fields of the wrong type
                raise ProtocolError(f"malformed {expected.__name__}: {err!r}") from err
            self._replies[sender] = reply if self.stage != MASKED_INPUT else None  # the sum keeps it
            self.bytes_in[self.stage] = self.bytes_in.get(self.stage, 0) + size
        finally:
            self._tick(stage, began)

    def advance(self) -> dict[int, object]:
        """Close the current stage and return the next stage's requests by client id."""
        if self.stage not in STAGE_MESSAGES or self.stage == UNMASK:
            raise ProtocolError(f"advance() is not valid at stage {self.stage!r} (use start() / finish())")
        began, stage = self._clock(), self.stage
        try:
            answered = set(self._replies)
            self._dropped[self.stage] = tuple(sorted(self._asked - answered))
            requests = getattr(self, f"_close_{self.stage}")(answered)
            self.stage = self._stages[self._stages.index(self.stage) + 1]
            self._replies = {}
            return self._ask(requests)
        except RoundFailed:
            self.stage = FAILED
            raise
        finally:
            self._tick(stage, began)

    def step(self, replies: Iterable[object]) -> dict[int, object]:
        for reply in replies:  # may be a generator: each reply is folded in and can be freed
            self.receive(reply)
        return self.advance()

    def finish(self, replies: Iterable[object] = ()) -> SecAggResult:
        """Take the last unmask replies, rebuild the masks that do not cancel, decode the sum."""
        if self.stage != UNMASK:
            raise ProtocolError(f"finish() is only valid at stage 'unmask', this is {self.stage!r}")
        for reply in replies:
            self.receive(reply)
        began = self._clock()
        try:
            result = self._close_unmask(set(self._replies))
        except (RoundFailed, ProtocolError):
            self.stage = FAILED
            raise
        finally:
            self._tick(UNMASK, began)
        self.stage = DONE
        return dataclasses.replace(result, seconds_per_stage=dict(self.seconds_per_stage))  # incl. this

    # --- per-stage checks on one reply ----------------------------------------------------

    def _check_advertise_keys(self, reply) -> None:
        for name in ("cipher_public_key", "mask_public_key"):
            if not isinstance(getattr(reply, name), bytes) or len(getattr(reply, name)) != crypto.KEY_BYTES:
                raise ProtocolError(f"{name} from client {reply.sender} must be 32 bytes")
        want = crypto.KEY_BYTES if self.config.consistency_check else 0
        if not isinstance(reply.signing_public_key, bytes) or len(reply.signing_public_key) != want:
            raise ProtocolError(f"signing_public_key from client {reply.sender} must be {want} bytes")
        if not isinstance(reply.identity_signature, bytes) or len(reply.identity_signature) not in (0, 64):
            raise ProtocolError(f"identity_signature from client {reply.sender} must be 0 or 64 bytes")
        # A low-order or copied key would make every honest neighbour refuse at share_keys and could
        # sink the round: refuse it here, so only its sender drops out.
        for name in ("cipher_public_key", "mask_public_key"):
            crypto.agree(_PROBE_KEY, getattr(reply, name))  # ProtocolError for a low-order point
        self._check_keys_unique(reply)

    def _check_keys_unique(self, reply) -> None:
        """No two of a client's public keys may be equal, nor equal to any key another client advertised:
        every honest neighbour would refuse the copy at share_keys ("two advertised public keys are
        identical") and the round would fail there; refused here, only the sender drops out."""
        mine = [reply.cipher_public_key, reply.mask_public_key]
        if reply.signing_public_key:
            mine.append(reply.signing_public_key)
        if len(set(mine)) != len(mine) or self._seen_keys.intersection(mine):
            raise ProtocolError(f"client {reply.sender} advertised a public key that is not its own "
                                f"(two of its keys are equal, or one is another client's)")
        self._seen_keys.update(mine)  # the last step of the check: only an accepted reply's keys count

    def _check_share_keys(self, reply) -> None:
        sent_keys = set(self._sent[reply.sender].cipher_public_keys)
        if not isinstance(reply.seed_commitment, bytes) or len(reply.seed_commitment) != 32:
            raise ProtocolError(f"seed commitment from client {reply.sender} must be 32 bytes")
        if not isinstance(reply.envelopes, dict) or set(reply.envelopes) != sent_keys:
            raise ProtocolError(f"client {reply.sender} must send envelopes to exactly the "
                                f"{len(sent_keys)} neighbours whose keys it got")
        if any(not isinstance(e, bytes) or len(e) != ENVELOPE_BYTES for e in reply.envelopes.values()):
            raise ProtocolError(f"envelopes from client {reply.sender} must be {ENVELOPE_BYTES} bytes")
        commitments = reply.share_commitments
        if (not isinstance(commitments, dict) or set(commitments) != sent_keys
                or any(not isinstance(h, bytes) or len(h) != 32 for h in commitments.values())):
            raise ProtocolError(f"client {reply.sender} must send one 32-byte share commitment per envelope")

    def _check_masked_input(self, reply) -> None:
        want = packed_size(self._length, self.config.bit_width)
        if not isinstance(reply.masked, bytes) or len(reply.masked) != want:
            raise ProtocolError(f"masked input from client {reply.sender} must be {want} bytes")
        pad = 8 * want - self._length * self.config.bit_width  # bits past the last b-bit value
        if pad and reply.masked[-1] >> (8 - pad):  # a value outside the ring: `pack` leaves them zero
            raise ProtocolError(f"masked input from client {reply.sender} sets bits past its last "
                                f"{self.config.bit_width}-bit value (a value outside the ring)")
        if self.config.consistency_check:  # it masked with the neighbours whose envelopes it got
            statement = crypto.partners_statement(self.session_id, reply.sender, self._relayed[reply.sender])
            if not (isinstance(reply.attestation, bytes)
                    and crypto.verify(self._keys[reply.sender].signing_public_key, reply.attestation, statement)):
                raise ProtocolError(f"client {reply.sender}'s signed list of partners does not verify")
            self._attestations[reply.sender] = reply.attestation
        elif reply.attestation != b"":
            raise ProtocolError(f"client {reply.sender} sent an attestation but the consistency check is off")
        if self._sum is None:
            self._sum = np.zeros(self._length, dtype=ring_dtype(self.config.bit_width))
        self._sum += unpack(reply.masked, self._length, self.config.bit_width)  # wraps mod 2^32/2^64

    def _check_consistency_check(self, reply) -> None:
        statement = crypto.survivors_statement(self.session_id, self._survivors, self._late_dropped())
        if not (isinstance(reply.signature, bytes)
                and crypto.verify(self._keys[reply.sender].signing_public_key, reply.signature, statement)):
            raise ProtocolError(f"client {reply.sender}'s signature on the survivor set does not verify")

    def _check_unmask(self, reply) -> None:
        mine = self._relayed[reply.sender]
        survivors = set(self._survivors)
        if not (isinstance(reply.seed_shares, dict) and isinstance(reply.pair_seeds, dict)):
            raise ProtocolError(f"client {reply.sender}'s unmask reply is malformed")
        # seed shares may be fewer: a holder of a spoilt envelope has none to give
        if not set(reply.seed_shares) <= mine & survivors or set(reply.pair_seeds) != mine - survivors:
            raise ProtocolError(f"client {reply.sender} revealed shares other than the ones asked for")
        if any(not (isinstance(s, bytes) and len(s) == crypto.KEY_BYTES) for s in reply.pair_seeds.values()):
            raise ProtocolError(f"pairwise seeds from client {reply.sender} must be 32 bytes")
        for share in reply.seed_shares.values():
            if not (isinstance(share, bytes) and len(share) == REVEALED_SHARE_BYTES):
                raise ProtocolError(f"seed shares from client {reply.sender} must be {REVEALED_SHARE_BYTES} bytes")

    # --- closing stages -------------------------------------------------------------------

    def _close_advertise_keys(self, answered: set[int]) -> dict[int, ShareKeysRequest]:
        kept = self._keep_well_connected(ADVERTISE_KEYS, answered)
        self._keys = {cid: self._replies[cid] for cid in kept}
        self._sent = {}
        for cid in kept:
            peers = sorted(self.graph[cid] & kept)
            keys = self._keys
            self._sent[cid] = ShareKeysRequest(
                self.session_id, cid,
                {j: keys[j].cipher_public_key for j in peers},
                {j: keys[j].mask_public_key for j in peers},
                {j: keys[j].signing_public_key for j in peers} if self.config.consistency_check else {},
                {j: keys[j].identity_signature for j in peers if keys[j].identity_signature},
                self._committee_keys(cid, kept),
            )
        return dict(self._sent)

    def _committee_keys(self, recipient: int, kept: set[int]) -> dict[int, bytes]:
        if not self.config.consistency_check:
            return {}
        keys = self._keys
        return {j: keys[j].cipher_public_key + keys[j].mask_public_key + keys[j].signing_public_key
                + keys[j].identity_signature for j in self.committee if j in kept and j != recipient}

    def _close_share_keys(self, answered: set[int]) -> dict[int, MaskedInputRequest]:
        kept = self._keep_well_connected(SHARE_KEYS, answered)
        envelopes = {cid: self._replies[cid].envelopes for cid in kept}
        self._commitments = {cid: self._replies[cid].seed_commitment for cid in kept}
        self._share_commitments = {cid: self._replies[cid].share_commitments for cid in kept}
        self._holders = {cid: frozenset(self.graph[cid] & kept) for cid in kept}
        self._relayed = self._holders  # the graph is symmetric: i holds j's shares iff j holds i's
        del self._sent
        return {
            r: MaskedInputRequest(self.session_id, r, {s: envelopes[s][r] for s in sorted(self._relayed[r])})
            for r in kept
        }

    def _close_masked_input(self, answered: set[int]) -> dict[int, object]:
        if not answered:
            raise RoundFailed(MASKED_INPUT, self.threshold + 1, 0, "no client sent its masked input")
        self._survivors = tuple(sorted(answered))
        self._check_recoverable(MASKED_INPUT, answered)
        if self.config.consistency_check:
            self._check_spread()
            dropped = self._late_dropped()
            return {cid: ConsistencyCheckRequest(self.session_id, cid, self._survivors, dropped)
                    for cid in self._survivors}
        return self._unmask_requests(answered, {})

    def _close_consistency_check(self, answered: set[int]) -> dict[int, UnmaskRequest]:
        self._check_recoverable(CONSISTENCY_CHECK, answered)
        signers = answered & set(self.committee)
        if len(signers) < self.quorum:
            raise RoundFailed(CONSISTENCY_CHECK, self.quorum, len(signers),
                              f"too few of the {len(self.committee)} committee members signed the lists")
        signatures = {cid: self._replies[cid].signature for cid in sorted(signers)}
        return self._unmask_requests(answered, signatures)

    def _check_spread(self) -> None:
        """The list rules honest clients apply before they sign (client._check_spread): fail here, by name."""
        fewest = min_survivors(len(self.client_ids), self.colluders)
        if len(self._survivors) < fewest:
            raise RoundFailed(MASKED_INPUT, fewest, len(self._survivors),
                              "too few clients sent masked input for the consistency check's list rules")
        thinnest = thinnest_window(self.session_id, self.client_ids, self.neighbors, self._survivors)
        if thinnest <= self.colluders:
            raise RoundFailed(MASKED_INPUT, self.colluders + 1, thinnest,
                              f"a stretch of {self.neighbors // 2} ring positions kept too few survivors")

    def _late_dropped(self) -> tuple[int, ...]:
        """Clients that shared keys but sent no masked input."""
        return tuple(sorted(set(self._holders) - set(self._survivors)))

    def _unmask_requests(self, responders: set[int], signatures: dict[int, bytes]) -> dict[int, UnmaskRequest]:
        survivors = self._survivors
        dropped = self._late_dropped()
        return {
            cid: UnmaskRequest(self.session_id, cid, survivors, dropped, dict(signatures),
                               {j: self._attestations[j] for j in sorted(self._relayed[cid]) if j in self._attestations})
            for cid in sorted(responders)
        }

    def _close_unmask(self, answered: set[int]) -> SecAggResult:
        self._dropped[UNMASK] = tuple(sorted(self._asked - answered))
        self._check_recoverable(UNMASK, answered)
        dtype = ring_dtype(self.config.bit_width)
        total = self._sum
        removals = []  # (seed, sign) of every mask left in the sum, with the sign that removes it
        for owner in self._survivors:
            holders = sorted(r for r in self._holders[owner] & answered if owner in self._replies[r].seed_shares)
            shares = [self._replies[r].seed_shares[owner] for r in holders]
            removals.append((self._reconstruct(holders, shares, owner), -1))
            if owner in answered:  # owner added the pair's mask if owner < gone; the other half never came
                for gone, seed in self._replies[owner].pair_seeds.items():
                    removals.append((seed, -1 if owner < gone else +1))
        crypto.apply_masks(total, removals)
        total &= dtype.type(ring_mask(self.config.bit_width))
        count = len(self._survivors)
        codec = self.config.fixed_point
        self._check_range(total, count)
        return SecAggResult(
            sum=codec.decode(total[: self.dim], count),
            integer_sum=total[: self.dim],
            count=count,
            survivors=self._survivors,
            dropped={stage: self._dropped.get(stage, ()) for stage in self._stages},
            clipped=codec.decode_count(total[self.dim :]),
            bytes_in=dict(self.bytes_in),
        )

    # --- helpers --------------------------------------------------------------------------

    def _keep_well_connected(self, stage: str, alive: set[int]) -> set[int]:
        """Drop, until none is left, clients with fewer than t live neighbours."""
        kept = set(alive)
        best = 0
        while True:
            thin = {cid for cid in kept if len(self.graph[cid] & kept) < self._need}
            if not thin:
                break
            best = max(len(self.graph[cid] & kept) for cid in thin)
            kept -= thin
        if not kept:
            raise RoundFailed(stage, self._need, best,
                              f"{len(alive)} of {len(self._asked)} clients answered and no client kept "
                              f"enough live neighbours")
        self._dropped[stage] = tuple(sorted(set(self._dropped[stage]) | (alive - kept)))
        return kept

    def _check_recoverable(self, stage: str, responders: set[int]) -> None:
        """Every survivor's self-mask seed must be rebuildable from t shares held by `responders`,
        and a survivor that masked with a drop-out must itself be among them."""
        survivors = set(self._survivors)
        short = []
        for owner in survivors:
            have = len(self._holders[owner] & responders)
            if have < self._need:  # t shares to rebuild its seed; m live partners or it refuses
                short.append((have, owner, "neighbours left to reveal its seed shares"))
            elif owner not in responders and self._holders[owner] - survivors:
                short.append((0, owner, "stopped answering, and only it can reveal its seeds with drop-outs"))
        if short:
            have, owner, why = min(short)
            raise RoundFailed(stage, self._need, have,
                              f"{len(short)} client(s) can no longer be unmasked; client {owner} has {have} {why}")

    def _reconstruct(self, holders: list[int], shares: list[bytes], owner: int) -> bytes:
        """`owner`'s self-mask seed from the shares of `holders`: each share is checked against the
        commitment `owner` made for its holder, bad ones are dropped, the first t good ones rebuild
        the seed, and the seed is checked against `owner`'s seed commitment."""
        t = self.threshold
        committed = self._share_commitments[owner]
        good = []  # (holder, share value) whose salted hash matches owner's commitment for that holder
        for r, revealed in zip(holders, shares):
            share, salt = revealed[: shamir.SHARE_BYTES], revealed[shamir.SHARE_BYTES :]
            if crypto.share_commitment(self.session_id, owner, r, share, salt) == committed[r]:
                try:
                    good.append((r, shamir.decode_share(share)))
                except ValueError:  # committed to a non-element: the owner's own doing
                    continue
            if len(good) == t:
                break
        if len(good) < t:
            raise RoundFailed(UNMASK, t, len(good), f"client {owner}'s seed has too few valid shares "
                                                    f"({len(holders)} revealed, {len(good)} match their commitments)")
        xs = tuple(self._x[r] for r, _ in good)
        coefficients = self._lagrange.get(xs)
        if coefficients is None:
            coefficients = self._lagrange[xs] = shamir.lagrange_at_zero(xs)
        try:
            seed = shamir.combine([y for _, y in good], coefficients, crypto.KEY_BYTES)
        except ValueError:
            seed = b""
        if crypto.seed_commitment(self.session_id, owner, seed) != self._commitments[owner]:
            raise RoundFailed(UNMASK, t, 0, f"client {owner}'s committed shares do not rebuild its committed seed "
                                            f"(it dealt inconsistent shares)")
        return seed

    def _check_range(self, total: np.ndarray, count: int) -> None:
        """A sum of `count` honest codes lies in [0, count * max_code] everywhere, and the clipped
        count in [0, count * dim]; anything else means a masked input or seed that does not add up."""
        codec = self.config.fixed_point
        bound = count * codec.max_code
        worst = int(total.max()) if total.size else 0
        clipped = codec.decode_count(total[self.dim :])
        if worst > bound or clipped > count * self.dim:
            raise RoundFailed(UNMASK, bound, worst,
                              f"the unmasked sum is out of range (largest word {worst} > {bound} = count x "
                              f"max code, or clipped count {clipped} > {count * self.dim}): a survivor sent a "
                              f"malformed masked input or seed")

    def _ask(self, requests: dict[int, object]) -> dict[int, object]:
        self._asked = set(requests)
        return requests

    def _tick(self, stage: str | None, began: float) -> None:
        if stage in STAGE_MESSAGES:
            self.seconds_per_stage[stage] = self.seconds_per_stage.get(stage, 0.0) + self._clock() - began
