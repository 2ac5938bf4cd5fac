"""Master-key fingerprints: which key a deployment's data was encrypted with, told apart without
revealing the key.

A fingerprint is HMAC-SHA256 under the key of a fixed label, truncated to 64 bits and written
in hex. The database records the fingerprint of every master key the deployment uses
(:mod:`vault.registry`); every process compares the keys it holds against those records at
start (:func:`keyring_problems`) and refuses to run on a key that would encrypt data no other
process can read, or fail to read data that exists.

SECURITY: an HMAC output reveals nothing about the key (a PRF); 64 bits leave a one in 2**64
chance that a wrong key passes, and no way to search for a key from the fingerprint faster
than brute force over 256-bit keys. The label binds the fingerprint to this use, so it is not
the output of any other computation made with the key (wrapping uses AES-GCM, not HMAC).

Pure Python + ``cryptography``: no Django import.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from vault.crypto import Keyring, MasterKey

LABEL = b"h3lab master key fingerprint v1"
FINGERPRINT_HEX = 16  # 64 bits


def fingerprint(key: MasterKey) -> str:
    """The key's fingerprint: 16 hex digits. Depends on the key bytes only, not on its id."""
    return hmac.new(key.key, LABEL, hashlib.sha256).hexdigest()[:FINGERPRINT_HEX]


@dataclass(frozen=True)
class KeyRecord:
    """What the database says about one master key."""

    key_id: str
    fingerprint: str
    current: bool = False
    retired: bool = False


def keyring_problems(keyring: Keyring, records: Iterable[KeyRecord]) -> list[str]:
    """Why a process holding ``keyring`` must not run against a deployment whose database
    recorded ``records`` (empty: it may): the :func:`mismatches`, then

    - the process must use the deployment's current key as its own current key (the first
      one), so new data is encrypted under the key every process holds;
    - the process's current key must be recorded at all (an unknown first key would encrypt
      data under a key nothing else checks: register it first, ``manage.py keys register``).

    Keys the process holds that the database does not know, other than its current key, are
    allowed (a key about to be registered, kept second).
    """
    by_id = {r.key_id: r for r in records}
    if not by_id:
        return []
    problems = mismatches(keyring, by_id.values())
    held = {k.key_id for k in keyring.keys}
    mine = keyring.current.key_id
    for record in by_id.values():
        if record.current and record.key_id in held and record.key_id != mine:
            problems.append(
                f"master key {record.key_id!r} is this deployment's current key but this process "
                f"lists {mine!r} first; put {record.key_id!r} first in H3LAB_MASTER_KEYS"
            )
    if mine not in by_id and not problems:
        problems.append(
            f"master key {mine!r} (fingerprint {fingerprint(keyring.current)}) is not registered "
            "with this deployment; run `manage.py keys register` to make it current, or list "
            "the current key first"
        )
    return problems


def mismatches(keyring: Keyring, records: Iterable[KeyRecord]) -> list[str]:
    """The faults no registration may paper over: a held key whose fingerprint differs from
    the one recorded under its id, and a recorded current key the process does not hold."""
    by_id = {r.key_id: r for r in records}
    problems = []
    for key in keyring.keys:
        record = by_id.get(key.key_id)
        given = fingerprint(key)
        if record is not None and not hmac.compare_digest(record.fingerprint, given):
            problems.append(
                f"master key {key.key_id!r} does not match the key this deployment's data was "
                f"encrypted with (fingerprint {record.fingerprint} expected, {given} given)"
            )
    held = {k.key_id for k in keyring.keys}
    for record in by_id.values():
        if record.current and record.key_id not in held:
            problems.append(
                f"this process does not hold master key {record.key_id!r} (fingerprint "
                f"{record.fingerprint}), the deployment's current key; it holds "
                f"{', '.join(sorted(held))}"
            )
    return problems
