"""The web process's event loop, so that sync code can hand coroutines to it (the inline runner)."""

from __future__ import annotations

import asyncio
from typing import Any

_main_loop: asyncio.AbstractEventLoop | None = None


def main_loop() -> asyncio.AbstractEventLoop | None:
    """The ASGI server's event loop, once the server has served anything."""
    return _main_loop


def set_main_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Remember the server's event loop."""
    global _main_loop
    _main_loop = loop


class RememberLoop:
    """ASGI wrapper that remembers the server's event loop on every call (cheap: one assignment)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        set_main_loop(asyncio.get_running_loop())
        await self.app(scope, receive, send)
