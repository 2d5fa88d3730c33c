"""The split-view adversary, shared by the attack tests (not a test module).

A malicious server runs the first two stages honestly, then picks which envelopes reach whom, shows
each honest client a (survivors, dropped) view, gives it every signature on its exact view that the
rule in force counts (honest signers shown that view, and every colluder), reads the colluders'
secrets, and tries to strip every mask off a group's sum. The honest clients are a callable
(client id, request, vector or None) -> reply that raises ProtocolError on a refusal, so the same
script runs against the in-memory state machines and through the Flower handlers. What the server
relayed is all it needs: who masked with whom is the envelopes it sent each client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from fedkd.secagg import ProtocolError, RoundFailed, SecAggClient, SecAggServer, crypto, shamir
from fedkd.secagg.config import committee
from fedkd.secagg.graph import ring_order
from fedkd.secagg.messages import ConsistencyCheckRequest, UnmaskRequest
from fedkd.secagg.quantize import ring_dtype, ring_mask, unpack


def old_quorum(self, survivors, dropped, signatures):
    """The rule before the sum bound, for controls: t signatures on the pair from surviving neighbours."""
    if (survivors, dropped) != self._signed:
        raise ProtocolError("the survivor and drop-out lists: the pair differs from the one this client signed")
    statement = crypto.survivors_statement(self.session_id, survivors, dropped)
    if set(signatures) - (self._masked_with & set(survivors)):
        raise ProtocolError("signatures from clients that are not surviving neighbours")
    for j, signature in signatures.items():
        if not crypto.verify(self._signing_pks[j], signature, statement):
            raise ProtocolError(f"client {j}'s signature on the survivor and drop-out lists does not verify")
    if len(signatures) < self._threshold:
        raise ProtocolError(f"client {self.client_id} got {len(signatures)} neighbour signatures; it needs t")


def defence_off(monkeypatch):
    """Switch the sum bound's client rules off (committee quorum, partners' attestations, list spread):
    the consistency check goes back to t signatures among a client's own neighbours. Class-wide, so it
    also holds for clients the Flower handler rebuilds from the node's state at every stage."""
    monkeypatch.setattr(SecAggClient, "_check_quorum", old_quorum)
    monkeypatch.setattr(SecAggClient, "_check_attestations", lambda self, survivors, dropped, attestations: None)
    monkeypatch.setattr(SecAggClient, "_check_spread", lambda self, survivors: None)


@dataclasses.dataclass
class Outcome:
    """What the adversary holds after the script."""

    ids: list[int]
    dim: int
    masked: dict[int, object]  # client -> its MaskedInputReply
    replies: dict[int, object]  # honest client -> its UnmaskReply
    refused: dict[int, Exception]  # honest client -> why it refused (consistency check or unmask)
    partners: dict[int, frozenset[int]]  # client -> the senders of the envelopes relayed to it (it masked with them)
    colluders: dict[int, SecAggClient]  # their secrets are the server's


Honest = Callable[..., object]  # (client id, request, vector=None) -> reply; ProtocolError on a refusal


def split_view(config, session: bytes, vectors: Mapping[int, np.ndarray], honest: Honest,
               colluders: Mapping[int, SecAggClient], masked_with: Mapping[int, set[int]],
               views: Callable[[dict[int, frozenset[int]]], dict[int, tuple]], old_rule: bool = False) -> Outcome:
    """Run the script. `masked_with`: victim -> the senders whose envelopes it gets (everyone else gets
    all of theirs); `views(partners)`: honest client -> the (survivors, dropped) pair it is shown.
    Every honest client is given all the signatures on its exact pair that the rule in force counts
    (its surviving neighbours' with `old_rule`, else the committee's) and its surviving partners'
    attestations. Nobody refuses before the consistency check."""
    ids = sorted(vectors)
    dim = len(next(iter(vectors.values())))
    server = SecAggServer(config, session, ids, dim)

    def ask(c, request, vector=None):
        return colluders[c].handle(request, vector) if c in colluders else honest(c, request, vector)

    requests = server.start()
    for _ in range(2):  # advertise keys, share keys: honest
        requests = server.step(ask(c, r) for c, r in requests.items())
    for v, keep in masked_with.items():
        requests[v] = dataclasses.replace(requests[v], envelopes={u: e for u, e in requests[v].envelopes.items()
                                                                   if u in keep})
    partners = {c: frozenset(r.envelopes) for c, r in requests.items()}
    masked = {c: ask(c, r, vectors[c]) for c, r in requests.items()}
    views = views(partners)
    refused, signed, replies = {}, {}, {}
    if config.consistency_check:
        for h, (s, d) in views.items():
            try:
                signed[h] = ask(h, ConsistencyCheckRequest(session, h, s, d)).signature
            except (ProtocolError, RoundFailed) as err:
                refused[h] = err
    counted_by_all = set(committee(tuple(ids), config.session(len(ids), dim)[2]))
    for h, (s, d) in views.items():
        if h in refused:
            continue
        signatures, attestations = {}, {}
        if config.consistency_check:
            statement = crypto.survivors_statement(session, s, d)
            counted = partners[h] if old_rule else counted_by_all
            for j in counted & set(s):
                if j in colluders:
                    signatures[j] = crypto.sign(colluders[j]._secrets["signing"], statement)
                elif j in signed and views[j] == (s, d):
                    signatures[j] = signed[j]
            attestations = {j: masked[j].attestation for j in partners[h] & set(s)}
        try:
            replies[h] = ask(h, UnmaskRequest(session, h, s, d, signatures, attestations))
        except (ProtocolError, RoundFailed) as err:
            refused[h] = err
    return Outcome(ids, dim, masked, replies, refused, partners, dict(colluders))


def share_value(revealed: bytes) -> int:
    """The field element of a revealed seed share (share, then its 16-byte salt)."""
    return shamir.decode_share(revealed[: shamir.SHARE_BYTES])


def recover_sum(config, group, out: Outcome):
    """The decoded sum of `group`'s masked inputs with every mask the adversary can compute removed,
    or None when it lacks t shares of a seed or a pairwise seed with a partner outside the group."""
    ids, dim = out.ids, out.dim
    _, t, _, _ = config.session(len(ids), dim)
    length = dim + config.fixed_point.count_slots(dim)
    total = np.zeros(length, dtype=ring_dtype(config.bit_width))
    for x in group:
        shares = {h: share_value(r.seed_shares[x]) for h, r in out.replies.items() if x in r.seed_shares}
        pairs = {h: r.pair_seeds[x] for h, r in out.replies.items() if x in r.pair_seeds}
        for j, colluder in out.colluders.items():  # colluders hand over both kinds
            if x in colluder._held:
                shares[j] = colluder._held[x]
            if x in colluder._pair_seeds:
                pairs[j] = colluder._pair_seeds[x]
        outside = out.partners[x] - set(group)
        if len(shares) < t or outside - set(pairs):
            return None
        holders = sorted(shares)[:t]
        seed = shamir.combine([shares[h] for h in holders], shamir.lagrange_at_zero([ids.index(h) + 1 for h in holders]),
                              crypto.KEY_BYTES)
        y = unpack(out.masked[x].masked, length, config.bit_width).copy()
        crypto.apply_masks(y, [(seed, -1)] + [(pairs[u], -1 if x < u else +1) for u in outside])
        total += y
    total &= ring_dtype(config.bit_width).type(ring_mask(config.bit_width))
    return config.fixed_point.decode(total[:dim], len(group))


def small_clique(config, session: bytes, n: int, dim: int):
    """Attack 1 of the second review: H is k/2 + 1 consecutive ring positions (a clique), the 2
    colluders on either side of it. H's members get envelopes only from H and the colluders and are
    shown (H + colluders, nobody dropped); everyone else gets every envelope and is shown (everyone,
    nobody dropped). With the old rule the inner members of H have t signatures on their pair from H
    and the colluders, the others from their own side and the colluders; the outsiders reveal their
    shares of H's seeds, and H's masks cancel in H's sum. Returns (H, colluders, masked_with, views)."""
    k = config.session(n, dim)[0]
    ids = list(range(n))
    ring = ring_order(session, ids)
    clique = ring[1: k // 2 + 2]
    colluders = {ring[0], ring[k // 2 + 2]}
    graph = SecAggServer(config, session, ids, dim).graph
    inner = set(clique) | colluders
    masked_with = {v: graph[v] & inner for v in clique}
    small = (tuple(sorted(inner)), ())
    everyone = (tuple(ids), ())
    views = {x: (small if x in clique else everyone) for x in ids if x not in colluders}
    return clique, colluders, masked_with, views
