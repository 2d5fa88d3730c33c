"""Known answers for key derivation and mask expansion, recomputed straight from `cryptography`."""

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from secagg_testkit import drive, seeded_random

from fedkd.secagg import crypto
from fedkd.secagg.stages import ProtocolError

SESSION = b"round-7"


def _info(purpose: bytes, a: int, b: int) -> bytes:
    # The layout documented in crypto.py, written out by hand.
    return (b"fedkd/secagg/v1\x00" + purpose + b"\x00" + len(SESSION).to_bytes(2, "big") + SESSION
            + a.to_bytes(8, "big") + b.to_bytes(8, "big"))


def _raw_public(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_keypairs_come_from_the_injected_bytes():
    draws = iter([bytes(range(32)), bytes(range(32, 64))])
    private, public = crypto.x25519_keypair(lambda n: next(draws))
    assert private == bytes(range(32)) and public == _raw_public(bytes(range(32)))
    sk, pk = crypto.ed25519_keypair(lambda n: bytes(range(32, 64)))
    assert sk == bytes(range(32, 64)) and len(pk) == 32


def test_pair_mask_seed_is_hkdf_of_x25519_with_the_documented_info():
    a_sk, b_sk = bytes([1] * 32), bytes([2] * 32)
    shared = X25519PrivateKey.from_private_bytes(a_sk).exchange(X25519PublicKey.from_public_bytes(_raw_public(b_sk)))
    expected = HKDF(hashes.SHA256(), 32, salt=None, info=_info(b"mask", 3, 9)).derive(shared)
    assert crypto.pair_mask_seed(a_sk, _raw_public(b_sk), SESSION, 9, 3) == expected
    assert crypto.pair_mask_seed(b_sk, _raw_public(a_sk), SESSION, 3, 9) == expected  # both ends agree


def test_share_keys_are_directional_and_domain_separated():
    a_sk, b_sk = bytes([5] * 32), bytes([6] * 32)
    out_a, in_a = crypto.share_keys(a_sk, _raw_public(b_sk), SESSION, 1, 2)
    out_b, in_b = crypto.share_keys(b_sk, _raw_public(a_sk), SESSION, 2, 1)
    assert (out_a, in_a) == (in_b, out_b) and out_a != in_a
    shared = X25519PrivateKey.from_private_bytes(a_sk).exchange(X25519PublicKey.from_public_bytes(_raw_public(b_sk)))
    assert out_a == HKDF(hashes.SHA256(), 32, salt=None, info=_info(b"share", 1, 2)).derive(shared)
    assert out_a != crypto.pair_mask_seed(a_sk, _raw_public(b_sk), SESSION, 1, 2)


def test_mask_is_aes256_ctr_keystream_from_a_zero_counter():
    seed = bytes(range(100, 132))
    stream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(4 * 1000))
    assert np.array_equal(crypto.expand_mask(seed, 1000, np.uint32), np.frombuffer(stream, "<u4"))
    wide = crypto.expand_mask(seed, 500, np.uint64)
    assert np.array_equal(wide, np.frombuffer(stream, "<u8"))


def test_envelopes_bind_session_sender_and_recipient():
    key = bytes(32)
    sealed = crypto.seal(key, bytes(12), b"share bytes", SESSION, 1, 2)
    expected_ad = b"fedkd/secagg/v1\x00share\x00" + len(SESSION).to_bytes(2, "big") + SESSION + (1).to_bytes(8, "big") + (2).to_bytes(8, "big")
    assert sealed == bytes(12) + AESGCM(key).encrypt(bytes(12), b"share bytes", expected_ad)
    assert crypto.open_sealed(key, sealed, SESSION, 1, 2) == b"share bytes"
    for session, sender, recipient in ((b"other", 1, 2), (SESSION, 2, 1), (SESSION, 1, 3)):
        with pytest.raises(ProtocolError, match="authentication"):
            crypto.open_sealed(key, sealed, session, sender, recipient)


def test_low_order_peer_key_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        crypto.agree(bytes([7] * 32), bytes(32))  # the all-zero point gives an all-zero secret


def test_survivor_signatures_cover_the_exact_set():
    sk, pk = crypto.ed25519_keypair(seeded_random(1))
    signature = crypto.sign(sk, crypto.survivors_statement(SESSION, [3, 1, 2], [5]))
    assert crypto.verify(pk, signature, crypto.survivors_statement(SESSION, [1, 2, 3], [5]))
    assert not crypto.verify(pk, signature, crypto.survivors_statement(SESSION, [1, 2], [5]))
    assert not crypto.verify(pk, signature, crypto.survivors_statement(SESSION, [1, 2, 3], []))
    assert not crypto.verify(pk, signature, crypto.survivors_statement(SESSION, [1, 2, 3, 5], []))
    assert not crypto.verify(pk, signature, crypto.survivors_statement(b"other", [1, 2, 3], [5]))


def test_a_clients_masked_input_is_the_documented_sum_of_streams():
    """Known answer for a whole masked input, with the client's randomness injected: the draws
    are cipher key, mask key, signing key (the check is on by default), then the self-mask seed;
    everything else is recomputed here."""
    from secagg_testkit import Recorder

    from fedkd.secagg import MASKED_INPUT, SecAggClient, SecAggConfig, SecAggServer

    config, ids, dim = SecAggConfig(), [4, 8, 15], 6
    recorders = {c: Recorder(seeded_random(c)) for c in ids}
    clients = {c: SecAggClient(c, config, SESSION, recorders[c]) for c in ids}
    server = SecAggServer(config, SESSION, ids, dim)
    x = np.array([-2.0, -1.0, -0.25, 0.0, 0.5, 1.0], dtype=np.float32)
    requests = drive(server, clients, server.start(), {}, MASKED_INPUT)
    masked = np.frombuffer(clients[8].handle(requests[8], x).masked, "<u4")

    def stream(key, n):
        return np.frombuffer(Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(4 * n)), "<u4")

    codes = np.floor((np.clip(x.astype(np.float64), -1, 1) + 1) * 65536 + 0.5).astype(np.uint64)
    expected = np.append(codes, 1).astype(np.uint64)  # one entry (-2.0) was clipped
    expected += stream(recorders[8].draws[3], dim + 1)  # the self mask
    mask_sk = recorders[8].draws[1]
    for peer in (4, 15):
        shared = X25519PrivateKey.from_private_bytes(mask_sk).exchange(
            X25519PublicKey.from_public_bytes(_raw_public(recorders[peer].draws[1])))
        seed = HKDF(hashes.SHA256(), 32, salt=None, info=_info(b"mask", min(8, peer), max(8, peer))).derive(shared)
        expected += stream(seed, dim + 1) if 8 < peer else (2**32 - stream(seed, dim + 1).astype(np.uint64))
    assert np.array_equal(masked, (expected % 2**32).astype(np.uint32))


def test_apply_masks_adds_and_subtracts_the_same_streams_in_place():
    seeds = [bytes([1] * 32), bytes([2] * 32), bytes([3] * 32)]
    acc = np.arange(1001, dtype=np.uint32)
    expected = acc.copy() + crypto.expand_mask(seeds[0], 1001, np.uint32) - crypto.expand_mask(seeds[1], 1001, np.uint32)
    expected += crypto.expand_mask(seeds[2], 1001, np.uint32)
    crypto.apply_masks(acc, [(seeds[0], +1), (seeds[1], -1), (seeds[2], +1)])
    assert np.array_equal(acc, expected)
    wide = np.zeros(7, dtype=np.uint64)
    crypto.apply_masks(wide, [(seeds[0], -1)])
    assert np.array_equal(wide, np.zeros(7, np.uint64) - crypto.expand_mask(seeds[0], 7, np.uint64))
