#!/usr/bin/env python3
"""Castellan's key operations against a key manager behind Keystone, as Cinder and Nova call them.

Runs create_key(AES, 256) and get (of the unnamed key just made) in turn, with a request
context carrying the user's token, and prints the median and 99th percentile of each, the
HTTP requests one get takes and how long it waits on the key manager and on Keystone. Point it at the appliance or at a Barbican with the same Keystone.

    bench/castellan-latency.py --endpoint http://127.0.0.1:9311 --keystone DIR/keystone.json \\
        [--user alice] [--count 50]

keystone.json is what tests/keystone/harness.py writes (auth_url, users, passwords, projects).
"""
import argparse
import json
import statistics
import time

import requests
from castellan import key_manager, options
from keystoneauth1 import identity, session
from oslo_config import cfg
from oslo_context import context


def p99(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True, help="the key manager's URL")
    p.add_argument("--keystone", required=True, help="keystone.json from tests/keystone/harness.py")
    p.add_argument("--user", default="alice")
    p.add_argument("--count", type=int, default=50)
    args = p.parse_args()
    ks = json.load(open(args.keystone))
    u = ks["users"][args.user]
    auth = identity.v3.Password(auth_url=ks["auth_url"], username=args.user, password=u["password"],
                                project_name=u["project"], user_domain_id="default", project_domain_id="default")
    ctx = context.RequestContext(auth_token=session.Session(auth=auth).get_token(), project_id=u["project_id"])
    conf = cfg.ConfigOpts()
    options.set_defaults(conf, backend="barbican", barbican_endpoint=args.endpoint, auth_endpoint=ks["auth_url"])
    km = key_manager.API(conf)

    # Count the HTTP requests of one get by wrapping the transport every client uses.
    sent = []
    original = requests.Session.request

    def counting(self, method, url, *a, **kw):
        t0 = time.perf_counter()
        try:
            return original(self, method, url, *a, **kw)
        finally:
            sent.append((method, url, time.perf_counter() - t0))

    requests.Session.request = counting
    creates, gets, requests_per_get, keystone_per_get, waits = [], [], [], [], []
    key_ids = []
    for _ in range(args.count):
        t0 = time.perf_counter()
        key_id = km.create_key(ctx, algorithm="AES", length=256)
        creates.append(time.perf_counter() - t0)
        key_ids.append(key_id)
        sent.clear()
        t0 = time.perf_counter()
        key = km.get(ctx, key_id)
        gets.append(time.perf_counter() - t0)
        ours = [s[2] for s in sent if s[1].startswith(args.endpoint)]
        theirs = [s[2] for s in sent if s[1].startswith(ks["auth_url"].rsplit("/v3", 1)[0])]
        requests_per_get.append(len(ours))
        keystone_per_get.append(len(theirs))
        waits.append((sum(ours), sum(theirs)))
        assert len(key.get_encoded()) == 32
    for key_id in key_ids:
        km.delete(ctx, key_id)
    print("castellan against %s, %d rounds" % (args.endpoint, args.count))
    print("  create_key  median %7.1f ms   p99 %7.1f ms" % (statistics.median(creates) * 1e3, p99(creates) * 1e3))
    print("  get         median %7.1f ms   p99 %7.1f ms   (HTTP requests: %d to the key manager, %d to Keystone)"
          % (statistics.median(gets) * 1e3, p99(gets) * 1e3, statistics.median(requests_per_get),
             statistics.median(keystone_per_get)))
    print("              waiting on the key manager median %.1f ms, on Keystone median %.1f ms, the rest is the client"
          % (statistics.median(w[0] for w in waits) * 1e3, statistics.median(w[1] for w in waits) * 1e3))


if __name__ == "__main__":
    main()
