#!/usr/bin/env python3
"""Order completion latency through python-barbicanclient, as Castellan sees it.

Submits key orders one after another and polls each until it is ACTIVE, then prints the
median and 99th percentile of submit-to-ACTIVE, and how many orders were already ACTIVE at
Castellan's first poll (0.25 s after submitting).

    bench/order-latency.py --endpoint http://127.0.0.1:9311 [--count 200] [--project bench]
"""
import argparse
import statistics
import time

from barbicanclient import client


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--project", default="order-latency")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--type", choices=["key", "asymmetric"], default="key")
    args = p.parse_args()
    bc = client.Client(endpoint=args.endpoint, project_id=args.project)
    latencies = []
    for i in range(args.count):
        if args.type == "key":
            order = bc.orders.create_key(name="bench-%d" % i, algorithm="aes", bit_length=256, mode="cbc")
        else:
            order = bc.orders.create_asymmetric(name="bench-%d" % i, algorithm="rsa", bit_length=2048)
        start = time.perf_counter()
        ref = order.submit()
        while True:
            status = bc.orders.get(ref).status
            if status != "PENDING":
                break
        elapsed = time.perf_counter() - start
        if status != "ACTIVE":
            raise SystemExit("order %s ended %s" % (ref, status))
        latencies.append(elapsed)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    at_first_poll = sum(1 for x in latencies if x <= 0.25)
    print("%d %s orders: submit-to-ACTIVE median %.1f ms, p99 %.1f ms, max %.1f ms; "
          "%d/%d ACTIVE by Castellan's first poll (250 ms)"
          % (len(latencies), args.type, statistics.median(latencies) * 1000, p99 * 1000,
             latencies[-1] * 1000, at_first_poll, len(latencies)))


if __name__ == "__main__":
    main()
