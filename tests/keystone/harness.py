#!/usr/bin/env python3
"""A real Keystone on loopback for the end-to-end tests.

    harness.py start --dir DIR [--port PORT]   set up and start Keystone; write DIR/keystone.json
    harness.py catalog --dir DIR --url URL     register URL as the key-manager endpoint
    harness.py stop --dir DIR                  stop it

Keystone runs under gunicorn with SQLite and fernet tokens. `start` bootstraps an admin, then
creates a `service` project with a `barbican` service user (roles admin and service), projects
`alpha` and `beta`, and users `alice` (member of alpha), `bob` (member of beta), `rita` (reader
of alpha) and `adam` (admin of alpha). keystone.json lists every name, id and password.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CONF = """
[DEFAULT]
log_file = {dir}/keystone.log
[database]
connection = sqlite:///{dir}/keystone.db
[token]
provider = fernet
expiration = 3600
[fernet_tokens]
key_repository = {dir}/fernet-keys
[fernet_receipts]
key_repository = {dir}/fernet-receipts
[credential]
key_repository = {dir}/credential-keys
[identity]
# The default bcrypt cost makes every password login take ~350 ms.
password_hash_rounds = 4
[cache]
enabled = true
backend = dogpile.cache.memory
"""

# Keystone's WSGI entry point reads the command line; gunicorn's flags make it exit.
WSGI = """
import os, sys
sys.argv = sys.argv[:1]
os.environ["OS_KEYSTONE_CONFIG_FILES"] = {conf!r}
from keystone.server.wsgi import initialize_public_application
application = initialize_public_application()
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def manage(conf, *args):
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "keystone-manage"), "--config-file", conf, *args],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def start(d, port):
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "keystone.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(dir=d))
    for sub in ("fernet-keys", "fernet-receipts", "credential-keys"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    user = os.environ.get("USER") or subprocess.check_output(["id", "-un"]).decode().strip()
    group = subprocess.check_output(["id", "-gn"]).decode().strip()
    manage(conf, "db_sync")
    manage(conf, "fernet_setup", "--keystone-user", user, "--keystone-group", group)
    manage(conf, "credential_setup", "--keystone-user", user, "--keystone-group", group)
    url = "http://127.0.0.1:%d/v3" % port
    manage(conf, "bootstrap", "--bootstrap-password", "admin-secret", "--bootstrap-admin-url", url,
           "--bootstrap-public-url", url, "--bootstrap-internal-url", url, "--bootstrap-region-id", "RegionOne")
    with open(os.path.join(d, "wsgi.py"), "w") as f:
        f.write(WSGI.format(conf=conf))
    log = open(os.path.join(d, "gunicorn.log"), "w")
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "gunicorn"), "--bind", "127.0.0.1:%d" % port,
         "--workers", "2", "--chdir", d, "--pid", os.path.join(d, "gunicorn.pid"),
         "--access-logfile", os.path.join(d, "access.log"), "wsgi:application"],
        stdout=log, stderr=log, start_new_session=True)
    deadline = time.time() + 60
    from keystoneauth1 import session as ks_session
    from keystoneauth1.identity import v3
    from keystoneclient.v3 import client as ks_client
    while True:
        try:
            auth = v3.Password(auth_url=url, username="admin", password="admin-secret", project_name="admin",
                               user_domain_id="default", project_domain_id="default")
            sess = ks_session.Session(auth=auth)
            ks = ks_client.Client(session=sess)
            ks.projects.list()
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit("keystone did not start; see %s" % log.name)
            time.sleep(0.3)

    def role(name):
        found = [r for r in ks.roles.list() if r.name == name]
        return found[0] if found else ks.roles.create(name)

    service = ks.projects.create("service", domain="default")
    info = {"auth_url": url, "pid": proc.pid, "dir": d, "projects": {}, "users": {}}
    for pname in ("alpha", "beta"):
        info["projects"][pname] = ks.projects.create(pname, domain="default").id
    info["projects"]["service"] = service.id
    people = [("barbican", "service", ["admin", "service"]), ("alice", "alpha", ["member"]),
              ("bob", "beta", ["member"]), ("rita", "alpha", ["reader"]), ("adam", "alpha", ["admin"]),
              ("nova", "service", ["service"])]
    for name, project, roles in people:
        password = name + "-password"
        u = ks.users.create(name, domain="default", password=password)
        for r in roles:
            ks.roles.grant(role(r), user=u, project=info["projects"][project])
        info["users"][name] = {"id": u.id, "password": password, "project": project, "project_id": info["projects"][project]}
    with open(os.path.join(d, "keystone.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(json.dumps({"auth_url": url, "pid": proc.pid}))


def catalog(d, url):
    """Registers the appliance as the key-manager service (for the openstack CLI)."""
    info = json.load(open(os.path.join(d, "keystone.json")))
    from keystoneauth1 import session as ks_session
    from keystoneauth1.identity import v3
    from keystoneclient.v3 import client as ks_client
    auth = v3.Password(auth_url=info["auth_url"], username="admin", password="admin-secret", project_name="admin",
                       user_domain_id="default", project_domain_id="default")
    ks = ks_client.Client(session=ks_session.Session(auth=auth))
    service = ks.services.create(name="barbican", type="key-manager")
    for interface in ("public", "internal", "admin"):
        ks.endpoints.create(service=service, url=url, interface=interface, region="RegionOne")


def stop(d):
    """Stops Keystone and returns once its port refuses connections."""
    try:
        pid = int(open(os.path.join(d, "gunicorn.pid")).read().strip())
        port = int(json.load(open(os.path.join(d, "keystone.json")))["auth_url"].rsplit(":", 1)[1].split("/")[0])
    except (OSError, ValueError, KeyError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.1)
    # Graceful shutdown did not finish: take the whole process group down.
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["start", "stop", "catalog"])
    p.add_argument("--url", help="catalog: the appliance's API URL")
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    d = os.path.abspath(a.dir)
    if a.command == "start":
        start(d, a.port or free_port())
    elif a.command == "catalog":
        catalog(d, a.url)
    else:
        stop(d)


if __name__ == "__main__":
    main()
