"""The RFC 6962 Merkle tree (vault.merkle): hand-computed small trees, the RFC's published test
vectors, and properties (every proof verifies; any altered proof, leaf or root does not)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault import merkle

# The test data of the RFC 6962 reference implementation (certificate-transparency,
# merkle_tree_test): eight leaves and the tree head after each.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(b"entry %d" % i) for i in range(n)]


def test_leaf_and_node_hashes_are_domain_separated_as_rfc_6962_says() -> None:
    assert merkle.leaf_hash(b"abc") == sha(b"\x00abc")
    a, b = sha(b"a"), sha(b"b")
    assert merkle.node_hash(a, b) == sha(b"\x01" + a + b)
    assert merkle.root([]) == sha(b"")


def test_a_three_leaf_tree_puts_the_largest_power_of_two_on_the_left() -> None:
    l0, l1, l2 = (merkle.leaf_hash(x) for x in (b"a", b"b", b"c"))
    by_hand = sha(b"\x01" + sha(b"\x01" + l0 + l1) + l2)
    assert merkle.root([l0, l1, l2]) == by_hand
    # the path of leaf 2 is the left subtree; of leaf 0, its sibling then leaf 2
    assert merkle.inclusion_proof(2, [l0, l1, l2]) == [sha(b"\x01" + l0 + l1)]
    assert merkle.inclusion_proof(0, [l0, l1, l2]) == [l1, l2]


def test_a_five_leaf_tree_and_its_consistency_proof_from_three_by_hand() -> None:
    ls = [merkle.leaf_hash(bytes([i])) for i in range(5)]
    n01, n23 = merkle.node_hash(ls[0], ls[1]), merkle.node_hash(ls[2], ls[3])
    assert merkle.root(ls) == merkle.node_hash(merkle.node_hash(n01, n23), ls[4])
    # RFC 9162's example shape: from 3 to 5 the proof is c, d, (ab), e
    assert merkle.consistency_proof(3, ls) == [ls[2], ls[3], n01, ls[4]]
    old = merkle.root(ls[:3])
    assert merkle.verify_consistency(3, 5, old, merkle.root(ls), [ls[2], ls[3], n01, ls[4]])


def test_the_reference_implementations_test_vectors() -> None:
    hashed = [merkle.leaf_hash(x) for x in CT_LEAVES]
    acc = merkle.Accumulator()
    for n, (leaf, expected) in enumerate(zip(hashed, CT_ROOTS, strict=True), start=1):
        acc.append(leaf)
        assert merkle.root(hashed[:n]).hex() == expected
        assert acc.root().hex() == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), max_size=70))
def test_the_streaming_accumulator_equals_the_recursive_definition(data: list[bytes]) -> None:
    hashed = [merkle.leaf_hash(x) for x in data]
    acc = merkle.Accumulator()
    assert acc.root() == merkle.root([])
    for n, leaf in enumerate(hashed, start=1):
        acc.append(leaf)
        assert acc.root() == merkle.root(hashed[:n])
    assert acc.size == len(hashed)
    # resuming from any prefix's edge gives the same heads as going on
    for cut in {0, len(hashed) // 3, len(hashed)}:
        resumed = merkle.Accumulator()
        for leaf in hashed[:cut]:
            resumed.append(leaf)
        resumed = merkle.Accumulator.from_edge(cut, resumed.edge())
        for leaf in hashed[cut:]:
            resumed.append(leaf)
        assert (resumed.size, resumed.root()) == (acc.size, acc.root())


def test_an_edge_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="3 edge hashes, not 2"):
        merkle.Accumulator.from_edge(7, leaves(2))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 70).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_every_inclusion_proof_verifies_and_a_wrong_leaf_index_or_root_does_not(
    case: tuple[int, int],
) -> None:
    n, i = case
    ls = leaves(n)
    head = merkle.root(ls)
    proof = merkle.inclusion_proof(i, ls)
    assert merkle.verify_inclusion(i, n, ls[i], proof, head) is True
    assert merkle.verify_inclusion(i, n, merkle.leaf_hash(b"forged"), proof, head) is False
    assert merkle.verify_inclusion(i, n, ls[i], proof, sha(b"other root")) is False
    if n > 1:
        assert merkle.verify_inclusion((i + 1) % n, n, ls[i], proof, head) is False
        assert merkle.verify_inclusion(i, n, ls[i], proof[:-1], head) is False
        bent = [*proof[:-1], sha(proof[-1])]
        assert merkle.verify_inclusion(i, n, ls[i], bent, head) is False
    assert merkle.verify_inclusion(n, n, ls[i], proof, head) is False


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 70).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_every_consistency_proof_verifies_and_a_rewritten_history_does_not(
    case: tuple[int, int],
) -> None:
    m, n = case
    ls = leaves(n)
    old, new = merkle.root(ls[:m]), merkle.root(ls)
    proof = merkle.consistency_proof(m, ls)
    assert merkle.verify_consistency(m, n, old, new, proof) is True
    # the same new tree with one old entry rewritten is not an extension of the old head
    forged = [merkle.leaf_hash(b"rewritten"), *ls[1:]]
    forged_proof = merkle.consistency_proof(m, forged)
    assert merkle.verify_consistency(m, n, old, merkle.root(forged), forged_proof) is False
    assert merkle.verify_consistency(m, n, sha(b"other"), new, proof) is False
    if m < n:
        assert merkle.verify_consistency(m, n, old, new, proof[:-1]) is False
        assert merkle.verify_consistency(m, n, old, new, []) is False


def test_proofs_outside_the_tree_are_refused() -> None:
    with pytest.raises(ValueError):
        merkle.inclusion_proof(3, leaves(3))
    with pytest.raises(ValueError):
        merkle.consistency_proof(0, leaves(3))
    with pytest.raises(ValueError):
        merkle.consistency_proof(4, leaves(3))
    assert merkle.verify_consistency(4, 3, b"", b"", []) is False
