#!/usr/bin/env python3
"""A tiny fal stand-in for the event-stream benchmark (python3 asyncio, no dependencies).

POST /{endpoint}                         -> a submit answer with a fresh request_id
GET  .../requests/{id}/status/stream     -> text/event-stream that never ends: one IN_PROGRESS
                                            status event per second on every open stream
Anything else                            -> 404

Usage: upstream.py PORT
"""
import asyncio
import json
import sys
import uuid

QUEUE = "https://queue.fal.run"
streams: set[asyncio.StreamWriter] = set()


def answer(writer: asyncio.StreamWriter, status: str, body: bytes) -> None:
    writer.write(
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )


def chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            path = path.split("?", 1)[0]
            if method == "POST" and "/requests/" not in path:
                rid = str(uuid.uuid4())
                base = f"{QUEUE}{path}/requests/{rid}"
                body = {"request_id": rid, "response_url": base, "status_url": base + "/status",
                        "cancel_url": base + "/cancel", "status": "IN_QUEUE", "queue_position": 0}
                answer(writer, "200 OK", json.dumps(body).encode())
            elif method == "GET" and path.endswith("/status/stream"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
                streams.add(writer)
                await writer.drain()
                await reader.read()  # held until the client goes away
                return
            else:
                answer(writer, "404 Not Found", b'{"detail":"Not Found"}')
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        streams.discard(writer)
        writer.close()


async def tick() -> None:
    """One status event per second on every open stream."""
    n = 0
    while True:
        await asyncio.sleep(1)
        n += 1
        event = chunk(b'data: {"status":"IN_PROGRESS","logs":[],"tick":%d}\n\n' % n)
        for writer in list(streams):
            if writer.transport.get_write_buffer_size() < 65536:
                writer.write(event)


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    asyncio.create_task(tick())
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
