"""Lineage input hashes cover every byte: inputs over 64 MiB that differ in one byte between the
blocks the old sampled hash read must not look equal."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cryoframe.storage.manifest import file_hash


def test_small_files_keep_the_full_blake2b_hash(tmp_path: Path) -> None:
    f = tmp_path / "a.cs"
    data = np.random.default_rng(0).bytes(100_000)
    f.write_bytes(data)
    assert file_hash(f) == f"blake2b:{hashlib.blake2b(data, digest_size=16).hexdigest()}"


def test_large_files_differing_in_one_unsampled_byte_differ(tmp_path: Path) -> None:
    size = (64 << 20) + 12345
    data = bytearray(np.random.default_rng(1).bytes(size))
    f = tmp_path / "big.cs"
    f.write_bytes(data)
    h1 = file_hash(f)
    # the old sampled hash read 64 blocks of 256 KiB at (size - block) * k // 63: flip a byte between two
    block = 256 << 10
    gap = (size - block) * 1 // 63 + block + 10
    assert gap < (size - block) * 2 // 63
    data[gap] ^= 0xFF
    f.write_bytes(data)
    h2 = file_hash(f)
    assert h1 != h2 and h1.split(":")[0] == h2.split(":")[0] in ("blake3", "sha256")
    data[gap] ^= 0xFF
    f.write_bytes(data)
    assert file_hash(f) == h1
