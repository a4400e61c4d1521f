"""A content-keyed store of frozen encoder features, kept across runs.

An entry's key is the SHA-256 of the encoder's identity and the exact bytes the
encoder sees (an item's stripped "title description", a query, a photo's
file bytes), so a changed title or photo, or another encoder version, is a
different key and a stale feature can never be served. The store is a
directory per encoder identity (any tf.io.gfile path: local, gs://...) of
shard files that are only ever added whole: a writer writes a shard under a
temporary name and renames it into place, so readers see a shard completely
or not at all, and concurrent writers never share a name.

A shard is `MAGIC`, one JSON header line (`dim`, `count`, the payload's
`sha256`) and the payload: `count` 32-byte keys, then `count` x `dim`
little-endian float32. A shard whose header, length, checksum or numbers do
not check out is refused (counted in `stats["refused"]`, renamed aside with
`.refused`), and its entries are encoded again as misses.
"""
import hashlib
import json
import logging
import os
import uuid
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

MAGIC = b"mmfuse-feature-cache-1\n"
SHARD_SUFFIX = ".shard"
# More shards than this are merged into one when the cache is opened.
MAX_SHARDS = 32

log = logging.getLogger("mmfuse")


class FeatureCache:
    """Features of one encoder (`identity`, e.g. its wheel and code version),
    each `dim` float32, by content.

    >>> cache = FeatureCache(directory, "text", identity, 384)
    >>> found = cache.lookup([b"red shirt"])          # {} the first time
    >>> cache.add([b"red shirt"], encoded)             # one new shard
    """

    def __init__(self, directory: str, name: str, identity: str, dim: int):
        self.identity = identity
        self.dim = dim
        digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
        self.directory = os.path.join(directory, f"{name}-{digest}")
        self.stats = {"hits": 0, "misses": 0, "refused": 0}
        self._rows: Optional[Dict[bytes, np.ndarray]] = None

    def key(self, content: bytes) -> bytes:
        return hashlib.sha256(self.identity.encode("utf-8") + b"\0" + content).digest()

    def lookup(self, contents: Sequence[bytes]) -> Dict[bytes, np.ndarray]:
        """The cached feature of each content that has one, by content;
        counts a hit or a miss per distinct content."""
        rows = self._load()
        found = {}
        for content in set(contents):
            row = rows.get(self.key(content))
            if row is None:
                self.stats["misses"] += 1
            else:
                self.stats["hits"] += 1
                found[content] = row
        return found

    def add(self, contents: Sequence[bytes], features: np.ndarray) -> None:
        """Stores `features` [len(contents), dim] as one new shard."""
        features = np.asarray(features, dtype="<f4").reshape(len(contents), self.dim)
        if not len(contents):
            return
        keys = [self.key(content) for content in contents]
        _write_shard(self.directory, keys, features)
        if self._rows is not None:
            self._rows.update(zip(keys, features))

    def _load(self) -> Dict[bytes, np.ndarray]:
        if self._rows is not None:
            return self._rows
        rows: Dict[bytes, np.ndarray] = {}
        paths = shard_paths(self.directory)
        good = []
        for path in paths:
            try:
                keys, features = read_shard(path, self.dim)
            except tf.errors.NotFoundError:  # merged away by another run meanwhile
                continue
            except (ValueError, tf.errors.OpError) as error:
                self.stats["refused"] += 1
                log.warning("feature cache: refused %s (%s); its entries are encoded again",
                            path, error)
                _set_aside(path)
                continue
            rows.update(zip(keys, features))
            good.append(path)
        if len(good) > MAX_SHARDS:
            keys = list(rows)
            _write_shard(self.directory, keys, np.stack([rows[key] for key in keys]))
            for path in good:
                tf.io.gfile.remove(path)
        self._rows = rows
        return rows


def shard_paths(directory: str) -> List[str]:
    if not tf.io.gfile.isdir(directory):
        return []
    return sorted(os.path.join(directory, name) for name in tf.io.gfile.listdir(directory)
                  if name.endswith(SHARD_SUFFIX))


def read_shard(path: str, dim: int):
    """(keys, features [count, dim]) of a shard; ValueError when it is not a
    complete, intact shard of `dim`-number features."""
    with tf.io.gfile.GFile(path, "rb") as handle:
        data = handle.read()
    if not data.startswith(MAGIC):
        raise ValueError("not a feature cache shard")
    end = data.find(b"\n", len(MAGIC))
    try:
        header = json.loads(data[len(MAGIC):end])
        count, shard_dim, checksum = int(header["count"]), int(header["dim"]), header["sha256"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("unreadable header") from None
    payload = data[end + 1:]
    if shard_dim != dim:
        raise ValueError(f"features of {shard_dim} numbers, expected {dim}")
    if len(payload) != count * (32 + 4 * dim):
        raise ValueError(f"{len(payload)} payload bytes, expected {count * (32 + 4 * dim)}")
    if hashlib.sha256(payload).hexdigest() != checksum:
        raise ValueError("checksum mismatch")
    keys = [payload[i * 32:(i + 1) * 32] for i in range(count)]
    features = np.frombuffer(payload[count * 32:], dtype="<f4").reshape(count, dim)
    if not np.isfinite(features).all():
        raise ValueError("non-finite features")
    return keys, features


def _write_shard(directory: str, keys: Sequence[bytes], features: np.ndarray) -> None:
    payload = b"".join(keys) + np.ascontiguousarray(features, dtype="<f4").tobytes()
    header = json.dumps({"dim": int(features.shape[1]), "count": len(keys),
                         "sha256": hashlib.sha256(payload).hexdigest()}).encode("utf-8")
    tf.io.gfile.makedirs(directory)
    name = uuid.uuid4().hex
    temporary = os.path.join(directory, f".tmp-{name}")
    with tf.io.gfile.GFile(temporary, "wb") as handle:
        handle.write(MAGIC + header + b"\n" + payload)
    tf.io.gfile.rename(temporary, os.path.join(directory, name + SHARD_SUFFIX), overwrite=False)


def _set_aside(path: str) -> None:
    try:
        tf.io.gfile.rename(path, path + ".refused", overwrite=True)
    except tf.errors.OpError:
        pass
