"""An RFC 6962 (Certificate Transparency) Merkle tree: tree heads, inclusion and consistency
proofs. Pure Python, no Django.

Hashes (RFC 6962 section 2.1; RFC 9162 section 2.1.1)::

    leaf hash  = SHA-256(0x00 || entry)
    node hash  = SHA-256(0x01 || left || right)
    MTH({})    = SHA-256()
    MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n]))  for n > 1, k the largest power of two < n

:func:`root` is the slow reference, a direct transcription of the definition;
:class:`Accumulator` is the streaming fast path (O(log n) memory, any prefix's root as the
leaves go by) and is tested equal to it. Proofs follow RFC 9162 section 2.1.3 / 2.1.4, and the
verifiers are the RFC's algorithms, so a proof made here verifies with any CT-style verifier.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n`` >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over ``leaves`` (already leaf-hashed), by the recursive definition."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def edge_sizes(size: int) -> list[int]:
    """The sizes of the perfect subtrees on a tree's right edge, largest (leftmost) first: one
    per set bit of ``size``."""
    return [1 << b for b in reversed(range(size.bit_length())) if size >> b & 1]


class Accumulator:
    """The tree's right edge: the roots of its perfect subtrees, largest first. ``root()`` is
    the tree head of everything appended so far (RFC 6962's split puts the largest perfect
    subtree on the left, so the head folds the edge from the right)."""

    def __init__(self) -> None:
        self.size = 0
        self._edge: list[tuple[int, bytes]] = []  # (subtree size, subtree root), sizes decreasing

    @classmethod
    def from_edge(cls, size: int, edge: Sequence[bytes]) -> Accumulator:
        """Resume a tree of ``size`` leaves from its :meth:`edge` (one root per set bit of
        ``size``, largest subtree first)."""
        sizes = edge_sizes(size)
        if len(sizes) != len(edge):
            raise ValueError(
                f"a tree of {size} leaves has {len(sizes)} edge hashes, not {len(edge)}"
            )
        acc = cls()
        acc.size, acc._edge = size, list(zip(sizes, edge, strict=True))
        return acc

    def edge(self) -> list[bytes]:
        """The roots of the perfect subtrees, largest first: all a later append needs."""
        return [h for _, h in self._edge]

    def append(self, leaf: bytes) -> None:
        size, h = 1, leaf
        while self._edge and self._edge[-1][0] == size:
            left_size, left = self._edge.pop()
            size, h = left_size + size, node_hash(left, h)
        self._edge.append((size, h))
        self.size += 1

    def root(self) -> bytes:
        if not self._edge:
            return EMPTY_ROOT
        h = self._edge[-1][1]
        for _, left in reversed(self._edge[:-1]):
            h = node_hash(left, h)
        return h


# --- inclusion proofs (RFC 9162 2.1.3) -----------------------------------------------------------


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]): the sibling hashes from leaf ``index`` up to the root."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"leaf {index} is not in a tree of {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(index, leaves[:k]), root(leaves[k:])]
    return [*inclusion_proof(index - k, leaves[k:]), root(leaves[:k])]


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """Whether ``proof`` shows that ``leaf`` is leaf ``index`` of the tree of ``size`` leaves
    whose head is ``expected_root`` (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == expected_root


# --- consistency proofs (RFC 9162 2.1.4) ---------------------------------------------------------


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]): shows the tree of the first ``old_size`` leaves is a prefix of this one."""
    n = len(leaves)
    if not 0 < old_size <= n:
        raise ValueError(f"no consistency proof from size {old_size} to {n}")
    return _subproof(old_size, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), root(leaves[:k])]


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree (``old_size``, ``old_root``) is a prefix of the tree
    (``new_size``, ``new_root``) (RFC 9162 2.1.4.2)."""
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root
