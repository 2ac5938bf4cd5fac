"""The embedded default's mail backend: every message is appended to one log file.

``make run`` on a laptop has no mail server; printing mail to the terminal buried the start-up
summary and the worker's output under message bodies. This backend appends each message, as
the RFC 5322 text a mail server would receive, to ``EMAIL_FILE_PATH`` (``var/mail.log`` by
default) behind a separator line, so ``tail -f var/mail.log`` shows mail as it is sent. The
in-app inbox is unaffected: notifications are stored rows, mail is only their copy.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage
from django.utils import timezone

SEPARATOR = "=" * 79

_lock = threading.Lock()  # the web server and a thread-pool worker may share the process


class MailLogBackend(BaseEmailBackend):
    """Appends messages to ``file_path`` (default ``settings.EMAIL_FILE_PATH``)."""

    def __init__(
        self, file_path: str | Path | None = None, fail_silently: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.path = Path(file_path or settings.EMAIL_FILE_PATH)

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        if not email_messages:
            return 0
        blocks = []
        for message in email_messages:
            text = message.message().as_bytes().decode("utf-8", "replace")
            blocks.append(f"{SEPARATOR}\n# logged {timezone.now().isoformat()}\n{text}\n")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _lock, self.path.open("a", encoding="utf-8") as log:
                log.write("".join(blocks))
        except OSError:
            if not self.fail_silently:
                raise
            return 0
        return len(email_messages)
