"""structlog setup: JSON lines in production, readable output on a terminal.

The level is a filter processor rather than a filtering logger class, so a hot reload of
`log_level` also reaches loggers that were bound before it (bound loggers keep their class).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}  # fmt: skip


class LevelFilter:
    """Drops events below `level`; changed in place by `set_level`."""

    def __init__(self, level: str) -> None:
        self.level = _LEVELS.get(level, logging.INFO)

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if _LEVELS.get(method_name, logging.INFO) < self.level:
            raise structlog.DropEvent
        return event_dict


def _exception_info(
    _logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """`log.exception(...)` carries the traceback (the generic BoundLogger does not add it)."""
    if method == "exception":
        event_dict.setdefault("exc_info", True)
    return event_dict


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog for this process. `auto` picks console on a tty, JSON otherwise."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            LevelFilter(level),
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _exception_info,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.BoundLogger,
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def set_level(level: str) -> None:
    """Change the level at run time (hot reload of log level)."""
    for proc in structlog.get_config()["processors"]:
        if isinstance(proc, LevelFilter):
            proc.level = _LEVELS.get(level, logging.INFO)
