"""Which IPC carries requests between the HTTP process and the engine process: round-trip latency of one
small message (a request's size, ~200 bytes pickled) and the throughput of many in flight, measured here for
the choices that fit an asyncio server on one side and a polling engine loop on the other:

- pyzmq DEALER (zmq.asyncio, the HTTP side) ↔ ROUTER (the engine), over ``ipc://`` — what vLLM uses;
- a multiprocessing ``Pipe`` (the HTTP side reads it in the event loop with ``loop.add_reader``);
- a plain Unix-domain socket with asyncio streams on one side and ``selectors`` on the other.

    pip install pyzmq; python benchmarks/ipc.py [--rounds 5000] [--inflight 64]

Each figure is the median of 5 runs of its block, all run in this one process pair, in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import pickle
import socket
import statistics
import struct
import tempfile
import time

import zmq
import zmq.asyncio
from machine import print_machine  # noqa: E402  (benchmarks/, the script folder, is on sys.path)

MESSAGE = pickle.dumps(
    {
        "op": "generate",
        "id": 123456,
        "prefix": "x" * 50,
        "num_tokens": 200,
        "sampler": (0.0, 0, 1.0, None),
        "stops": [],
        "stream": False,
    }
)


# -- echo servers (the engine side) --------------------------------------------------------------------------
def zmq_echo(address: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(address)
    while True:
        ident, payload = sock.recv_multipart()
        if payload == b"stop":
            break
        sock.send_multipart([ident, payload])


def pipe_echo(conn) -> None:
    while True:
        payload = conn.recv_bytes()
        if payload == b"stop":
            break
        conn.send_bytes(payload)


def unix_echo(path: str) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    conn, _ = server.accept()
    buffer = b""
    while True:
        data = conn.recv(1 << 16)
        if not data:
            break
        buffer += data
        out = b""
        while len(buffer) >= 4:
            (n,) = struct.unpack("<I", buffer[:4])
            if len(buffer) < 4 + n:
                break
            out += buffer[: 4 + n]
            buffer = buffer[4 + n :]
        conn.sendall(out)


# -- clients (the HTTP side, asyncio) ------------------------------------------------------------------------
async def zmq_client(address: str, rounds: int, inflight: int) -> tuple[float, float]:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(address)
    await sock.send(MESSAGE)
    await sock.recv()
    start = time.perf_counter()
    for _ in range(rounds):
        await sock.send(MESSAGE)
        pickle.loads(await sock.recv())
    latency = (time.perf_counter() - start) / rounds
    start = time.perf_counter()
    for _ in range(rounds // inflight):
        for _ in range(inflight):
            await sock.send(MESSAGE)
        for _ in range(inflight):
            pickle.loads(await sock.recv())
    rate = (rounds // inflight) * inflight / (time.perf_counter() - start)
    await sock.send(b"stop")
    sock.close(linger=1000)
    return latency, rate


async def pipe_client(conn, rounds: int, inflight: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: queue.put_nowait(conn.recv_bytes()))
    start = time.perf_counter()
    for _ in range(rounds):
        conn.send_bytes(MESSAGE)
        pickle.loads(await queue.get())
    latency = (time.perf_counter() - start) / rounds
    start = time.perf_counter()
    for _ in range(rounds // inflight):
        for _ in range(inflight):
            conn.send_bytes(MESSAGE)
        for _ in range(inflight):
            pickle.loads(await queue.get())
    rate = (rounds // inflight) * inflight / (time.perf_counter() - start)
    loop.remove_reader(conn.fileno())
    conn.send_bytes(b"stop")
    return latency, rate


async def unix_client(path: str, rounds: int, inflight: int) -> tuple[float, float]:
    for _ in range(100):
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            await asyncio.sleep(0.02)
    frame = struct.pack("<I", len(MESSAGE)) + MESSAGE

    async def read_one() -> bytes:
        (n,) = struct.unpack("<I", await reader.readexactly(4))
        return await reader.readexactly(n)

    start = time.perf_counter()
    for _ in range(rounds):
        writer.write(frame)
        pickle.loads(await read_one())
    latency = (time.perf_counter() - start) / rounds
    start = time.perf_counter()
    for _ in range(rounds // inflight):
        writer.write(frame * inflight)
        for _ in range(inflight):
            pickle.loads(await read_one())
    rate = (rounds // inflight) * inflight / (time.perf_counter() - start)
    writer.close()
    return latency, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print_machine(2)
    results: dict[str, list[tuple[float, float]]] = {"pyzmq ipc": [], "mp Pipe": [], "unix socket": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            address = f"ipc://{tmp}/zmq{run}"
            p = mp.Process(target=zmq_echo, args=(address,))
            p.start()
            results["pyzmq ipc"].append(asyncio.run(zmq_client(address, args.rounds, args.inflight)))
            p.join()
            ours, theirs = mp.Pipe()
            p = mp.Process(target=pipe_echo, args=(theirs,))
            p.start()
            results["mp Pipe"].append(asyncio.run(pipe_client(ours, args.rounds, args.inflight)))
            p.join()
            path = os.path.join(tmp, f"unix{run}")
            p = mp.Process(target=unix_echo, args=(path,))
            p.start()
            results["unix socket"].append(asyncio.run(unix_client(path, args.rounds, args.inflight)))
            p.join()
    for name, runs in results.items():
        latency = statistics.median(r[0] for r in runs) * 1e6
        rate = statistics.median(r[1] for r in runs)
        print(f"{name:<12} round trip {latency:6.1f} µs   {args.inflight} in flight: {rate:>9,.0f} messages/s")


if __name__ == "__main__":
    main()
