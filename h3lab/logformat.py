"""Log line formats for every process (web, gunicorn, workers, beat): each line carries its
time (ISO 8601, UTC), level and logger. ``LOG_FORMAT=json`` writes one JSON object a line for
log collectors. Plain ``logging``: imported by settings and by ``gunicorn.conf.py``."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class UTCFormatter(logging.Formatter):
    """``2026-12-02T09:28:14.123Z ERROR django.request Internal Server Error: /``."""

    def __init__(self, fmt: str | None = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt=fmt or TEXT_FORMAT, datefmt=datefmt)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class JsonFormatter(UTCFormatter):
    """One JSON object a line: ``time``, ``level``, ``logger``, ``message``, and ``exc_info``
    (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter_config(log_format: str) -> dict[str, Any]:
    """The ``formatters`` entry of a ``logging.config.dictConfig`` for ``log_format``
    (``text`` or ``json``), under the name ``default``."""
    if log_format not in ("text", "json"):
        raise ValueError(f"LOG_FORMAT must be 'text' or 'json', not {log_format!r}")
    cls = JsonFormatter if log_format == "json" else UTCFormatter
    return {"default": {"()": f"{cls.__module__}.{cls.__qualname__}"}}
