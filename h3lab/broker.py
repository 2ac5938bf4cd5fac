"""The embedded broker: kombu's filesystem transport with messages that appear whole.

kombu's filesystem channel creates a message file, then locks and writes it; a consumer takes
any file whose name matches its queue by moving it away, without the lock. A consumer that
polls between the two (a worker polls every 0.1 s) takes an empty file, fails to decode it,
and the worker stops on an "unrecoverable" error — seen with beat sending the reaper's tick
every second. Here a message is written under a name no queue matches (``….msg.part``) and
renamed into the queue when complete; a rename within one folder is atomic, so a consumer
sees either nothing or the whole message. The format and folders are kombu's, so a worker of
either kind reads the other's messages.

``h3lab.celery`` points kombu's ``filesystem://`` at :class:`Transport` before any connection
is made.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's two bases name the second argument differently, hence the ignore.
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        """Put ``payload`` onto ``queue``: written whole, then renamed into place."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel


def install() -> None:
    """Make ``filesystem://`` URLs use :class:`Transport` in this process."""
    TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"
