"""experiments.storage_backends: streamed saves through the Storage API leave nothing behind
when either side fails, refuse names outside the store, and follow the data folder setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import pytest
from django.core.files.storage import storages

from experiments.storage_backends import DataDirStorage, open_stream, save_streamed


def test_a_streamed_save_stores_what_the_producer_writes(settings: Any) -> None:
    store = storages["artifacts"]

    def produce(out: BinaryIO) -> int:
        for i in range(5):
            out.write(bytes([i]) * 300_000)
        return 5

    name, result = save_streamed(store, "p/1/blob.bin", produce)

    assert result == 5
    assert name == "p/1/blob.bin"
    assert (Path(settings.ARTIFACTS_DIR) / name).stat().st_size == 1_500_000
    with open_stream(store, name) as f:
        assert f.read(3) == b"\x00\x00\x00"


def test_a_name_in_use_gets_a_fresh_one_and_both_files_stay() -> None:
    store = storages["artifacts"]
    first, _ = save_streamed(store, "p/1/a.bin", lambda out: out.write(b"one"))
    second, _ = save_streamed(store, "p/1/a.bin", lambda out: out.write(b"two"))

    assert first != second
    assert store.open(first).read() == b"one"
    assert store.open(second).read() == b"two"


def test_a_failing_producer_leaves_nothing_stored(settings: Any) -> None:
    def produce(out: BinaryIO) -> None:
        out.write(b"x" * 2_000_000)
        raise ValueError("encryption failed half way")

    with pytest.raises(ValueError, match="half way"):
        save_streamed(storages["artifacts"], "p/1/half.bin", produce)

    root = Path(settings.ARTIFACTS_DIR)
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_a_failing_store_is_raised_to_the_producer() -> None:
    class Refusing(DataDirStorage):
        def _save(self, name: str, content: Any) -> str:
            content.read(10)
            raise PermissionError("bucket refused the upload")

    def produce(out: BinaryIO) -> None:
        for _ in range(64):  # far more than a pipe holds: the writer must not hang
            out.write(b"y" * 1_000_000)

    with pytest.raises(PermissionError, match="refused"):
        save_streamed(Refusing("ARTIFACTS_DIR"), "p/1/r.bin", produce)


@pytest.mark.parametrize("name", ["../escape.bin", "/etc/passwd", "p/../../x", ""])
def test_names_outside_the_store_are_refused(name: str) -> None:
    with pytest.raises(FileNotFoundError):
        open_stream(storages["artifacts"], name)


def test_the_folder_follows_the_data_dir_setting(settings: Any, tmp_path: Path) -> None:
    settings.ARTIFACTS_DIR = tmp_path / "moved"
    name, _ = save_streamed(storages["artifacts"], "p/2/c.bin", lambda out: out.write(b"c"))
    assert (tmp_path / "moved" / name).read_bytes() == b"c"
