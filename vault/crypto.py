"""Encryption at rest for restricted artifacts: chunked, streamed AES-256-GCM with envelope keys.

Each artifact gets a random 256-bit *data key*; the data key is stored only *wrapped*
(AES-256-GCM) by a *master key* that lives outside the database (environment or key file).
Rotating the master key re-wraps data keys without touching the data; destroying a wrapped
data key makes the ciphertext unrecoverable (crypto-shredding).

Ciphertext format (version 1)::

    header  = MAGIC (8) | version (1) | chunk_size (4, BE) | nonce_prefix (7)
    chunk_i = AES-256-GCM(key, nonce = nonce_prefix | i (4, BE) | last (1), aad = header)

Every chunk is authenticated on its own, so decryption streams with flat memory. The chunk
index in the nonce rejects reordered or duplicated chunks, and the ``last`` flag rejects
truncation (a stream that ends without a chunk flagged last) and extension (data after it).
The header is authenticated as associated data of every chunk. This is the STREAM
construction of Hoang, Reyhanitabar, Rogaway and Vizár (2015).

Pure Python + ``cryptography``: no Django import, so the benchmark and tests need no project.
"""

from __future__ import annotations

import base64
import mmap
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"H3LABENC"
VERSION = 1
DEFAULT_CHUNK = 1 << 20  # 1 MiB: large enough for AES-GCM's throughput, small for memory
TAG = 16
HEADER = struct.Struct(">8sBI7s")
KEY_BYTES = 32


class DecryptionError(Exception):
    """Ciphertext could not be authenticated: wrong key, tampering, truncation or reordering.

    SECURITY: never return partial plaintext of a stream that fails here; callers must treat
    already-yielded chunks as untrusted and abort the response.
    """


class KeyError_(Exception):
    """A master key is missing or malformed (named so it is not confused with dict KeyError)."""


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


# --- streaming encryption ---------------------------------------------------------------------


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= 1 << 32:
        raise ValueError("stream too long for 32-bit chunk counter")
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def encrypt_file(
    key: bytes, src: BinaryIO, dst: BinaryIO, *, chunk_size: int = DEFAULT_CHUNK
) -> int:
    """Encrypt ``src`` into ``dst`` (the format above) reusing two
    preallocated buffers, so no per-chunk allocation or copy happens in Python. Returns the
    number of plaintext bytes."""
    if len(key) != KEY_BYTES:
        raise ValueError("data key must be 32 bytes")
    aead = AESGCM(key)
    header = HEADER.pack(MAGIC, VERSION, chunk_size, os.urandom(7))
    prefix = header[-7:]
    dst.write(header)
    bufs = [bytearray(chunk_size), bytearray(chunk_size)]
    out = bytearray(chunk_size + TAG)
    cur, nxt = memoryview(bufs[0]), memoryview(bufs[1])
    n = _read_full(src, cur)
    total, index = 0, 0
    while True:
        m = _read_full(src, nxt) if n == chunk_size else 0
        last = m == 0
        view = memoryview(out)[: n + TAG]
        aead.encrypt_into(_nonce(prefix, index, last), cur[:n], header, view)
        dst.write(view)
        total += n
        if last:
            return total
        cur, nxt, n = nxt, cur, m
        index += 1


class EncryptingWriter:
    """A write-only file that encrypts what is written to ``dst`` (same format as
    :func:`encrypt_file`), for producers that write rather than read (``tarfile``). A full
    chunk is held back until more data arrives, so the chunk written by :meth:`close` is the
    one flagged last. Memory stays O(chunk_size)."""

    def __init__(self, key: bytes, dst: BinaryIO, *, chunk_size: int = DEFAULT_CHUNK) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("data key must be 32 bytes")
        self._aead = AESGCM(key)
        self._dst = dst
        self._chunk = chunk_size
        self._header = HEADER.pack(MAGIC, VERSION, chunk_size, os.urandom(7))
        self._prefix = self._header[-7:]
        self._buf = bytearray()
        self._index = 0
        self.closed = False
        dst.write(self._header)

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) > self._chunk:
            self._emit(bytes(self._buf[: self._chunk]), last=False)
            del self._buf[: self._chunk]
        return len(data)

    def _emit(self, plain: bytes, *, last: bool) -> None:
        nonce = _nonce(self._prefix, self._index, last)
        self._dst.write(self._aead.encrypt(nonce, plain, self._header))
        self._index += 1

    def flush(self) -> None:
        self._dst.flush()

    def close(self) -> None:
        if not self.closed:
            self._emit(bytes(self._buf), last=True)
            self._buf = bytearray()
            self.closed = True


def _read_full(src: BinaryIO, buf: memoryview) -> int:
    """Fill ``buf`` unless the stream ends first; returns the bytes read."""
    got = 0
    while got < len(buf):
        k = src.readinto(buf[got:])  # type: ignore[attr-defined]
        if not k:
            break
        got += k
    return got


def decrypt_stream(key: bytes, src: BinaryIO) -> Iterator[bytes]:
    """Yield plaintext chunks, authenticating each. Raises :class:`DecryptionError` on a wrong
    key, any modified byte, reordered, duplicated or missing chunks, or a truncated stream.

    Each chunk is the ``bytes`` that AES-GCM decrypts into (no second copy), so it can be
    handed as it is to a streaming response, which keeps it after the next one is made."""
    aead, header, prefix, step = _open_stream(key, src)
    for index, (chunk, last) in enumerate(_ciphertext_chunks(src, step)):
        if len(chunk) < TAG:
            raise DecryptionError(f"chunk {index} is truncated")
        try:
            plain = aead.decrypt(_nonce(prefix, index, last), chunk, header)
        except InvalidTag:
            raise _auth_error(index, last) from None
        yield plain
        if last:
            return


def decrypt_file(key: bytes, src: BinaryIO, dst: BinaryIO) -> int:
    """Decrypt ``src`` into ``dst``; returns the number of plaintext bytes."""
    total = 0
    for view in decrypt_views(key, src):
        dst.write(view)
        total += len(view)
    return total


def decrypt_views(key: bytes, src: BinaryIO) -> Iterator[memoryview]:
    """Like :func:`decrypt_stream`, but each chunk is a view of one reused buffer, valid only
    until the next iteration (consume or copy it first). Reusing the output buffer avoids
    allocating — and page-faulting in — a fresh megabyte per chunk."""
    aead, header, prefix, step = _open_stream(key, src)
    out = memoryview(bytearray(step - TAG))
    for index, (chunk, last) in enumerate(_ciphertext_chunks(src, step)):
        if len(chunk) < TAG:
            raise DecryptionError(f"chunk {index} is truncated")
        plain = out[: len(chunk) - TAG]
        try:
            aead.decrypt_into(_nonce(prefix, index, last), chunk, header, plain)
        except InvalidTag:
            raise _auth_error(index, last) from None
        yield plain
        if last:
            return


def _open_stream(key: bytes, src: BinaryIO) -> tuple[AESGCM, bytes, bytes, int]:
    """Read and check the header: (cipher, header, nonce prefix, ciphertext chunk size)."""
    if len(key) != KEY_BYTES:
        raise DecryptionError("data key must be 32 bytes")
    header = src.read(HEADER.size)
    if len(header) != HEADER.size:
        raise DecryptionError("not an h3lab encrypted file (header truncated)")
    magic, version, chunk_size, prefix = HEADER.unpack(header)
    if magic != MAGIC:
        raise DecryptionError("not an h3lab encrypted file (bad magic)")
    if version != VERSION:
        raise DecryptionError(f"unsupported encryption format version {version}")
    if not 0 < chunk_size <= 1 << 30:
        raise DecryptionError("corrupt header (chunk size)")
    return AESGCM(key), header, prefix, chunk_size + TAG


def _auth_error(index: int, last: bool) -> DecryptionError:
    if index == 0 and not last:
        return DecryptionError("wrong key or corrupted file")
    return DecryptionError(
        f"chunk {index} failed authentication (tampered, reordered or truncated)"
    )


# Ciphertext of a regular file is decrypted straight from the page cache through a read-only
# mapping of this many bytes at a time (rounded to whole chunks), instead of being copied into
# a buffer first: on a CPU with vector AES that copy costs about as much as the cipher.
MAP_WINDOW = 4 << 20


def _ciphertext_chunks(src: BinaryIO, step: int) -> Iterator[tuple[memoryview, bool]]:
    """The ciphertext chunks after the header as ``(chunk, last)``, ``last`` when the stream
    ends with it. A chunk is ``step`` bytes except the last, which may be shorter (or empty:
    the caller rejects it); each is valid only until the next iteration."""
    mapped = _mappable(src)
    if mapped is None:
        yield from _read_chunks(src, step)
        return
    fd, pos, end = mapped
    if pos >= end:
        yield memoryview(b""), True
        return
    per_window = max(1, MAP_WINDOW // step) * step
    while pos < end:
        base = pos - pos % mmap.ALLOCATIONGRANULARITY
        stop = min(end, pos + per_window)
        with mmap.mmap(fd, stop - base, access=mmap.ACCESS_READ, offset=base) as m:
            m.madvise(mmap.MADV_SEQUENTIAL)
            with memoryview(m) as window:
                while pos < stop:
                    q = min(pos + step, stop)
                    with window[pos - base : q - base] as chunk:
                        yield chunk, q == end
                    pos = q


def _mappable(src: BinaryIO) -> tuple[int, int, int] | None:
    """(descriptor, position, size) when ``src`` is a regular file that can be mapped.

    Robustness: reading a mapped file that another process truncates meanwhile raises SIGBUS.
    Stored ciphertext is written once under a fresh name and never truncated or rewritten in
    place (a new version is a new file), so this cannot happen through the storage. Pipes,
    sockets and object-storage bodies are never mapped."""
    try:
        fd = src.fileno()
        pos = src.tell()
        st = os.fstat(fd)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None
    if not stat.S_ISREG(st.st_mode) or pos > st.st_size:
        return None
    return fd, pos, st.st_size


def _read_chunks(src: BinaryIO, step: int) -> Iterator[tuple[memoryview, bool]]:
    """:func:`_ciphertext_chunks` for streams (object storage bodies, pipes, in-memory
    files): read into two reused buffers, one chunk ahead to tell the last one."""
    cur, nxt = memoryview(bytearray(step)), memoryview(bytearray(step))
    n = _read_full(src, cur)
    while True:
        m = _read_full(src, nxt) if n == step else 0
        last = m == 0
        yield cur[:n], last
        if last:
            return
        cur, nxt, n = nxt, cur, m


def encrypted_size(plain_size: int, chunk_size: int = DEFAULT_CHUNK) -> int:
    chunks = max(1, -(-plain_size // chunk_size))
    return HEADER.size + plain_size + chunks * TAG


# --- envelope keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MasterKey:
    key_id: str
    key: bytes = field(repr=False)  # SECURITY: never in a log line or traceback


class Keyring:
    """Master keys by id; the first is current (used to wrap new data keys)."""

    def __init__(self, keys: Iterable[MasterKey]) -> None:
        self._keys = list(keys)
        if not self._keys:
            raise KeyError_(
                "no master key configured (set H3LAB_MASTER_KEYS or H3LAB_MASTER_KEY_FILE)"
            )
        for k in self._keys:
            if len(k.key) != KEY_BYTES:
                raise KeyError_(f"master key {k.key_id!r} must be 32 bytes (base64 of 32 bytes)")

    @property
    def current(self) -> MasterKey:
        return self._keys[0]

    @property
    def keys(self) -> tuple[MasterKey, ...]:
        """Every key, the current one first."""
        return tuple(self._keys)

    def get(self, key_id: str) -> MasterKey:
        for k in self._keys:
            if k.key_id == key_id:
                return k
        raise KeyError_(
            f"master key {key_id!r} is not configured; add it to H3LAB_MASTER_KEYS to read "
            "artifacts wrapped with it"
        )

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        """``"id1:BASE64,id2:BASE64"`` (first is current)."""
        keys = []
        for item in filter(None, (s.strip() for s in spec.replace("\n", ",").split(","))):
            if ":" not in item:
                raise KeyError_("master keys are written id:base64, separated by commas")
            key_id, b64 = item.split(":", 1)
            try:
                raw = base64.b64decode(b64, validate=True)
            except ValueError:
                raise KeyError_(f"master key {key_id!r} is not valid base64") from None
            keys.append(MasterKey(key_id.strip(), raw))
        return cls(keys)


def wrap_key(master: MasterKey, data_key: bytes, *, context: bytes = b"") -> bytes:
    """Wrap a data key: nonce (12) | AES-GCM(master, data_key, aad=master id | context)."""
    nonce = os.urandom(12)
    aad = master.key_id.encode() + b"|" + context
    return nonce + AESGCM(master.key).encrypt(nonce, data_key, aad)


def unwrap_key(master: MasterKey, wrapped: bytes, *, context: bytes = b"") -> bytes:
    aad = master.key_id.encode() + b"|" + context
    try:
        return AESGCM(master.key).decrypt(wrapped[:12], wrapped[12:], aad)
    except (InvalidTag, ValueError):
        raise DecryptionError(
            f"could not unwrap the data key with master key {master.key_id!r} (wrong key?)"
        ) from None
