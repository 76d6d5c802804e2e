"""The pool's tests run on both loops: the daemon runs on uvloop, whose transports are not
`asyncio.Transport` subclasses (an isinstance check there broke every send, on uvloop only)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from pytest_asyncio.plugin import LoopFactory


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, LoopFactory]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
