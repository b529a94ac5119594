"""A Bloom filter of pseudonyms: a small per-file membership index for files not sorted by key (raw landings,
prediction-log hours), so a search for one subject opens only the files that may hold it.

Sized for `capacity` items at a false-positive rate `fp_rate`: m = -n ln p / (ln 2)^2 bits (rounded up to a prime,
at least `MIN_BITS`) and k = (m / n) ln 2 hash functions, by double hashing (Kirsch-Mitzenmacher) of one BLAKE2b
digest per item. A "no" is certain; a "maybe" is wrong with probability at most ~`fp_rate` once `capacity` items
are in (tests/unit/test_bloom.py measures it).
Serialised as a small header, the bit array and a CRC-32 of both, so it can live next to the file it indexes and
a damaged copy is refused (`BloomError`) rather than trusted: a flipped bit could otherwise say "certainly not"
for an item that is there.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Iterable

import numpy as np

from crispflow.errors import CrispflowError

MAGIC = b"CFBLOOM1"
_HEADER = struct.Struct("<8sQQQd")  # magic, bits, hashes, items added, design fp rate
_CRC = struct.Struct("<I")  # trailer: CRC-32 of the header and the bits


MIN_BITS = 1024  # 128 bytes: below this, double hashing has too few distinct position sets (one in m²)


def _prime_at_least(n: int) -> int:
    """The smallest prime >= n: with a prime number of bits, double hashing's every step visits k distinct
    positions (with 15 bits, a step of 5 would visit 3, and a one-item filter said "maybe" 2.6 % of the time)."""
    candidate = n + (n % 2 == 0 and n != 2)
    while any(candidate % d == 0 for d in range(3, math.isqrt(candidate) + 1, 2)):
        candidate += 2
    return candidate


class BloomError(CrispflowError):
    """A filter that cannot be built or read (bad size, rate or bytes); the message names the field."""


class BloomFilter:
    def __init__(self, bits: int, hashes: int, fp_rate: float, data: np.ndarray | None = None,
                 items: int = 0) -> None:
        if bits < 8 or hashes < 1:
            raise BloomError(f"bloom filter: bits ({bits}) must be >= 8 and hashes ({hashes}) >= 1")
        self.bits, self.hashes, self.fp_rate, self.items = bits, hashes, fp_rate, items
        self.data = np.zeros((bits + 7) // 8, dtype=np.uint8) if data is None else data

    @classmethod
    def for_capacity(cls, capacity: int, fp_rate: float = 0.001) -> BloomFilter:
        """A filter for `capacity` items at false-positive rate `fp_rate` (both checked)."""
        if not isinstance(capacity, int) or capacity < 1:
            raise BloomError(f"bloom filter: capacity must be a whole number >= 1, got {capacity!r}")
        if not 0 < fp_rate < 1:
            raise BloomError(f"bloom filter: fp_rate must be in (0, 1), got {fp_rate!r}")
        need = -capacity * math.log(fp_rate) / math.log(2) ** 2
        return cls(_prime_at_least(max(MIN_BITS, math.ceil(need))), max(1, round(need / capacity * math.log(2))),
                   fp_rate)

    @classmethod
    def of(cls, items: Iterable[str], fp_rate: float = 0.001) -> BloomFilter:
        """A filter holding the distinct `items`, sized for them (capacity >= 1: with no item it says "no" to all)."""
        distinct = sorted(set(items))
        bloom = cls.for_capacity(max(1, len(distinct)), fp_rate)
        bloom.add(distinct)
        return bloom

    def _positions(self, items: Iterable[str]) -> np.ndarray:
        """(n, k) bit positions: h1 + i * h2 mod m from the two 64-bit halves of a BLAKE2b-128 digest."""
        digests = b"".join(hashlib.blake2b(item.encode("utf-8"), digest_size=16).digest() for item in items)
        halves = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
        h1, h2 = halves[:, :1], halves[:, 1:] | np.uint64(1)  # as every index on disk was written
        steps = np.arange(self.hashes, dtype=np.uint64)
        with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is the intent
            return ((h1 + steps * h2) % np.uint64(self.bits)).astype(np.int64)

    def add(self, items: Iterable[str]) -> None:
        items = list(items)
        if not items:
            return
        positions = self._positions(items).ravel()
        np.bitwise_or.at(self.data, positions >> 3, (1 << (positions & 7)).astype(np.uint8))
        self.items += len(items)

    def might_contain(self, items: Iterable[str]) -> np.ndarray:
        """One bool per item: False = certainly not added, True = added or a false positive."""
        items = list(items)
        if not items:
            return np.zeros(0, dtype=bool)
        positions = self._positions(items)
        return ((self.data[positions >> 3] >> (positions & 7)) & 1).astype(bool).all(axis=1)

    def __contains__(self, item: str) -> bool:
        return bool(self.might_contain([item])[0])

    def expected_fp_rate(self) -> float:
        """The false-positive rate for the items added so far: (1 - e^(-k n / m))^k."""
        return (1 - math.exp(-self.hashes * self.items / self.bits)) ** self.hashes

    def to_bytes(self) -> bytes:
        body = _HEADER.pack(MAGIC, self.bits, self.hashes, self.items, self.fp_rate) + self.data.tobytes()
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, blob: bytes) -> BloomFilter:
        if len(blob) < _HEADER.size + _CRC.size:
            raise BloomError(f"bloom filter: {len(blob)} bytes is shorter than the header")
        magic, bits, hashes, items, fp_rate = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise BloomError("bloom filter: not a crispflow Bloom filter (bad magic)")
        body = blob[: -_CRC.size]
        if zlib.crc32(body) != _CRC.unpack_from(blob, len(body))[0]:
            raise BloomError("bloom filter: checksum mismatch (damaged bytes)")
        data = np.frombuffer(body, dtype=np.uint8, offset=_HEADER.size).copy()
        if data.size != (bits + 7) // 8:
            raise BloomError(f"bloom filter: {data.size} bytes of bits, expected {(bits + 7) // 8}")
        return cls(bits, hashes, fp_rate, data, items)
