"""Runs Barbican 23.0.0's own functional tests (functionaltests/api/v1) against the appliance.

Started by `tests/barbican-functional/run`, which prepares the venv and the sdist. Three
modes, each on an appliance of its own with its own database, all on one `appliance dev`
stack's HSM proxy:
- `srbac`: the secure-RBAC defaults and one secret store, Barbican's default configuration
  (an `appliance serve` beside the stack);
- `legacy`: the legacy roles (`enforce_new_defaults = false`), one store, `host_href` set
  (another `appliance serve`);
- `stores`: the legacy roles with the secret-store API served
  (`enable_multiple_secret_stores = true`; a third `appliance serve`), running only the tests
  of multiple stores, which the other two modes skip as Barbican's default configuration does.
Each mode's results are compared with its list of expected failures: a test that fails
without being listed fails the run.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("srbac", "legacy", "stores")

# The tests that expect Keystone's 401 for a request without a token: a no-auth API has no
# tokens to check.
DESELECT = "not unauthed and not no_token"

# Tests that pass in each mode at least: fewer (more skipped, or fewer collected) fails the run
# as a new failure does. Raise them when fixes make more tests pass.
MIN_PASSED = {"srbac": 486, "legacy": 512, "stores": 29}

# The tests of multiple secret stores: the only ones the `stores` mode runs.
STORES_TESTS = "SecretsMultipleBackendTestCase or SecretStoresTestCase"

# Classes that count everything in a project or change its quotas, which other tests running
# at the same time would disturb (Barbican's run_tests_parallel.sh runs them alone too).
SERIAL_CLASSES = ("ProjectQuotasPagingTestCase", "QuotaEnforcementTestCase",
                  "ListingSecretsTestCase")


def log(msg):
    print(msg, flush=True)


def wait_for(what, check, timeout):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit("barbican-functional: timed out waiting for %s" % what)
        time.sleep(0.1)


def answers(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except OSError:
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The dev stack, and the appliances beside it on its proxy; stopped by process id."""

    def __init__(self, appliance, workdir):
        self.appliance = appliance
        self.workdir = workdir
        self.procs = []
        self.urls = {}

    def start(self, modes):
        data = os.path.join(self.workdir, "data")
        dev_json = os.path.join(data, "dev.json")
        if os.path.exists(dev_json):
            os.remove(dev_json)
        for db in ("appliance.db", "legacy.db"):
            for suffix in ("", "-wal", "-shm"):
                path = os.path.join(data, db + suffix)
                if os.path.exists(path):
                    os.remove(path)
        os.makedirs(data, exist_ok=True)
        dev_log = open(os.path.join(self.workdir, "dev.log"), "w")
        self.procs.append(subprocess.Popen(
            [self.appliance, "dev", "--listen", "127.0.0.1:0", "--data-dir", data],
            stdout=dev_log, stderr=subprocess.STDOUT))

        def read_dev_json():
            if self.procs[0].poll() is not None:
                raise SystemExit("barbican-functional: appliance dev exited; see %s"
                                 % dev_log.name)
            try:
                with open(dev_json) as f:
                    return json.load(f)
            except (OSError, ValueError):
                return None

        dev = wait_for("dev.json", read_dev_json, 120)
        wait_for("the dev stack's API", lambda: answers(dev["api_url"] + "/"), 60)
        for mode in modes:
            self.urls[mode] = self.start_serve(mode, dev, data)

    def start_serve(self, mode, dev, data):
        """The appliance of `mode` on the dev stack's proxy (see `NEW_DEFAULTS`,
        `MULTIPLE_BACKENDS`, `HOST_HREF_SET`). With multiple secret stores disabled, Barbican's
        default, every secret-store route answers 404. With `host_href` set, hrefs never follow
        a client's Host header, which the tests check when told `server_host_href_set = True`.
        Its port must be known before it starts, so a free one is picked (again if taken
        meanwhile)."""
        for _ in range(3):
            url = self.try_serve(mode, dev, data, free_port())
            if url:
                return url
        raise SystemExit("barbican-functional: no free port for the %s-mode appliance" % mode)

    def try_serve(self, mode, dev, data, port):
        config = os.path.join(self.workdir, "%s.toml" % mode)
        pki = dev["pki"]
        host_href = 'host_href = "http://127.0.0.1:%d"' % port if HOST_HREF_SET[mode] else ""
        with open(config, "w") as f:
            f.write("""[server]
listen = "127.0.0.1:{port}"
{host_href}

[database]
url = "sqlite://{db}"

[hsm]
endpoints = ["{proxy}"]
server_name = "hsm-proxy"
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[identity]
source = "noauth"
allow_noauth = true

[policy]
enforce_new_defaults = {new_defaults}

[secretstore]
enable_multiple_secret_stores = {multiple}

# Barbican processes an order before answering its POST, and these tests read the order once,
# expecting it done: wait for it as long as a busy machine may take to make an RSA key.
[orders]
inline_wait_ms = 60000

[metrics]
listen = "127.0.0.1:0"
""".format(port=port, host_href=host_href, db=os.path.join(data, "%s.db" % mode),
                proxy=dev["proxy"]["address"], ca=pki["ca"], cert=pki["client_cert"],
                key=pki["client_key"], new_defaults=toml_bool(NEW_DEFAULTS[mode]),
                multiple=toml_bool(MULTIPLE_BACKENDS[mode])))
        log_path = os.path.join(self.workdir, "%s.log" % mode)
        out = open(log_path, "w")
        env = dict(os.environ, NO_COLOR="1")
        proc = subprocess.Popen([self.appliance, "--log-level", "info", "serve",
                                 "--config", config],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)

        def listening():
            with open(log_path) as f:
                text = f.read()
            if proc.poll() is not None:
                if "binding" in text:
                    return "taken"
                raise SystemExit("barbican-functional: the %s-mode appliance exited; "
                                 "see %s" % (mode, log_path))
            return "listening" if "serving the Barbican v1 API" in text else None

        if wait_for("the %s-mode appliance" % mode, listening, 60) == "taken":
            return None
        url = "http://127.0.0.1:%d" % port
        wait_for("the %s-mode API" % mode, lambda: answers(url + "/"), 30)
        return url

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# What each mode's appliance is: its policy defaults (oslo.policy's `enforce_new_defaults`),
# whether it serves the secret-store API with its one store (as Barbican does with
# `enable_multiple_secret_stores = True`; off is Barbican's default), and whether `host_href`
# is set (the hrefs then never follow the Host header).
NEW_DEFAULTS = {"srbac": True, "legacy": False, "stores": False}
MULTIPLE_BACKENDS = {"srbac": False, "legacy": False, "stores": True}
HOST_HREF_SET = {"srbac": False, "legacy": True, "stores": False}


def toml_bool(value):
    return "true" if value else "false"

FUNCTIONAL_CONF = """[identity]
uri = http://keystone.invalid/v3
[keymanager]
override_url = {url}
override_url_version = v1
timeout = 60
server_host_href_set = {host_href_set}
server_multiple_backends_enabled = {multiple_backends}
"""


def run_pytest(python, sdist, mode, url, workdir, workers, tag, appliance, multiple):
    """Runs the tree in one mode; returns {test id: outcome} from pytest's JUnit XML.
    `appliance`: the API is the appliance's (else Barbican's, as `multiple` says)."""
    modedir = os.path.join(workdir, mode + tag)
    os.makedirs(os.path.join(modedir, "etc", "barbican"), exist_ok=True)
    with open(os.path.join(modedir, "etc", "barbican", "barbican-functional.conf"), "w") as f:
        f.write(FUNCTIONAL_CONF.format(
            url=url, host_href_set=appliance and HOST_HREF_SET[mode],
            multiple_backends=MULTIPLE_BACKENDS[mode] if appliance else multiple))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([HERE, sdist])
    env["BARBICAN_FUNCTIONAL_MODE"] = mode
    env.pop("PYTEST_ADDOPTS", None)
    serial = " or ".join(SERIAL_CLASSES)
    selected = "(%s) and (%s)" % (DESELECT, STORES_TESTS) if mode == "stores" else DESELECT
    runs = [
        ("parallel", "(%s) and not (%s)" % (selected, serial),
         ["-n", str(workers)] if workers > 1 else []),
        ("serial", "(%s) and (%s)" % (selected, serial), []),
    ]
    results = {}
    for name, expr, extra in runs:
        xml = os.path.join(modedir, "%s.xml" % name)
        if os.path.exists(xml):
            os.remove(xml)
        cmd = [python, "-m", "pytest", "-p", "noauth", "-p", "no:cacheprovider", "-q",
               "--rootdir", sdist, "-k", expr, "--junitxml", xml, "--tb=short"] + extra + [
            os.path.join(sdist, "functionaltests", "api", "v1")]
        with open(os.path.join(modedir, "%s.log" % name), "w") as out:
            subprocess.run(cmd, cwd=modedir, env=env, stdout=out, stderr=subprocess.STDOUT)
        results.update(parse_junit(xml))
    return results


def parse_junit(path):
    results = {}
    if not os.path.exists(path):
        raise SystemExit("barbican-functional: pytest wrote no %s (see the log beside it)"
                         % path)
    for case in ET.parse(path).getroot().iter("testcase"):
        cls = case.get("classname", "")
        if not cls:
            # A module that failed to import: nothing in it ran.
            raise SystemExit("barbican-functional: pytest could not collect %s (see %s)"
                             % (case.get("name"), path.replace(".xml", ".log")))
        test_id = "%s::%s" % (cls, case.get("name"))
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        if results.get(test_id) == "failed":
            continue  # an error in teardown after a failure
        results[test_id] = outcome
    return results


def expected_failures(mode):
    path = os.path.join(HERE, "expected-failures-%s.txt" % mode)
    listed = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            test_id, _, why = line.partition(" ")
            listed[test_id] = why.strip()
    return listed


def report(mode, results, min_passed, expected):
    """Prints the summary; whether it is as expected. `expected` None: no list to compare."""
    counts = {}
    for outcome in results.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    failed = sorted(t for t, o in results.items() if o == "failed")
    listed = expected is not None
    if not listed:
        expected = {t: "" for t in failed}
    unexpected = [t for t in failed if t not in expected]
    fixed = sorted(t for t in expected if results.get(t) == "passed")
    summary = ", ".join("%d %s" % (counts[k], k) for k in ("passed", "failed", "skipped")
                        if counts.get(k))
    note = "%d failures expected" % len(expected) if listed else "no expected list"
    log("==== %s mode: %s (%s) ====" % (mode, summary or "no tests", note))
    for t in failed:
        log("FAILED %s%s" % (t, "  (expected)" if listed and t not in unexpected else ""))
    for t in fixed:
        log("PASSED %s  (listed as an expected failure: take it off the list)" % t)
    missing = sorted(t for t in expected if t not in results)
    for t in missing:
        log("MISSING %s  (listed as an expected failure but not run)" % t)
    if counts.get("passed", 0) < min_passed:
        log("FEWER PASSED than the %d expected" % min_passed)
        return False
    return bool(results) and not unexpected


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appliance", required=True)
    parser.add_argument("--python", required=True, help="the venv's python")
    parser.add_argument("--sdist", required=True, help="the unpacked barbican-23.0.0")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--mode", choices=MODES + ("all",), default="all")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--url", help="test this API (one mode) instead of starting the appliance")
    parser.add_argument("--multiple-backends", action="store_true",
                        help="with --url: the API has multiple secret stores enabled")
    args = parser.parse_args()
    modes = MODES if args.mode == "all" else (args.mode,)
    os.makedirs(args.workdir, exist_ok=True)
    stack = Stack(args.appliance, args.workdir)
    ok = True
    try:
        if args.url:
            if len(modes) != 1:
                raise SystemExit("barbican-functional: --url needs one --mode")
            stack.urls[modes[0]] = args.url
        else:
            stack.start(modes)
        for mode in modes:
            started = time.monotonic()
            log("running Barbican's functional tests, %s mode, against %s"
                % (mode, stack.urls[mode]))
            results = run_pytest(args.python, args.sdist, mode, stack.urls[mode],
                                 args.workdir, args.workers, "-url" if args.url else "",
                                 not args.url, args.multiple_backends)
            if args.url:
                ok = report(mode, results, 0, None) and ok
            else:
                ok = report(mode, results, MIN_PASSED[mode], expected_failures(mode)) and ok
            log("(%s mode took %.0f s; logs in %s)" % (mode, time.monotonic() - started,
                                                       os.path.join(args.workdir, mode + ("-url" if args.url else ""))))
    finally:
        stack.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
