"""Seeds of a run's separate random streams, all derived from its one seed."""
from __future__ import annotations


def mix_seed(seed: int, *values: int) -> int:
    """A 63-bit seed for the stream that `values` name within `seed`'s (a data batch, a
    process's forward draws, the analog pulses, one PCM programming or read): a multiply-add
    step per value with two odd 64-bit constants (golden-ratio and SplitMix64 ones)."""
    for v in values:
        seed = (seed * 0x9E3779B97F4A7C15 + v * 0xBF58476D1CE4E5B9 + 1) % (1 << 63)
    return seed
