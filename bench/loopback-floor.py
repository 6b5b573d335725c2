#!/usr/bin/env python3
"""The floor under any low-load latency figure on this machine: a bare round trip between two
processes over loopback TCP (no TLS, no framing), blocking sockets, TCP_NODELAY.

    bench/loopback-floor.py [--count 20000] [--size 48] [--same-cpu]

Prints p50 and p99 in microseconds. Waking a process parked on another CPU costs most of it on a
virtual machine; --same-cpu pins both processes to CPU 0 to show how much.
"""

import argparse
import os
import socket
import sys
import time


def echo(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        data = conn.recv(65536)
        if not data:
            os._exit(0)
        conn.sendall(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="round trips measured")
    parser.add_argument("--size", type=int, default=48, help="bytes per message")
    parser.add_argument("--same-cpu", action="store_true", help="pin both processes to CPU 0")
    args = parser.parse_args()
    if args.same_cpu:
        os.sched_setaffinity(0, {0})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    child = os.fork()
    if child == 0:
        echo(listener)
    client = socket.create_connection(listener.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = b"x" * args.size
    samples = []
    for i in range(args.count + 1000):
        start = time.perf_counter_ns()
        client.sendall(message)
        got = 0
        while got < args.size:
            got += len(client.recv(65536))
        if i >= 1000:  # warm-up
            samples.append(time.perf_counter_ns() - start)
    client.close()
    os.waitpid(child, 0)
    samples.sort()
    p50 = samples[len(samples) // 2] / 1000
    p99 = samples[len(samples) * 99 // 100] / 1000
    where = "same CPU" if args.same_cpu else "any CPU"
    print(f"loopback TCP round trip ({where}, {args.size} B, {args.count} samples): "
          f"p50 {p50:.1f} µs, p99 {p99:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
