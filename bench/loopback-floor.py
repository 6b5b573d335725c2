#!/usr/bin/env python3
"""The floor under any low-load latency figure on this machine: a bare round trip between two
processes over loopback TCP (no TLS, no framing), blocking sockets, TCP_NODELAY.

    bench/loopback-floor.py [--count 20000] [--size 48] [--same-cpu | --busy-poll]

Prints p50 and p99 in microseconds. Waking a process parked on another CPU costs most of it on a
virtual machine; --same-cpu pins both processes to CPU 0 to show how much, and --busy-poll has
both sides spin on non-blocking reads instead of sleeping in them (what `busy_poll_us` does in
hsm-proxy and its clients), so that neither CPU is idle when the other's message arrives.
"""

import argparse
import os
import socket
import sys
import time


def prepare(sock: socket.socket, spin: bool) -> None:
    """TCP_NODELAY; non-blocking when spinning (messages this small always fit the send
    buffer with one in flight, so sendall never meets a full one)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(not spin)


def receive(sock: socket.socket, spin: bool) -> bytes:
    """One recv: blocking, or spinning on the non-blocking socket until something arrives."""
    while True:
        try:
            return sock.recv(65536)
        except BlockingIOError:
            if not spin:
                raise


def echo(listener: socket.socket, spin: bool) -> None:
    conn, _ = listener.accept()
    prepare(conn, spin)
    while True:
        data = receive(conn, spin)
        if not data:
            os._exit(0)
        conn.sendall(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="round trips measured")
    parser.add_argument("--size", type=int, default=48, help="bytes per message")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--same-cpu", action="store_true", help="pin both processes to CPU 0")
    where.add_argument("--busy-poll", action="store_true", help="both sides spin on their reads")
    args = parser.parse_args()
    if args.same_cpu:
        os.sched_setaffinity(0, {0})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    child = os.fork()
    if child == 0:
        echo(listener, args.busy_poll)
    client = socket.create_connection(listener.getsockname())
    prepare(client, args.busy_poll)
    message = b"x" * args.size
    samples = []
    for i in range(args.count + 1000):
        start = time.perf_counter_ns()
        client.sendall(message)
        got = 0
        while got < args.size:
            got += len(receive(client, args.busy_poll))
        if i >= 1000:  # warm-up
            samples.append(time.perf_counter_ns() - start)
    client.close()
    os.waitpid(child, 0)
    samples.sort()
    p50 = samples[len(samples) // 2] / 1000
    p99 = samples[len(samples) * 99 // 100] / 1000
    where = "same CPU" if args.same_cpu else "any CPU, busy-polling" if args.busy_poll else "any CPU"
    print(f"loopback TCP round trip ({where}, {args.size} B, {args.count} samples): "
          f"p50 {p50:.1f} µs, p99 {p99:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
