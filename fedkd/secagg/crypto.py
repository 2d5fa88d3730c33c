"""Cryptographic helpers of the secure-aggregation protocol, all built from `cryptography`.

Owns: key generation from injected randomness, X25519 agreement, HKDF key derivation with
domain separation, AES-256-GCM for the share envelopes, AES-256-CTR mask expansion, and the
Ed25519 statement signed in the consistency check. No primitive is home-made here.
Must not touch: protocol state, messages, I/O.

Byte layouts (fixed, so tests can recompute them straight from the primitives):

    derive_key(secret, session, purpose, a, b)
        = HKDF-SHA256(secret, length=32, salt=None,
                      info = b"fedkd/secagg/v1" 0x00 purpose 0x00
                             len(session) as 2 bytes big-endian, session,
                             a as 8 bytes big-endian, b as 8 bytes big-endian)
        purpose b"share": (a, b) = (sender, recipient)    one key per direction
        purpose b"mask":  (a, b) = (min id, max id)       the pairwise mask seed

    mask(seed, length, dtype) = AES-256-CTR(key=seed, initial counter block = 16 zero bytes)
        applied to length * itemsize zero bytes, read as little-endian `dtype`.
    Every seed is used for exactly one stream, so the fixed counter block is safe.

    share envelope = nonce (12 bytes) || AES-256-GCM(key, nonce, plaintext, ad)
        ad = b"fedkd/secagg/v1" 0x00 b"share" 0x00 len(session) (2 bytes) session
             sender (8 bytes) recipient (8 bytes)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedkd.secagg.stages import ProtocolError

RandomBytes = Callable[[int], bytes]

DOMAIN = b"fedkd/secagg/v1"
KEY_BYTES = 32
NONCE_BYTES = 12
SIGNATURE_BYTES = 64
SALT_BYTES = 16  # per-share commitment salt; it travels only inside the envelope and the unmask reply
MAX_ID = 2**64 - 1


def check_session_id(session_id: object) -> bytes:
    """Session ids bind every key and message to one round: 1..256 bytes, unique per round."""
    if not (isinstance(session_id, bytes) and 1 <= len(session_id) <= 256):
        raise ValueError(f"session_id must be 1..256 bytes, got {session_id!r}")
    return session_id


def _id_bytes(client_id: int) -> bytes:
    return client_id.to_bytes(8, "big")


def _session_bytes(session_id: bytes) -> bytes:
    return len(session_id).to_bytes(2, "big") + session_id


def _context(purpose: bytes, session_id: bytes, a: int, b: int) -> bytes:
    return DOMAIN + b"\x00" + purpose + b"\x00" + _session_bytes(session_id) + _id_bytes(a) + _id_bytes(b)


# --- keys ---------------------------------------------------------------------------------


def x25519_keypair(random_bytes: RandomBytes) -> tuple[bytes, bytes]:
    """(private, public) raw 32-byte X25519 keys, the private one drawn from `random_bytes`."""
    private = random_bytes(KEY_BYTES)
    return private, public_bytes(X25519PrivateKey.from_private_bytes(private))


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def ed25519_keypair(random_bytes: RandomBytes) -> tuple[bytes, bytes]:
    """(private, public) raw 32-byte Ed25519 keys, the private seed drawn from `random_bytes`."""
    private = random_bytes(KEY_BYTES)
    public = Ed25519PrivateKey.from_private_bytes(private).public_key()
    return private, public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def ed25519_public(private: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key of a raw private key."""
    return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def x25519_private(private: bytes) -> X25519PrivateKey:
    """A key object, to parse a private key once and use it for many agreements."""
    return X25519PrivateKey.from_private_bytes(private)


def agree(private: bytes | X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret; a malformed or low-order peer key is a ProtocolError."""
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as err:
        raise ProtocolError(f"unusable X25519 public key: {err}") from err


def derive_key(secret: bytes, session_id: bytes, purpose: bytes, a: int, b: int) -> bytes:
    """32-byte HKDF-SHA256 key bound to (session, purpose, a, b); layout in the module doc."""
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_context(purpose, session_id, a, b)
    ).derive(secret)


def pair_mask_seed(private: bytes | X25519PrivateKey, peer_public: bytes, session_id: bytes, i: int, j: int) -> bytes:
    """The seed of the mask shared by clients i and j (symmetric in i, j)."""
    return derive_key(agree(private, peer_public), session_id, b"mask", min(i, j), max(i, j))


# --- share envelopes ----------------------------------------------------------------------


def share_keys(
    private: bytes | X25519PrivateKey, peer_public: bytes, session_id: bytes, me: int, peer: int
) -> tuple[bytes, bytes]:
    """(key for envelopes me -> peer, key for envelopes peer -> me), from one agreement."""
    secret = agree(private, peer_public)
    return (derive_key(secret, session_id, b"share", me, peer), derive_key(secret, session_id, b"share", peer, me))


def seal(key: bytes, nonce: bytes, plaintext: bytes, session_id: bytes, sender: int, recipient: int) -> bytes:
    ad = _context(b"share", session_id, sender, recipient)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def open_sealed(key: bytes, envelope: bytes, session_id: bytes, sender: int, recipient: int) -> bytes:
    """Decrypt an envelope from `sender` to `recipient`; any tampering is a ProtocolError."""
    if len(envelope) < NONCE_BYTES + 16:
        raise ProtocolError(f"share envelope from {sender} is {len(envelope)} bytes, too short")
    ad = _context(b"share", session_id, sender, recipient)
    try:
        return AESGCM(key).decrypt(envelope[:NONCE_BYTES], envelope[NONCE_BYTES:], ad)
    except InvalidTag as err:
        raise ProtocolError(f"share envelope from {sender} to {recipient} failed authentication") from err


# --- masks --------------------------------------------------------------------------------


def keystream(seed: bytes, nbytes: int) -> bytes:
    """`nbytes` of AES-256-CTR keystream under the 32-byte `seed`."""
    if len(seed) != KEY_BYTES:
        raise ValueError(f"mask seed must be {KEY_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return encryptor.update(bytes(nbytes))


def expand_mask(seed: bytes, length: int, dtype: np.dtype) -> np.ndarray:
    """(length,) array of uniform words of `dtype` (uint32/uint64), read-only view of the stream.

    Uniform over all of the dtype's range, hence uniform over Z_{2^b} after reduction mod 2^b
    for any b up to the word width.
    """
    dtype = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(keystream(seed, length * dtype.itemsize), dtype=dtype)


def apply_masks(acc: np.ndarray, masks: Iterable[tuple[bytes, int]]) -> None:
    """acc += sign * mask(seed) for each (seed, sign), sign +1 or -1, in place (wrapping).

    Same streams as `expand_mask`, but each is written into one reused buffer: at D = 1e6 this
    is several times faster than a fresh array per mask (no page faults, no allocations).
    """
    zeros = bytes(acc.nbytes)
    buffer = bytearray(acc.nbytes + 15)  # update_into wants room for one block more
    words = np.frombuffer(buffer, dtype=acc.dtype.newbyteorder("<"), count=acc.size)
    for seed, sign in masks:
        Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update_into(zeros, buffer)
        if sign > 0:
            acc += words
        else:
            acc -= words


# --- consistency-check signatures ---------------------------------------------------------


def survivors_statement(session_id: bytes, survivors: Sequence[int], dropped: Sequence[int]) -> bytes:
    """The bytes a client signs to say "in this session, these clients sent masked input and
    these shared keys but did not": each list as a 4-byte count then 8-byte ids, sorted."""
    out = DOMAIN + b"\x00consistency\x00" + _session_bytes(session_id)
    for ids in (sorted(survivors), sorted(dropped)):
        out += len(ids).to_bytes(4, "big") + b"".join(_id_bytes(i) for i in ids)
    return out


def partners_statement(session_id: bytes, client_id: int, partners: Sequence[int]) -> bytes:
    """What a client signs with its masked input ("in this session, client i masked with exactly these
    partners"): (domain, `partners`, session, client id, the sorted partner ids with their count)."""
    ids = sorted(partners)
    return (DOMAIN + b"\x00partners\x00" + _session_bytes(session_id) + _id_bytes(client_id)
            + len(ids).to_bytes(4, "big") + b"".join(_id_bytes(i) for i in ids))


def identity_statement(session_id: bytes, client_id: int, cipher_pk: bytes, mask_pk: bytes, signing_pk: bytes) -> bytes:
    """What a client signs with its long-term identity key (roster mode) to vouch for the keys it
    advertises in one session: (domain, `identity`, session, client id, the three public keys)."""
    return (DOMAIN + b"\x00identity\x00" + _session_bytes(session_id) + _id_bytes(client_id)
            + cipher_pk + mask_pk + len(signing_pk).to_bytes(1, "big") + signing_pk)


def seed_commitment(session_id: bytes, client_id: int, seed: bytes) -> bytes:
    """SHA-256 over (domain, session, client, self-mask seed): binds the seed a client shared, so the
    server can tell a correct reconstruction from one spoilt by a bad share. The seed is 32 random
    bytes, so the hash says nothing about it beyond letting a guess be checked."""
    return hashlib.sha256(DOMAIN + b"\x00seed\x00" + _session_bytes(session_id) + _id_bytes(client_id) + seed).digest()


def share_commitment(session_id: bytes, dealer: int, holder: int, share: bytes, salt: bytes) -> bytes:
    """SHA-256 over (domain, `share`, session, dealer, holder, salt, share): the dealer sends it to the
    server with its envelopes, before any share is revealed, so the server can check each revealed
    share on its own and drop a bad one before interpolating. The 16-byte salt is random and reaches
    the server only with the revealed share, so the hash of an unrevealed share cannot be tested
    against guesses."""
    return hashlib.sha256(DOMAIN + b"\x00share\x00" + _session_bytes(session_id) + _id_bytes(dealer)
                          + _id_bytes(holder) + salt + share).digest()


def sign(private: bytes, statement: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).sign(statement)


def verify(public: bytes, signature: bytes, statement: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, statement)
    except (InvalidSignature, ValueError):
        return False
    return True
