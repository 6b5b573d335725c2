"""A pytest plugin that lets Barbican's functional tests run against a no-auth API.

The tests authenticate every user they name through Keystone and send the token. Here each
of those users is instead given a fixed project, user id and roles, sent as the
X-Project-Id, X-User-Id and X-Roles headers that a no-auth Barbican (and the appliance in
its `noauth` identity mode) takes as the caller's identity.
"""

import os
import uuid

from requests import auth as requests_auth

from functionaltests.common import auth as functional_auth
from functionaltests.common import config

# The roles each user has: in legacy mode, those Barbican's devstack plugin gives them
# (admin, creator, observer, audit, key-manager:service-admin). In secure-RBAC mode each user
# also has the default role that stands for its legacy one (creator: member; observer and
# auditor: reader; the service admin: admin), as a deployment moving to the new defaults
# assigns them. Keystone's admin role implies member, which implies reader; a token lists
# the implied roles too, so they are listed here.
ADMIN = ["admin", "member", "reader"]
LEGACY = {"admin": ADMIN, "service_admin": ["key-manager:service-admin"], "creator": ["creator"],
          "observer": ["observer"], "auditor": ["audit"]}
SRBAC = {"admin": ADMIN, "service_admin": ["key-manager:service-admin"] + ADMIN,
         "creator": ["creator", "member", "reader"], "observer": ["observer", "reader"],
         "auditor": ["audit", "reader"]}


def _roles_of(conf):
    personas = SRBAC if os.environ.get("BARBICAN_FUNCTIONAL_MODE") == "srbac" else LEGACY
    identity = conf.identity
    rbac = conf.rbac_users
    users = {identity.username: "admin", identity.service_admin: "service_admin"}
    for project in ("a", "b"):
        for persona in ("admin", "creator", "observer", "auditor"):
            users[getattr(rbac, "%s_%s" % (persona, project))] = persona
    users[rbac.creator_a_2] = "creator"
    return {user: personas[persona] for user, persona in users.items()}


def _opaque_id(kind, name):
    """A stable Keystone-like id (32 hex digits) for a user or project name."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "barbican-functional/%s/%s" % (kind, name)).hex


class NoAuth(requests_auth.AuthBase):
    """Stands in for `FunctionalTestAuth`, with the same constructor."""

    def __init__(self, endpoint, version, username, password, project_name, project_domain):
        self.username = username
        self.project_name = project_name
        self.project_id = _opaque_id("project", project_name)
        self.user_id = _opaque_id("user", username)
        self.roles = _roles_of(config.get_config()).get(username, [])

    @property
    def service_catalog(self):
        raise RuntimeError("no Keystone here: set [keymanager] override_url")

    def authenticate(self):
        return {"token": None, "project_id": self.project_id, "user_id": self.user_id}

    def get_user_id(self):
        return self.user_id

    def get_project_id(self):
        return self.project_id

    def __call__(self, request):
        request.headers["X-Project-Id"] = self.project_id
        request.headers["X-User-Id"] = self.user_id
        request.headers["X-Roles"] = ",".join(self.roles)
        return request


functional_auth.FunctionalTestAuth = NoAuth
