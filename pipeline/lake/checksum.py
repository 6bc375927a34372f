"""A fast 64-bit checksum of a block of memory (pipeline.lake.grids checks its files with it on every read).

Not cryptographic: it guards against damage (a flipped bit, a block of zeros, a torn or misplaced
write), not against someone who can also rewrite the checksum. Each 64-bit word is xored with its
position and put through splitmix64's finaliser (a bijection), and the results are summed mod 2^64:
a change to any one word always changes the sum, words swapped or moved change it with
probability 1 - 2^-64, and the loop vectorises (a pass costs about what reading the memory does).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_POSITION = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


@njit(cache=True)
def checksum_words(words: np.ndarray, first: int) -> np.uint64:
    """sum over i of splitmix64(words[i] ^ (first + i) * golden ratio), mod 2^64; `words` is uint64,
    `first` the position of its first word in the whole (to checksum a block in pieces)."""
    total = np.uint64(0)
    for i in range(words.shape[0]):
        x = words[i] ^ (np.uint64(first + i) * _POSITION)
        x = (x ^ (x >> _S30)) * _MIX1
        x = (x ^ (x >> _S27)) * _MIX2
        total += x ^ (x >> _S31)
    return total
