"""Streamed AES-256-GCM at rest: round trip, and every way a stream can be wrong is rejected."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest

from vault import crypto


def _encrypt(data: bytes, key: bytes, chunk: int = 64) -> bytes:
    out = io.BytesIO()
    crypto.encrypt_file(key, io.BytesIO(data), out, chunk_size=chunk)
    return out.getvalue()


def _decrypt(blob: bytes, key: bytes) -> bytes:
    return b"".join(crypto.decrypt_stream(key, io.BytesIO(blob)))


@pytest.fixture(autouse=True, params=["stream", "mapped file", "mapped file, reused buffer"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Every test that decrypts runs three ways: a stream read into buffers (object storage),
    and a regular file decrypted through its mapping, both into fresh ``bytes`` (downloads)
    and into a reused buffer (``decrypt_file``). A tiny mapping window makes a test stream
    span several windows, none aligned to a page."""
    if request.param == "stream":
        return str(request.param)
    monkeypatch.setattr(crypto, "MAP_WINDOW", 200)
    path = tmp_path / "blob"

    def from_file(blob: bytes, key: bytes) -> bytes:
        path.write_bytes(blob)
        with path.open("rb") as f:  # buffered: the header read leaves the OS offset ahead
            assert crypto._mappable(f) is not None
            if request.param == "mapped file":
                return b"".join(crypto.decrypt_stream(key, f))
            out = io.BytesIO()
            crypto.decrypt_file(key, f, out)
            return out.getvalue()

    monkeypatch.setitem(globals(), "_decrypt", from_file)
    return str(request.param)


def test_only_regular_files_are_mapped(tmp_path: Path) -> None:
    assert crypto._mappable(io.BytesIO(b"x")) is None
    r, w = os.pipe()
    with open(r, "rb") as pipe, open(w, "wb"):
        assert crypto._mappable(pipe) is None
    (tmp_path / "f").write_bytes(b"abc")
    with (tmp_path / "f").open("rb") as f:
        f.read(1)
        assert crypto._mappable(f) == (f.fileno(), 1, 3)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 640, 1000])
def test_round_trip_restores_the_exact_bytes_for_every_size(size: int) -> None:
    key = crypto.new_data_key()
    data = os.urandom(size)
    blob = _encrypt(data, key)
    assert _decrypt(blob, key) == data
    assert len(blob) == crypto.encrypted_size(size, 64)


def test_ciphertext_does_not_contain_the_plaintext() -> None:
    key = crypto.new_data_key()
    data = b"secret induction head weights " * 100
    assert b"secret induction" not in _encrypt(data, key)


def test_wrong_key_is_rejected_with_a_clear_error() -> None:
    blob = _encrypt(b"x" * 500, crypto.new_data_key())
    with pytest.raises(crypto.DecryptionError, match="wrong key"):
        _decrypt(blob, crypto.new_data_key())


def test_any_flipped_byte_is_rejected() -> None:
    key = crypto.new_data_key()
    blob = bytearray(_encrypt(os.urandom(300), key))
    for pos in (0, 10, crypto.HEADER.size + 5, len(blob) // 2, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[pos] ^= 0x01
        with pytest.raises(crypto.DecryptionError):
            _decrypt(bytes(tampered), key)


def test_truncated_stream_is_rejected_even_at_a_chunk_boundary() -> None:
    key = crypto.new_data_key()
    blob = _encrypt(os.urandom(64 * 4), key)
    step = 64 + crypto.TAG
    for cut in (len(blob) - 1, len(blob) - step, crypto.HEADER.size + step):
        with pytest.raises(crypto.DecryptionError):
            _decrypt(blob[:cut], key)


def test_reordered_chunks_are_rejected() -> None:
    key = crypto.new_data_key()
    blob = _encrypt(os.urandom(64 * 3), key)
    h, step = crypto.HEADER.size, 64 + crypto.TAG
    c0, c1, c2 = blob[h : h + step], blob[h + step : h + 2 * step], blob[h + 2 * step :]
    with pytest.raises(crypto.DecryptionError):
        _decrypt(blob[:h] + c1 + c0 + c2, key)
    with pytest.raises(crypto.DecryptionError, match="chunk 1"):
        _decrypt(blob[:h] + c0 + c2 + c1, key)


def test_appended_data_after_the_last_chunk_is_rejected() -> None:
    key = crypto.new_data_key()
    blob = _encrypt(os.urandom(100), key)
    with pytest.raises(crypto.DecryptionError):
        _decrypt(blob + blob[crypto.HEADER.size :], key)


def test_data_keys_wrap_and_unwrap_and_rotation_needs_no_reencryption() -> None:
    old = crypto.MasterKey("2026-a", os.urandom(32))
    new = crypto.MasterKey("2026-b", os.urandom(32))
    data_key = crypto.new_data_key()
    blob = _encrypt(b"weights", data_key)
    wrapped = crypto.wrap_key(old, data_key, context=b"artifact:1")
    rewrapped = crypto.wrap_key(
        new, crypto.unwrap_key(old, wrapped, context=b"artifact:1"), context=b"artifact:1"
    )
    assert _decrypt(blob, crypto.unwrap_key(new, rewrapped, context=b"artifact:1")) == b"weights"
    with pytest.raises(crypto.DecryptionError, match="2026-a"):
        crypto.unwrap_key(old, rewrapped, context=b"artifact:1")


def test_a_wrapped_key_cannot_be_moved_to_another_artifact() -> None:
    master = crypto.MasterKey("k", os.urandom(32))
    wrapped = crypto.wrap_key(master, crypto.new_data_key(), context=b"artifact:1")
    with pytest.raises(crypto.DecryptionError):
        crypto.unwrap_key(master, wrapped, context=b"artifact:2")


def test_keyring_parses_ids_and_names_a_missing_key() -> None:
    k1, k2 = base64.b64encode(os.urandom(32)).decode(), base64.b64encode(os.urandom(32)).decode()
    ring = crypto.Keyring.parse(f"new:{k1}, old:{k2}")
    assert ring.current.key_id == "new"
    assert ring.get("old").key == base64.b64decode(k2)
    with pytest.raises(crypto.KeyError_, match="'gone' is not configured"):
        ring.get("gone")
    with pytest.raises(crypto.KeyError_, match="32 bytes"):
        crypto.Keyring.parse("short:" + base64.b64encode(b"abc").decode())
    with pytest.raises(crypto.KeyError_, match="no master key"):
        crypto.Keyring.parse("")


@pytest.mark.parametrize("size", [0, 1, 64, 65, 128, 1000])
def test_the_encrypting_writer_produces_the_stream_format(size: int) -> None:
    key = crypto.new_data_key()
    data = os.urandom(size)
    out = io.BytesIO()
    writer = crypto.EncryptingWriter(key, out, chunk_size=64)
    for i in range(0, size, 7):  # odd-sized writes straddle chunk boundaries
        writer.write(data[i : i + 7])
    writer.close()
    assert _decrypt(out.getvalue(), key) == data
    assert len(out.getvalue()) == crypto.encrypted_size(size, 64)
