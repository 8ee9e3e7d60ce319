"""CRC-64/ECMA (the XZ variant OSS and COS report) with combine, and composite multipart ETags."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable

# fastcrc (Rust, `crc` crate) was measured against anycrc on the 2-core dev box: equal at 8 MiB chunks
# (~8.5 vs ~7.5 GB/s) but about twice as fast on 1 KiB chunks (per-call overhead 0.14 vs 0.70 µs), and it
# releases the GIL while hashing, so parts hashed in worker threads run in parallel. The price of that
# release: a mutable buffer (bytearray, memoryview of one) must not be written by another thread meanwhile.
from fastcrc import crc64 as _fastcrc64

__all__ = ["CRC64_POLY", "Crc64", "crc64", "crc64_combine", "md5_etag"]

# CRC-64/XZ (a.k.a. CRC-64/GO-ECMA): ECMA-182 polynomial, reflected, init and xorout all ones. Vendors call it
# "crc64ecma"; plain CRC-64/ECMA-182 (unreflected, zero init) gives other values and is not what they use.
CRC64_POLY = 0x42F0E1EBA9EA3693
_POLY_REFLECTED = 0xC96C5795D7870F42
_MASK = 0xFFFFFFFFFFFFFFFF

_xz = _fastcrc64.xz

Buffer = bytes | bytearray | memoryview


def crc64(data: Buffer, crc: int = 0) -> int:
    """CRC-64/XZ of `data`, continuing from `crc` (the CRC of everything before it; 0 for a fresh start)."""
    # fastcrc's `initial` is the finalised CRC of the preceding bytes (it un-xors internally), exactly the
    # continuation contract we want; 0 is the CRC of the empty string, so it also means "start".
    return _xz(data, crc)


class Crc64:
    """Incremental CRC-64/XZ: feed chunks with `update`, read `value` at any time."""

    __slots__ = ("_crc", "_length")

    def __init__(self, data: Buffer = b"") -> None:
        self._crc = 0
        self._length = 0
        self.update(data)

    def update(self, data: Buffer) -> Crc64:
        """Add `data` after everything fed so far; returns self so calls can be chained."""
        self._crc = _xz(data, self._crc)
        # len() of a memoryview counts items of its format, not bytes.
        self._length += data.nbytes if isinstance(data, memoryview) else len(data)
        return self

    @property
    def value(self) -> int:
        return self._crc

    @property
    def length(self) -> int:
        """Bytes fed so far; the `len_b` to pass when this CRC is the right-hand side of a combine."""
        return self._length

    def hexdigest(self) -> str:
        return f"{self._crc:016x}"

    def copy(self) -> Crc64:
        clone = Crc64()
        clone._crc, clone._length = self._crc, self._length
        return clone

    def combine(self, other: Crc64) -> Crc64:
        """Append the bytes `other` saw (without rereading them): self becomes CRC(self's bytes + other's)."""
        self._crc = crc64_combine(self._crc, other._crc, other._length)
        self._length += other._length
        return self


# zlib's crc32_combine method, widened to 64 bits: a CRC register advanced over n zero bytes is a linear map
# over GF(2), i.e. a 64x64 bit matrix (stored as 64 column ints). Appending B to A is then
#     crc(A+B) = M^len(B) * crc(A)  xor  crc(B)
# because the all-ones init/xorout cancel exactly as in zlib. zlib squares the matrices afresh on every call;
# we keep the operators for 2^k zero bytes once built, so a combine costs one matrix-vector product per set
# bit of len(B) (a few µs each) instead of ~2·log2(len) squarings (~ms each in Python).
_zero_ops: list[list[int]] = []  # _zero_ops[k] advances the register over 2^k zero bytes
_zero_ops_lock = threading.Lock()


def _gf2_times(mat: list[int], vec: int) -> int:
    total = 0
    i = 0
    while vec:
        if vec & 1:
            total ^= mat[i]
        vec >>= 1
        i += 1
    return total


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, col) for col in mat]


def _zero_op(k: int) -> list[int]:
    if k < len(_zero_ops):
        return _zero_ops[k]
    with _zero_ops_lock:
        if not _zero_ops:
            # One zero *bit* on a reflected register: shift right, folding in the poly when bit 0 was set.
            one_bit = [_POLY_REFLECTED] + [1 << (n - 1) for n in range(1, 64)]
            op = one_bit
            for _ in range(3):  # 1 -> 2 -> 4 -> 8 bits: one zero byte
                op = _gf2_square(op)
            _zero_ops.append(op)
        while len(_zero_ops) <= k:
            _zero_ops.append(_gf2_square(_zero_ops[-1]))
    return _zero_ops[k]


def crc64_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """CRC-64/XZ of A+B from crc(A), crc(B) and len(B) alone, so parts hashed in parallel combine."""
    if len_b < 0:
        raise ValueError("len_b must not be negative")
    crc = crc_a & _MASK
    k = 0
    while len_b:
        if len_b & 1:
            crc = _gf2_times(_zero_op(k), crc)
        len_b >>= 1
        k += 1
    return crc ^ (crc_b & _MASK)


def md5_etag(part_md5s: Iterable[bytes | str]) -> str:
    """S3-style multipart ETag `hex(md5(md5_1 + ... + md5_N))-N` from the parts' MD5s (raw digests or hex)."""
    digest = hashlib.md5(usedforsecurity=False)
    count = 0
    for part in part_md5s:
        # Part ETags come back quoted from most stores; accepting them as-is saves every caller the strip.
        raw = bytes.fromhex(part.strip().strip('"')) if isinstance(part, str) else bytes(part)
        if len(raw) != 16:
            raise ValueError(f"part {count + 1}: an MD5 is 16 bytes, got {len(raw)}")
        digest.update(raw)
        count += 1
    if not count:
        raise ValueError("a multipart ETag needs at least one part")
    return f"{digest.hexdigest()}-{count}"
