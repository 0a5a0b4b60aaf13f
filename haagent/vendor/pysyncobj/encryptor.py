# haagent: Fernet on the system's OpenSSL (haagent/fernet.py) instead of the `cryptography`
# package, whose bundled OpenSSL kept 8.5 MiB resident in every agent. Same key derivation and
# the same tokens, so the wire format is unchanged.
from haagent.fernet import Fernet, derive_key

HAS_CRYPTO = True


def getEncryptor(password):
    if not isinstance(password, bytes):
        password = bytes(password.encode())
    return Fernet(derive_key(password))
