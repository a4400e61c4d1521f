"""Pseudonymous user ids: a keyed hash (HMAC-SHA256) of each raw user id.

ExampleGen replaces every user id by its pseudonym as the data is read, so
nothing downstream (Transform's vocabulary, the pushed model) holds a raw id;
clients hash the id they ask about with the same key. Without the key a
pseudonym cannot be linked back to a user, nor a user to a pseudonym
(docs/privacy.md). The key lives in a file of its own (`pipeline.user_key_file`),
never in the model or a run's outputs.
"""
import hashlib
import hmac
import os

KEY_BYTES = 32
# 128 bits of the digest: no collisions among any realistic number of users.
PSEUDONYM_CHARS = 32


class UserKeyError(ValueError):
    """The user key file is missing or unusable; the message names it."""


def load_key(path: str, create: bool = False) -> bytes:
    """The key in `path` (~ expanded). With `create`, a missing file is made
    with a new random key, readable by its owner only (mode 0600)."""
    path = os.path.expanduser(path)
    if create and not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made meanwhile by another process: use that one
            pass
        else:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(os.urandom(KEY_BYTES).hex().encode("ascii"))
    try:
        with open(path, "rb") as handle:
            key = handle.read().strip()
    except OSError as error:
        raise UserKeyError(f"cannot read the user key file {path}: {error.strerror} (the key the "
                           "pipeline ran with; see pipeline.user_key_file)") from None
    if len(key) < 16:
        raise UserKeyError(f"the user key file {path} holds {len(key)} bytes; a key needs at "
                           "least 16")
    return key


def pseudonym(user_id: str, key: bytes) -> str:
    """The pseudonym of `user_id`; the empty id (anonymous) stays empty."""
    if not user_id:
        return ""
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_CHARS]


def key_fingerprint(key: bytes) -> str:
    """Changes with the key and reveals nothing of it: for cache keys, so that
    a new key re-runs ExampleGen."""
    return hmac.new(key, b"mmfuse user key fingerprint", hashlib.sha256).hexdigest()[:16]
