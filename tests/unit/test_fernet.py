"""haagent.fernet against the Fernet specification's vectors and `cryptography`'s Fernet.

The Raft transport encrypts every frame with these tokens; a difference in one byte would cut
an upgraded node off from its peers, and a token accepted without a valid signature would let a
stranger inject Raft messages. `cryptography` is a test dependency only, kept as the reference.
"""

from __future__ import annotations

import base64
import hmac
import os

import pytest
from cryptography.fernet import Fernet as ReferenceFernet
from cryptography.fernet import InvalidToken as ReferenceInvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from hypothesis import given, settings
from hypothesis import strategies as st

import haagent.fernet as fernet_module
from haagent.fernet import (
    PYSYNCOBJ_ITERATIONS,
    PYSYNCOBJ_SALT,
    Fernet,
    InvalidTokenError,
    derive_key,
)
from haagent.vendor.pysyncobj.encryptor import getEncryptor

# github.com/fernet/spec, generate.json and verify.json.
SPEC_SECRET = b"cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4="
SPEC_TOKEN = (
    b"gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4"
    b"BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA=="
)
SPEC_TIME = 499162800  # 1985-10-26T01:20:00-07:00


def test_the_specification_vector_is_produced_and_read() -> None:
    f = Fernet(SPEC_SECRET)
    assert f.encrypt_at_time(b"hello", SPEC_TIME, iv=bytes(range(16))) == SPEC_TOKEN
    assert f.decrypt(SPEC_TOKEN) == b"hello"
    assert f.extract_timestamp(SPEC_TOKEN) == SPEC_TIME


def test_the_key_is_the_one_pysyncobj_derived_with_cryptography() -> None:
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=32, salt=PYSYNCOBJ_SALT, iterations=PYSYNCOBJ_ITERATIONS
    )
    assert derive_key(b"cluster secret") == base64.urlsafe_b64encode(kdf.derive(b"cluster secret"))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), when=st.integers(0, 2**40))
def test_tokens_interoperate_with_cryptography_both_ways(data: bytes, when: int) -> None:
    key = ReferenceFernet.generate_key()
    ours, theirs = Fernet(key), ReferenceFernet(key)
    token = ours.encrypt_at_time(data, when)
    assert theirs.decrypt(token) == data
    assert theirs.extract_timestamp(token) == when
    token = theirs.encrypt_at_time(data, when)
    assert ours.decrypt(token) == data
    assert ours.extract_timestamp(token) == when


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300), when=st.integers(0, 2**40))
def test_decrypt_with_timestamp_is_extract_timestamp_and_decrypt(data: bytes, when: int) -> None:
    """The transport's one-pass read gives what the two calls gave, and refuses what they
    refuse (a token whose last byte changed fails its signature)."""
    f = Fernet(ReferenceFernet.generate_key())
    token = f.encrypt_at_time(data, when)
    assert f.decrypt_with_timestamp(token) == (f.extract_timestamp(token), f.decrypt(token))
    assert f.decrypt_with_timestamp(token) == (when, data)
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[-1] ^= 1
    with pytest.raises(InvalidTokenError):
        f.decrypt_with_timestamp(base64.urlsafe_b64encode(bytes(raw)))


def test_a_large_frame_round_trips() -> None:
    f = getEncryptor("s")
    data = os.urandom(3 * 2**20 + 7)
    assert f.decrypt(f.encrypt_at_time(data, 1)) == data


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused_like_cryptography_does(position: int, bit: int) -> None:
    key = ReferenceFernet.generate_key()
    raw = bytearray(base64.urlsafe_b64decode(Fernet(key).encrypt_at_time(b"append_entries", 7)))
    raw[position % len(raw)] ^= 1 << bit
    token = base64.urlsafe_b64encode(bytes(raw))
    with pytest.raises(InvalidTokenError):
        Fernet(key).decrypt(token)
    with pytest.raises(InvalidTokenError):
        Fernet(key).extract_timestamp(token)
    with pytest.raises(ReferenceInvalidToken):
        ReferenceFernet(key).decrypt(token)


@pytest.mark.parametrize(
    "token",
    [
        b"",
        b"not base64 !!",
        b"gA==",
        base64.urlsafe_b64encode(b"\x80" + bytes(8 + 16 + 32)),  # no cipher block
        base64.urlsafe_b64encode(b"\x81" + bytes(8 + 16 + 16 + 32)),  # unknown version
        base64.urlsafe_b64encode(b"\x80" + bytes(8 + 16 + 17 + 32)),  # not whole blocks
    ],
)
def test_malformed_tokens_are_refused(token: bytes) -> None:
    f = Fernet(ReferenceFernet.generate_key())
    with pytest.raises(InvalidTokenError):
        f.decrypt(token)


def test_a_token_from_another_secret_is_refused() -> None:
    token = getEncryptor("one secret").encrypt_at_time(b"x", 1)
    with pytest.raises(InvalidTokenError):
        getEncryptor("another secret").decrypt(token)


@pytest.mark.parametrize("key", [b"", b"short", base64.urlsafe_b64encode(bytes(31)), b"$$$$"])
def test_a_bad_key_is_a_clear_error(key: bytes) -> None:
    with pytest.raises(ValueError, match="32 url-safe base64"):
        Fernet(key)


def test_the_agent_does_not_load_cryptography() -> None:
    """The point of haagent.fernet: the daemon's import graph holds no `cryptography`."""
    import subprocess
    import sys

    code = (
        "import sys, haagent.daemon.shell, haagent.cli; "
        "print(any(m == 'cryptography' or m.startswith('cryptography.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("last_block", [bytes(16), bytes(15) + b"\x11", bytes(14) + b"\x01\x02"])
def test_a_signed_token_with_a_bad_padding_is_refused(last_block: bytes) -> None:
    """The padding is checked here, not by OpenSSL: a ciphertext whose MAC is right (signed
    with the key) but whose plaintext does not end in PKCS#7 padding is refused, as
    `cryptography` refuses it."""
    key = ReferenceFernet.generate_key()
    raw = base64.urlsafe_b64decode(key)
    signing, encryption = raw[:16], raw[16:]
    iv = bytes(range(16))
    # run() pads the 16-byte block with a whole block of 0x10; keeping only the first
    # ciphertext block leaves a token whose plaintext is `last_block` itself, a bad padding.
    cipher = fernet_module._cipher().run(True, encryption, iv, last_block)[:16]
    body = b"\x80" + (7).to_bytes(8, "big") + iv + cipher
    token = base64.urlsafe_b64encode(body + hmac.digest(signing, body, "sha256"))
    with pytest.raises(InvalidTokenError):
        Fernet(key).decrypt(token)
    with pytest.raises(ReferenceInvalidToken):
        ReferenceFernet(key).decrypt(token)
