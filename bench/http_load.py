"""A lean open-loop HTTP/1.1 load generator: keep-alive connections over asyncio streams.

Requests are started at a fixed rate whatever the answers' latency (open loop); a request
waits for an idle connection of the pool, and that wait counts in its latency. httpx costs
~3.3 ms of CPU per request on this machine at 200 requests/s (and far more once requests
queue: its pool's bookkeeping grows with the waiters); on a 2-core box the generator would
take the CPU the server under test needs. This one costs ~0.1 ms per request.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)  # status code, or "error: <type>"
    elapsed_s: float = 0.0

    @property
    def achieved_rps(self) -> float:
        return len(self.latencies) / self.elapsed_s if self.elapsed_s else 0.0


class Connection:
    """One keep-alive HTTP/1.1 connection; reopened after the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, request: bytes) -> int:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        try:
            writer.write(request)
            status, keep_alive = await read_response(reader)
        except BaseException:
            self.close()
            raise
        if not keep_alive:
            self.close()
        return status

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, connection kept alive) of one response, its body read and dropped."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *header_lines = head.split("\r\n")
    headers = {}
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip().lower()
    if headers.get("transfer-encoding") == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split(" ", 2)[1]), headers.get("connection") != "close"


def get_request(host: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def open_loop_get(
    host: str,
    port: int,
    paths: list[str],
    rate: float,
    total: int,
    headers: dict[str, str] | None = None,
    connections: int = 64,
    warmup: int = 20,
) -> LoadResult:
    """GET paths[i % len(paths)] for i < total, started at `rate` per second."""
    requests = [get_request(host, path, headers or {}) for path in paths]
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(Connection(host, port))
    result = LoadResult()

    async def one(index: int, record: bool = True) -> None:
        started = time.perf_counter()
        connection = await idle.get()
        try:
            status: int | str = await connection.get(requests[index % len(requests)])
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            status = f"error: {type(error).__name__}"
        finally:
            idle.put_nowait(connection)
        if record:
            result.latencies.append(time.perf_counter() - started)
            result.statuses[status] += 1

    for index in range(warmup):
        await one(index, record=False)
    began, tasks = time.perf_counter(), []
    for index in range(total):
        await asyncio.sleep(max(0.0, began + index / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    result.elapsed_s = time.perf_counter() - began
    while not idle.empty():
        idle.get_nowait().close()
    return result
