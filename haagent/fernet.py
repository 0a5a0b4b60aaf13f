"""Fernet tokens, the format of pysyncobj's encrypted Raft traffic, on the system's OpenSSL.

Why not the `cryptography` package: its Rust extension links its own copy of OpenSSL and kept
8.5 MiB resident in every agent (measured in /proc/PID/smaps on the 3-node demo) to provide one
cipher that the interpreter's `ssl` module has already loaded from the system's libcrypto. This
module builds Fernet exactly as its specification (https://github.com/fernet/spec) defines it:

    token = base64url(0x80 | timestamp (8 bytes, big-endian) | IV (16) | ciphertext | HMAC)

with AES-128-CBC and PKCS#7 padding for the ciphertext and HMAC-SHA256 (first half of the key)
over everything before it. HMAC, SHA-256 and PBKDF2 come from the standard library; only the
block cipher is called in libcrypto, through its stable EVP interface (OpenSSL 1.1 and 3).
Tokens are byte for byte those of `cryptography.fernet.Fernet` (tested against it and against
the specification's vectors), so agents using either interoperate during an upgrade.

Contract: `decrypt` and `extract_timestamp` verify the HMAC (in constant time) before they
look at anything else and raise `InvalidTokenError` for any token that is not one of ours; nothing
here accepts a token without a valid signature. There is no TTL check: pysyncobj compares the
timestamps itself.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import hashlib
import hmac
import os
import ssl  # noqa: F401 - loads the system's libcrypto that `_libcrypto` then finds mapped
import struct
import threading

_VERSION = 0x80
_HEADER = struct.Struct(">BQ16s")  # version, timestamp, IV
_MAC_BYTES = 32
_BLOCK = 16
# PBKDF2 parameters of pysyncobj's `getEncryptor` (vendored encryptor.py): changing them would
# make every node's key differ from its peers'.
PYSYNCOBJ_SALT = b"\x15%q\xe6\xbb\x02\xa6\xf8\x13q\x90\xcf6+\x1e\xeb"
PYSYNCOBJ_ITERATIONS = 100_000


class InvalidTokenError(ValueError):
    """The token is malformed, was not signed with this key, or does not decrypt."""


class CipherUnavailableError(RuntimeError):
    """The system's libcrypto could not be loaded: the agent cannot encrypt its Raft traffic."""


def _libcrypto_path() -> str | None:
    """The libcrypto this process already mapped for `ssl`, so both use one library."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if "/libcrypto.so" in path:
                    return path
    except OSError:
        pass
    return None


class _Evp:
    """AES-128-CBC through libcrypto's EVP interface, with the C types declared (undeclared,
    ctypes would truncate 64-bit pointers to int).

    Cost, not style, shapes this class: a Raft frame is small and each is encrypted or
    decrypted after the tick thread slept, with cold caches, so the number of calls through
    ctypes (libffi) is most of the price (issue 7: Fernet was about a quarter of an idle
    leader's tick thread). One cipher context per thread is kept (`EVP_CIPHER_CTX` is not
    thread-safe; freed when the thread ends) and re-keyed per frame, and the padding is done
    here so that a frame costs two calls: `EVP_CipherInit_ex` (key, IV, direction) and
    `EVP_Cipher` over whole blocks."""

    def __init__(self) -> None:
        names = [p for p in (_libcrypto_path(),) if p] + ["libcrypto.so.3", "libcrypto.so.1.1"]
        lib: ctypes.CDLL | None = None
        for name in names:
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if lib is None:
            raise CipherUnavailableError(
                "cannot load the system's libcrypto (tried " + ", ".join(names) + "); "
                "install OpenSSL's library (Debian: libssl3)"
            )
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        lib.EVP_CIPHER_CTX_new.restype = vp
        lib.EVP_CIPHER_CTX_new.argtypes = []
        lib.EVP_CIPHER_CTX_free.restype = None
        lib.EVP_CIPHER_CTX_free.argtypes = [vp]
        lib.EVP_aes_128_cbc.restype = vp
        lib.EVP_aes_128_cbc.argtypes = []
        lib.EVP_CipherInit_ex.restype = i
        lib.EVP_CipherInit_ex.argtypes = [vp, vp, vp, cp, cp, i]
        lib.EVP_Cipher.restype = i
        lib.EVP_Cipher.argtypes = [vp, vp, cp, ctypes.c_uint]
        lib.ERR_clear_error.restype = None
        lib.ERR_clear_error.argtypes = []
        self._lib = lib
        self._init = lib.EVP_CipherInit_ex
        self._cipher = lib.EVP_Cipher
        self._aes_128_cbc = lib.EVP_aes_128_cbc()
        self._local = threading.local()

    def _context(self) -> int:
        """This thread's cipher context, created (with its cipher) on first use."""
        context: _Context | None = getattr(self._local, "context", None)
        if context is None:
            handle = self._lib.EVP_CIPHER_CTX_new()
            if not handle:
                raise MemoryError("EVP_CIPHER_CTX_new failed")
            context = _Context(self._lib, handle)
            if self._init(handle, self._aes_128_cbc, None, None, None, 1) != 1:
                self._lib.ERR_clear_error()
                raise CipherUnavailableError("libcrypto refused AES-128-CBC")
            self._local.context = context
        return context.handle

    def run(self, encrypt: bool, key: bytes, iv: bytes, data: bytes) -> bytes:
        """AES-128-CBC with PKCS#7 padding; raises InvalidTokenError if the data cannot be
        decrypted (a length that is not whole blocks, or a bad padding: a wrong key or a
        damaged ciphertext)."""
        if len(data) > 0x7FFF_0000:  # EVP takes an int length
            raise InvalidTokenError("message too long")
        if encrypt:
            pad = _BLOCK - len(data) % _BLOCK
            data = bytes(data) + bytes((pad,)) * pad
        elif not data or len(data) % _BLOCK:
            raise InvalidTokenError("the ciphertext is not whole blocks")
        ctx = self._context()
        out = ctypes.create_string_buffer(len(data))
        # Re-keying keeps the context's cipher (NULL); EVP_Cipher returns the byte count
        # (OpenSSL 3) or 1 (1.1), either way > 0 on success.
        if self._init(ctx, None, None, key, iv, int(encrypt)) != 1 or (
            self._cipher(ctx, out, data, len(data)) <= 0
        ):
            # OpenSSL queued why; leave nothing behind for this thread's next TLS call.
            self._lib.ERR_clear_error()
            raise InvalidTokenError("the cipher refused the data")
        plain = out.raw
        if encrypt:
            return plain
        pad = plain[-1]
        if not 1 <= pad <= _BLOCK or plain[-pad:] != bytes((pad,)) * pad:
            raise InvalidTokenError("the cipher refused the data")
        return plain[:-pad]


class _Context:
    """One thread's `EVP_CIPHER_CTX`, freed with the thread's locals."""

    def __init__(self, lib: ctypes.CDLL, handle: int) -> None:
        self._lib = lib
        self.handle = handle

    def __del__(self) -> None:
        self._lib.EVP_CIPHER_CTX_free(self.handle)


_evp: _Evp | None = None


def _cipher() -> _Evp:
    global _evp
    if _evp is None:
        _evp = _Evp()
    return _evp


def derive_key(password: bytes) -> bytes:
    """The Fernet key (base64url of 32 bytes) pysyncobj derives from the cluster secret."""
    raw = hashlib.pbkdf2_hmac("sha256", password, PYSYNCOBJ_SALT, PYSYNCOBJ_ITERATIONS, 32)
    return base64.urlsafe_b64encode(raw)


class Fernet:
    """The subset of `cryptography.fernet.Fernet` that pysyncobj's transport calls."""

    def __init__(self, key: bytes) -> None:
        try:
            raw = base64.urlsafe_b64decode(key)
        except (binascii.Error, ValueError) as e:
            raise ValueError("a Fernet key is 32 url-safe base64-encoded bytes") from e
        if len(raw) != 32:
            raise ValueError("a Fernet key is 32 url-safe base64-encoded bytes")
        self._signing_key, self._encryption_key = raw[:16], raw[16:]
        _cipher()  # fail at construction, not at the first message

    def encrypt_at_time(self, data: bytes, current_time: int, iv: bytes | None = None) -> bytes:
        """A token for `data` stamped `current_time`; `iv` only for known-answer tests."""
        iv = os.urandom(_BLOCK) if iv is None else iv
        body = _HEADER.pack(_VERSION, current_time, iv) + _cipher().run(
            True, self._encryption_key, iv, data
        )
        mac = hmac.digest(self._signing_key, body, "sha256")  # one C call, no HMAC object
        return base64.urlsafe_b64encode(body + mac)

    def extract_timestamp(self, token: bytes) -> int:
        """The token's timestamp, once its signature is verified."""
        return int(_HEADER.unpack_from(self._verified(token))[1])

    def decrypt(self, token: bytes) -> bytes:
        return self.decrypt_with_timestamp(token)[1]

    def decrypt_with_timestamp(self, token: bytes) -> tuple[int, bytes]:
        """(timestamp, plaintext), verifying the signature once (pysyncobj needs both for
        every frame; `extract_timestamp` then `decrypt` checked it twice)."""
        body = self._verified(token)
        _, timestamp, iv = _HEADER.unpack_from(body)
        return int(timestamp), _cipher().run(False, self._encryption_key, iv, body[_HEADER.size :])

    def _verified(self, token: bytes) -> bytes:
        """The signed part of `token`, or InvalidTokenError."""
        if not isinstance(token, (bytes, bytearray)):
            raise InvalidTokenError("a token is bytes")
        try:
            raw = base64.urlsafe_b64decode(bytes(token))
        except (binascii.Error, ValueError) as e:
            raise InvalidTokenError("not base64") from e
        # At least one cipher block, and a whole number of them.
        if len(raw) < _HEADER.size + _BLOCK + _MAC_BYTES or raw[0] != _VERSION:
            raise InvalidTokenError("not a Fernet token")
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if (len(body) - _HEADER.size) % _BLOCK:
            raise InvalidTokenError("not a Fernet token")
        expected = hmac.digest(self._signing_key, body, "sha256")
        if not hmac.compare_digest(mac, expected):
            raise InvalidTokenError("bad signature")
        return body
