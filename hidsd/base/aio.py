"""asyncio helpers.

`wait_timeout` replaces `asyncio.wait_for`: on Python 3.11 `wait_for` can swallow a
cancellation that arrives in the same loop iteration as the result (fixed in 3.12), which left
cancelled tasks running and shutdowns hanging. `asyncio.timeout` awaits in the caller's task
and keeps the cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_timeout(aw: Awaitable[T], timeout: float | None) -> T:
    """Await `aw` for at most `timeout` seconds; TimeoutError after that."""
    async with asyncio.timeout(timeout):
        return await aw
