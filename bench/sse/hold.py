#!/usr/bin/env python3
"""Opens N event streams to a proxy and holds them open, reading every event.

Prints `OPEN opened=N failed=F` once every stream has answered its headers, then
`STATE open=N events=E` every 10 s, until SIGTERM or SIGINT.

Usage: hold.py PORT PATH N [BEARER_TOKEN]
"""
import asyncio
import signal
import sys

state = {"open": 0, "failed": 0, "events": 0}


async def hold(port: int, request: bytes, gate: asyncio.Semaphore, opened: asyncio.Event, n: int) -> None:
    try:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        state["open"] += 1
    except Exception as err:  # noqa: BLE001 - any failure counts as a failed stream
        state["failed"] += 1
        if state["failed"] <= 3:
            print(f"stream failed: {err!r}", file=sys.stderr, flush=True)
        return
    finally:
        if state["open"] + state["failed"] == n:
            opened.set()
    try:
        while data := await reader.read(65536):
            state["events"] += data.count(b"data:")
    finally:
        state["open"] -= 1


async def main() -> None:
    port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    token = sys.argv[4] if len(sys.argv) > 4 else ""
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    request = f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n{auth}\r\n".encode()
    gate, opened = asyncio.Semaphore(200), asyncio.Event()
    tasks = [asyncio.create_task(hold(port, request, gate, opened, n)) for _ in range(n)]
    await opened.wait()
    print(f"OPEN opened={state['open']} failed={state['failed']}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 10)
        except asyncio.TimeoutError:
            print(f"STATE open={state['open']} events={state['events']}", flush=True)
    for task in tasks:
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
