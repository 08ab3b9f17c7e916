"""A tiny asyncio server in front of a supervised tree (stdlib only, no web framework).

Each line a client sends is a number; the server answers with the running total kept by a
supervised worker process, awaited on the event loop (no thread per request). Killing the
worker mid-run (`kill -9 <pid>`) loses the total but not the server: the next request
reaches the restarted worker.

    .venv/bin/python examples/aio_server.py
"""

from __future__ import annotations

import asyncio

import supervisor.aio
from supervisor import Supervisor, Worker, child


class Counter(Worker):
    def init(self) -> None:
        self.total = 0

    def add(self, n: int) -> int:
        self.total += n
        return self.total


tree = Supervisor("root", children=[child("counter", Counter, call_timeout=5.0)])


async def main() -> None:
    async with supervisor.aio.start(tree) as app:

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async for line in reader:
                try:
                    total = await app.call("counter", "add", int(line))
                except (ValueError, supervisor.errors.WorkerError) as exc:
                    writer.write(f"error: {exc}\n".encode())
                else:
                    writer.write(f"{total}\n".encode())
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            # A client of our own, so the example runs start to end by itself.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for n in (5, 10, "x"):
                writer.write(f"{n}\n".encode())
                print("sent", n, "->", (await reader.readline()).decode().strip())
            writer.close()
            await writer.wait_closed()
    # leaving the block stopped the tree: no process left behind


if __name__ == "__main__":
    asyncio.run(main())
