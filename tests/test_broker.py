"""The embedded broker (kombu's filesystem transport) never hands a consumer a message that
is still being written."""

from __future__ import annotations

import builtins
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import filesystem

import h3lab.celery  # noqa: F401  (installs the transport, as every worker and web process does)
from h3lab import broker


def _channel(folder: Path) -> Any:
    conn = Connection(
        "filesystem://",
        transport_options={"data_folder_in": str(folder), "data_folder_out": str(folder)},
    )
    return conn.default_channel


def test_filesystem_urls_use_the_whole_message_channel(tmp_path: Path) -> None:
    assert isinstance(_channel(tmp_path), broker.Channel)


@pytest.mark.parametrize("channel_class", [broker.Channel, filesystem.Channel])
def test_a_consumer_polling_while_a_message_is_written_finds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, channel_class: type
) -> None:
    """A consumer's poll lands just after the producer opened the message file for writing:
    h3lab's channel shows it nothing yet; kombu's own hands over the empty file, which fails
    to decode (the worker then stops on an unrecoverable error)."""
    channel = _channel(tmp_path)
    channel.__class__ = channel_class
    polled: list[str] = []
    real_open = builtins.open

    def open_then_poll(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode and not polled:
            try:
                channel._get("jobs")
            except Empty:
                polled.append("nothing")
            except ValueError:  # json.JSONDecodeError
                polled.append("an empty message")
            else:
                polled.append("a message")
        return f

    monkeypatch.setattr(builtins, "open", open_then_poll)
    channel._put("jobs", {"body": "x" * 1000})
    monkeypatch.undo()
    if channel_class is broker.Channel:
        assert polled == ["nothing"]
        assert channel._get("jobs") == {"body": "x" * 1000}
        assert not list(tmp_path.glob("*.part"))
        with pytest.raises(Empty):
            channel._get("jobs")
    else:  # the race this module closes, shown on kombu's channel
        assert polled == ["an empty message"]
