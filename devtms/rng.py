"""Seed streams: every random draw in devtms is keyed by what it is for, never by position.

`derive_seed(seed, "init")` and `derive_seed(seed, "batches", epoch)` give independent
64-bit seeds from the instance's seed and a purpose. Because nothing depends on which
other instances share a batch, a shard of a run (or a resumed run) draws exactly the
numbers the whole run would.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any sequence of ints and strings (blake2b of their repr)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(*parts: object) -> torch.Generator:
    """A CPU torch.Generator seeded from `parts` (draw on CPU, then move: same numbers anywhere)."""
    return torch.Generator().manual_seed(derive_seed(*parts))
