"""Running the programs' servers in one event loop until a signal.

``neuron serve`` runs one uvicorn server; ``cortex serve`` runs the gateway's own HTTP
servers (API and metrics); ``cortex up`` runs a uvicorn neuron and then the gateway.
Services start in order, each one up before the next, and stop in reverse order (the
gateway before the neuron it talks to). uvicorn's own signal handling is switched
off: it installs handlers per server and re-raises the signal when it stops, which
breaks with more than one server in a loop.

SIGTERM or SIGINT is a clean stop: each service stops accepting, lets the requests it
has in flight finish for up to its grace (``shutdown_grace`` in the config), closes
what is left, and the process exits 0. A service that ends by itself exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, Protocol

import uvicorn

log = logging.getLogger(__name__)


class Service(Protocol):
    async def start(self) -> None:
        """Return once serving; raise if it cannot start (e.g. the port is taken)."""
        ...

    def finished(self) -> Awaitable[Any]:
        """Completes if the service stops by itself."""
        ...

    async def stop(self) -> None: ...


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class UvicornService:
    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        log_level: str = "info",
        access_log: bool = False,
        grace: float = 30.0,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        """``tls_cert``/``tls_key``: serve HTTPS (uvicorn loads the pair)."""
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            http="httptools",
            loop="none",
            lifespan="on",
            timeout_keep_alive=75,  # longer than the gateway's pool keeps idle connections
            timeout_graceful_shutdown=math.ceil(grace),  # requests in flight get this long
            proxy_headers=False,
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
        )
        self.server = _Uvicorn(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve())
        # uvicorn offers a flag, not an event, for "listening".
        while not self.server.started:
            if self._task.done():
                raise RuntimeError(f"could not start serving on {self.server.config.port}")
            await asyncio.sleep(0.01)

    def finished(self) -> Awaitable[Any]:
        return self._task if self._task is not None else asyncio.Future()

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, SystemExit):
                await self._task


async def run_services(services: list[Service]) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    started: list[Service] = []
    code = 0
    try:
        for service in services:
            await service.start()
            started.append(service)
        # Shielded: a service's ``finished()`` may be the task that serves it (uvicorn's),
        # which must stop through ``stop()`` (draining), never by being cancelled here.
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stopping.wait())]
        waits += [asyncio.shield(s.finished()) for s in started]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        code = 0 if stopping.is_set() else 1
        for wait in waits:
            wait.cancel()
    except (OSError, RuntimeError, SystemExit) as exc:
        log.error("could not start: %s", exc)
        code = 1
    finally:
        for service in reversed(started):
            await service.stop()
    return code


def run(services: list[Service]) -> int:
    try:
        import uvloop
    except ImportError:  # not on this platform
        return asyncio.run(run_services(services))
    return uvloop.run(run_services(services))
