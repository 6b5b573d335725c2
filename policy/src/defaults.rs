//! Barbican 23.0.0's default policy: every rule's name, check string, pre-Wallaby
//! (deprecated) form, and the scopes it accepts.
//!
//! The check strings are Barbican's own, from `barbican/common/policies/` (rule names and
//! strings are what operators' policy files override, so they must match).

/// One rule of the default policy.
#[derive(Clone, Copy, Debug)]
pub struct RuleDefault {
    /// The rule's name (`secrets:get`, `secret_project_match`, ...).
    pub name: &'static str,
    /// The check string.
    pub check: &'static str,
    /// The rule before the secure-RBAC defaults, ORed in when `enforce_new_defaults` is off.
    pub deprecated: Option<&'static str>,
    /// Token scopes the rule accepts; empty for the building blocks (any scope).
    pub scope_types: &'static [&'static str],
}

const PROJECT: &[&str] = &["project"];
const NONE: &[&str] = &[];

const fn base(name: &'static str, check: &'static str) -> RuleDefault {
    RuleDefault { name, check, deprecated: None, scope_types: NONE }
}

const fn with_legacy(
    name: &'static str,
    check: &'static str,
    deprecated: &'static str,
) -> RuleDefault {
    RuleDefault { name, check, deprecated: Some(deprecated), scope_types: PROJECT }
}

/// Every default rule.
pub const BARBICAN_DEFAULTS: &[RuleDefault] = &[
    // Building blocks (barbican/common/policies/base.py).
    base("secret_project_match", "project_id:%(target.secret.project_id)s"),
    base("secret_project_reader", "role:reader and rule:secret_project_match"),
    base("secret_project_member", "role:member and rule:secret_project_match"),
    base("secret_project_admin", "role:admin and rule:secret_project_match"),
    base("secret_owner", "user_id:%(target.secret.creator_id)s"),
    base("secret_is_not_private", "True:%(target.secret.read_project_access)s"),
    base("secret_acl_read", "'read':%(target.secret.read)s"),
    base("container_project_match", "project_id:%(target.container.project_id)s"),
    base("container_project_member", "role:member and rule:container_project_match"),
    base("container_project_admin", "role:admin and rule:container_project_match"),
    base("container_owner", "user_id:%(target.container.creator_id)s"),
    base("container_is_not_private", "True:%(target.container.read_project_access)s"),
    base("container_acl_read", "'read':%(target.container.read)s"),
    base("order_project_match", "project_id:%(target.order.project_id)s"),
    base("order_project_member", "role:member and rule:order_project_match"),
    base("audit", "role:audit"),
    base("observer", "role:observer"),
    base("creator", "role:creator"),
    base("admin", "role:admin"),
    base("service_admin", "role:key-manager:service-admin"),
    base(
        "all_users",
        "rule:admin or rule:observer or rule:creator or rule:audit or rule:service_admin",
    ),
    base("all_but_audit", "rule:admin or rule:observer or rule:creator"),
    base("admin_or_creator", "rule:admin or rule:creator"),
    base("secret_creator_user", "user_id:%(target.secret.creator_id)s"),
    base("secret_private_read", "'False':%(target.secret.read_project_access)s"),
    base(
        "secret_non_private_read",
        "rule:all_users and rule:secret_project_match and not rule:secret_private_read",
    ),
    base(
        "secret_decrypt_non_private_read",
        "rule:all_but_audit and rule:secret_project_match and not rule:secret_private_read",
    ),
    base(
        "secret_project_creator",
        "rule:creator and rule:secret_project_match and rule:secret_creator_user",
    ),
    base("secret_project_creator_role", "rule:creator and rule:secret_project_match"),
    base("container_private_read", "'False':%(target.container.read_project_access)s"),
    base("container_creator_user", "user_id:%(target.container.creator_id)s"),
    base(
        "container_non_private_read",
        "rule:all_users and rule:container_project_match and not rule:container_private_read",
    ),
    base(
        "container_project_creator",
        "rule:creator and rule:container_project_match and rule:container_creator_user",
    ),
    base("container_project_creator_role", "rule:creator and rule:container_project_match"),
    // Secrets.
    with_legacy(
        "secret:decrypt",
        "True:%(enforce_new_defaults)s and (rule:secret_project_admin or \
         (rule:secret_project_member and rule:secret_owner) or \
         (rule:secret_project_member and rule:secret_is_not_private) or rule:secret_acl_read)",
        "rule:secret_decrypt_non_private_read or rule:secret_project_creator or \
         rule:secret_project_admin or rule:secret_acl_read",
    ),
    with_legacy(
        "secret:get",
        "True:%(enforce_new_defaults)s and (role:admin or rule:secret_project_admin or \
         (rule:secret_project_member and rule:secret_owner) or \
         (rule:secret_project_member and rule:secret_is_not_private) or rule:secret_acl_read)",
        "rule:secret_non_private_read or rule:secret_project_creator or \
         rule:secret_project_admin or rule:secret_acl_read",
    ),
    with_legacy(
        "secret:put",
        "True:%(enforce_new_defaults)s and (rule:secret_project_admin or \
         (rule:secret_project_member and rule:secret_owner) or \
         (rule:secret_project_member and rule:secret_is_not_private))",
        "rule:admin_or_creator and rule:secret_project_match",
    ),
    with_legacy(
        "secret:delete",
        "True:%(enforce_new_defaults)s and (role:admin or rule:secret_project_admin or \
         (rule:secret_project_member and rule:secret_owner) or \
         (rule:secret_project_member and rule:secret_is_not_private))",
        "rule:secret_project_admin or rule:secret_project_creator or \
         (rule:secret_project_creator_role and not rule:secret_private_read)",
    ),
    with_legacy(
        "secrets:post",
        "True:%(enforce_new_defaults)s and role:member",
        "rule:admin_or_creator",
    ),
    with_legacy(
        "secrets:get",
        "True:%(enforce_new_defaults)s and role:member",
        "rule:all_but_audit",
    ),
    // Secret user metadata.
    with_legacy(
        "secret_meta:get",
        "True:%(enforce_new_defaults)s and (rule:secret_project_admin or \
         (rule:secret_project_member and rule:secret_owner) or \
         (rule:secret_project_member and rule:secret_is_not_private) or rule:secret_acl_read)",
        "rule:secret_non_private_read or rule:secret_project_creator or \
         rule:secret_project_admin or rule:secret_acl_read",
    ),
    with_legacy("secret_meta:post", SECRET_WRITE, SECRET_WRITE_LEGACY),
    with_legacy("secret_meta:put", SECRET_WRITE, SECRET_WRITE_LEGACY),
    with_legacy("secret_meta:delete", SECRET_WRITE, SECRET_WRITE_LEGACY),
    // Consumers.
    with_legacy(
        "consumer:get",
        "True:%(enforce_new_defaults)s and (role:admin or \
         (rule:container_project_member and rule:container_owner) or \
         (rule:container_project_member and rule:container_is_not_private) or \
         rule:container_acl_read)",
        "rule:admin or rule:observer or rule:creator or rule:audit or \
         rule:container_non_private_read or rule:container_project_creator or \
         rule:container_project_admin or rule:container_acl_read",
    ),
    with_legacy("container_consumers:get", CONTAINER_CONSUMERS, CONTAINER_CONSUMERS_LEGACY),
    with_legacy("container_consumers:post", CONTAINER_CONSUMERS, CONTAINER_CONSUMERS_LEGACY),
    with_legacy("container_consumers:delete", CONTAINER_CONSUMERS, CONTAINER_CONSUMERS_LEGACY),
    with_legacy("secret_consumers:get", SECRET_CONSUMERS, SECRET_CONSUMERS_LEGACY),
    with_legacy("secret_consumers:post", SECRET_CONSUMERS, SECRET_CONSUMERS_LEGACY),
    with_legacy("secret_consumers:delete", SECRET_CONSUMERS, SECRET_CONSUMERS_LEGACY),
    // ACLs: only the project's admin and members (the owner, or any while the entity is not
    // private) read or change them; an ACL user does not.
    with_legacy(
        "secret_acls:get",
        SECRET_WRITE,
        "rule:all_but_audit and rule:secret_project_match",
    ),
    with_legacy("secret_acls:delete", SECRET_WRITE, SECRET_WRITE_LEGACY),
    with_legacy("secret_acls:put_patch", SECRET_WRITE, SECRET_WRITE_LEGACY),
    with_legacy(
        "container_acls:get",
        CONTAINER_WRITE,
        "rule:all_but_audit and rule:container_project_match",
    ),
    with_legacy("container_acls:delete", CONTAINER_WRITE, CONTAINER_WRITE_LEGACY),
    with_legacy("container_acls:put_patch", CONTAINER_WRITE, CONTAINER_WRITE_LEGACY),
    // Containers.
    with_legacy("containers:post", MEMBER, "rule:admin_or_creator"),
    with_legacy("containers:get", MEMBER, "rule:all_but_audit"),
    with_legacy(
        "container:get",
        "True:%(enforce_new_defaults)s and (rule:container_project_admin or \
         (rule:container_project_member and rule:container_owner) or \
         (rule:container_project_member and rule:container_is_not_private) or \
         rule:container_acl_read)",
        "rule:container_non_private_read or rule:container_project_creator or \
         rule:container_project_admin or rule:container_acl_read",
    ),
    with_legacy(
        "container:delete",
        CONTAINER_WRITE,
        "rule:container_project_admin or rule:container_project_creator",
    ),
    with_legacy("container_secret:post", CONTAINER_WRITE, CONTAINER_SECRET_WRITE_LEGACY),
    with_legacy("container_secret:delete", CONTAINER_WRITE, CONTAINER_SECRET_WRITE_LEGACY),
    // Orders.
    with_legacy("orders:get", MEMBER, "rule:all_but_audit"),
    with_legacy("orders:post", MEMBER, "rule:admin_or_creator"),
    with_legacy("orders:put", MEMBER, "rule:admin_or_creator"),
    with_legacy(
        "order:get",
        ORDER_MEMBER,
        "rule:all_users and project_id:%(target.order.project_id)s",
    ),
    with_legacy(
        "order:delete",
        ORDER_MEMBER,
        "rule:admin and project_id:%(target.order.project_id)s",
    ),
    // Quotas.
    with_legacy("quotas:get", "True:%(enforce_new_defaults)s and role:reader", "rule:all_users"),
    with_legacy(
        "project_quotas:get",
        "True:%(enforce_new_defaults)s and role:admin",
        "rule:service_admin",
    ),
    with_legacy(
        "project_quotas:put",
        "True:%(enforce_new_defaults)s and role:admin",
        "rule:service_admin",
    ),
    with_legacy(
        "project_quotas:delete",
        "True:%(enforce_new_defaults)s and role:admin",
        "rule:service_admin",
    ),
    // Secret stores.
    with_legacy(
        "secretstores:get",
        "True:%(enforce_new_defaults)s and role:reader",
        "rule:all_users",
    ),
    with_legacy(
        "secretstores:get_global_default",
        "True:%(enforce_new_defaults)s and role:reader",
        "rule:all_users",
    ),
    with_legacy(
        "secretstores:get_preferred",
        "True:%(enforce_new_defaults)s and role:reader",
        "rule:all_users",
    ),
    with_legacy(
        "secretstore_preferred:post",
        "True:%(enforce_new_defaults)s and role:admin",
        "rule:admin",
    ),
    with_legacy(
        "secretstore_preferred:delete",
        "True:%(enforce_new_defaults)s and role:admin",
        "rule:admin",
    ),
    with_legacy(
        "secretstore:get",
        "True:%(enforce_new_defaults)s and role:reader",
        "rule:all_users",
    ),
    // Transport keys.
    with_legacy("transport_key:get", READER, "rule:all_users"),
    with_legacy("transport_key:delete", ADMIN, "rule:service_admin"),
    with_legacy("transport_keys:get", READER, "rule:all_users"),
    with_legacy("transport_keys:post", ADMIN, "rule:service_admin"),
];

const MEMBER: &str = "True:%(enforce_new_defaults)s and role:member";
const READER: &str = "True:%(enforce_new_defaults)s and role:reader";
const ADMIN: &str = "True:%(enforce_new_defaults)s and role:admin";
const ORDER_MEMBER: &str = "True:%(enforce_new_defaults)s and rule:order_project_member";

const SECRET_WRITE: &str = "True:%(enforce_new_defaults)s and (rule:secret_project_admin or \
     (rule:secret_project_member and rule:secret_owner) or \
     (rule:secret_project_member and rule:secret_is_not_private))";
const SECRET_WRITE_LEGACY: &str = "rule:secret_project_admin or rule:secret_project_creator or \
     (rule:secret_project_creator_role and rule:secret_non_private_read)";

const SECRET_CONSUMERS: &str = "True:%(enforce_new_defaults)s and (rule:secret_project_admin or \
     (rule:secret_project_member and rule:secret_owner) or \
     (rule:secret_project_member and rule:secret_is_not_private) or rule:secret_acl_read)";
const SECRET_CONSUMERS_LEGACY: &str = "rule:secret_non_private_read or \
     rule:secret_project_creator or rule:secret_project_admin or rule:secret_acl_read";

const CONTAINER_CONSUMERS: &str = "True:%(enforce_new_defaults)s and \
     (rule:container_project_admin or \
     (rule:container_project_member and rule:container_owner) or \
     (rule:container_project_member and rule:container_is_not_private) or \
     rule:container_acl_read)";
const CONTAINER_CONSUMERS_LEGACY: &str = "rule:container_non_private_read or \
     rule:container_project_creator or rule:container_project_admin or \
     rule:container_acl_read";

const CONTAINER_WRITE: &str = "True:%(enforce_new_defaults)s and \
     (rule:container_project_admin or \
     (rule:container_project_member and rule:container_owner) or \
     (rule:container_project_member and rule:container_is_not_private))";
const CONTAINER_WRITE_LEGACY: &str = "rule:container_project_admin or \
     rule:container_project_creator or \
     (rule:container_project_creator_role and rule:container_non_private_read)";
const CONTAINER_SECRET_WRITE_LEGACY: &str = "rule:container_project_admin or \
     rule:container_project_creator or \
     rule:container_project_creator_role and rule:container_non_private_read";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Credentials, Decision, Policy, Scope, Target};

    fn creds(project: &str, user: Option<&str>, roles: &[&str]) -> Credentials {
        Credentials {
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            user_id: user.map(str::to_owned),
            project_id: Some(project.to_owned()),
            domain_id: None,
            scope: Scope::Project,
            attributes: Default::default(),
        }
    }

    /// A secret of project `p1` created by `owner`, optionally private with `reader` on its
    /// read ACL (as the appliance builds the target).
    fn secret(private: bool, acl_reader: Option<&str>, caller: Option<&str>) -> Target {
        let read = match (acl_reader, caller) {
            (Some(r), Some(c)) if r == c => Some("read".to_owned()),
            _ => None,
        };
        Target::new()
            .set("target.secret.project_id", "p1")
            .set("target.secret.creator_id", "owner")
            .set("target.secret.read_project_access", if private { "False" } else { "True" })
            .set_opt("target.secret.read", read)
    }

    fn allowed(policy: &Policy, action: &str, target: &Target, c: &Credentials) -> bool {
        policy.enforce(action, target, c) == Decision::Allow
    }

    #[test]
    fn every_default_parses_and_names_only_known_rules() {
        let policy = Policy::barbican(true).unwrap();
        let legacy = Policy::barbican(false).unwrap();
        for d in BARBICAN_DEFAULTS {
            assert!(policy.rule(d.name).is_some(), "{}", d.name);
            assert!(legacy.rule(d.name).is_some(), "{}", d.name);
        }
    }

    #[test]
    fn the_contract_table_for_secrets() {
        let policy = Policy::barbican(true).unwrap();
        let owner = creds("p1", Some("owner"), &["member", "reader"]);
        let other_member = creds("p1", Some("u2"), &["member", "reader"]);
        let reader = creds("p1", Some("u3"), &["reader"]);
        let project_admin = creds("p1", Some("u4"), &["admin", "member", "reader"]);
        let foreign_member = creds("p2", Some("u5"), &["member", "reader"]);
        let foreign_admin = creds("p2", Some("u6"), &["admin", "member", "reader"]);
        let listed = creds("p2", Some("u7"), &["member"]);
        let open = secret(false, None, None);

        // Collection rules: member only.
        let none = Target::new();
        assert!(allowed(&policy, "secrets:post", &none, &owner));
        assert!(!allowed(&policy, "secrets:post", &none, &reader));
        assert!(!allowed(&policy, "secrets:get", &none, &creds("p1", None, &["admin"])));

        // No ACL: owner, other members and the project admin have full access.
        for c in [&owner, &other_member, &project_admin] {
            for action in ["secret:get", "secret:decrypt", "secret:put", "secret:delete"] {
                assert!(allowed(&policy, action, &open, c), "{action} {:?}", c.user_id);
            }
        }
        // A reader alone has none.
        assert!(!allowed(&policy, "secret:get", &open, &reader));
        assert!(!allowed(&policy, "secret:decrypt", &open, &reader));
        // Other projects: 403, except a foreign admin's metadata GET and DELETE.
        for action in ["secret:get", "secret:decrypt", "secret:put", "secret:delete"] {
            assert!(!allowed(&policy, action, &open, &foreign_member), "{action}");
        }
        assert!(allowed(&policy, "secret:get", &open, &foreign_admin));
        assert!(allowed(&policy, "secret:delete", &open, &foreign_admin));
        assert!(!allowed(&policy, "secret:decrypt", &open, &foreign_admin));
        assert!(!allowed(&policy, "secret_meta:get", &open, &foreign_admin));

        // Private with u7 on the read ACL: other members lose access, u7 may read.
        let private_for = |c: &Credentials| secret(true, Some("u7"), c.user_id.as_deref());
        assert!(allowed(&policy, "secret:decrypt", &private_for(&owner), &owner));
        assert!(!allowed(&policy, "secret:get", &private_for(&other_member), &other_member));
        assert!(allowed(&policy, "secret:decrypt", &private_for(&project_admin), &project_admin));
        assert!(allowed(&policy, "secret:decrypt", &private_for(&listed), &listed));
        assert!(allowed(&policy, "secret:get", &private_for(&listed), &listed));
        assert!(!allowed(&policy, "secret:put", &private_for(&listed), &listed));
        assert!(!allowed(&policy, "secret:delete", &private_for(&listed), &listed));
    }

    #[test]
    fn a_missing_user_is_nobody_s_owner() {
        let policy = Policy::barbican(true).unwrap();
        // The secret was created without a user, and the caller sends none either.
        let target = Target::new()
            .set("target.secret.project_id", "p1")
            .set_opt("target.secret.creator_id", None)
            .set("target.secret.read_project_access", "False");
        let anonymous_member = creds("p1", None, &["member"]);
        assert!(!allowed(&policy, "secret:decrypt", &target, &anonymous_member));
    }

    #[test]
    fn scope_and_legacy_defaults() {
        let policy = Policy::barbican(true).unwrap();
        let mut domain = creds("p1", Some("owner"), &["member", "admin"]);
        domain.scope = Scope::Domain;
        domain.domain_id = Some("d".into());
        assert!(!allowed(&policy, "secrets:post", &Target::new(), &domain));
        assert!(!allowed(&policy, "secret:get", &secret(false, None, None), &domain));

        // Pre-Wallaby roles work only with enforce_new_defaults off.
        let creator = creds("p1", Some("c"), &["creator"]);
        assert!(!allowed(&policy, "secrets:post", &Target::new(), &creator));
        let legacy = Policy::barbican(false).unwrap();
        assert!(allowed(&legacy, "secrets:post", &Target::new(), &creator));
        assert!(allowed(&legacy, "quotas:get", &Target::new(), &creds("p1", None, &["audit"])));
    }

    #[test]
    fn operator_overrides_replace_rules() {
        let mut policy = Policy::barbican(true).unwrap();
        let yaml =
            "# members may no longer list\n\"secrets:get\": \"role:admin\"\nmy_rule: \"role:x\"\n";
        assert_eq!(policy.apply_overrides(yaml).unwrap(), 2);
        let member = creds("p1", Some("u"), &["member"]);
        assert!(!allowed(&policy, "secrets:get", &Target::new(), &member));
        assert!(allowed(&policy, "secrets:get", &Target::new(), &creds("p1", None, &["ADMIN"])));

        let json = r#"{"secrets:post": "rule:my_rule"}"#;
        policy.apply_overrides(json).unwrap();
        assert!(allowed(&policy, "secrets:post", &Target::new(), &creds("p1", None, &["x"])));

        assert!(matches!(policy.apply_overrides("a: [1]"), Err(crate::Error::File(_))));
        assert!(matches!(
            policy.apply_overrides("a: \"(role:x\""),
            Err(crate::Error::Syntax { .. })
        ));
        let mut cyclic = Policy::barbican(true).unwrap();
        assert!(matches!(
            cyclic.apply_overrides("a: \"rule:b\"\nb: \"rule:a\"\n"),
            Err(crate::Error::Cycle(_))
        ));
        // Unknown actions are denied.
        assert!(!allowed(&policy, "no:such", &Target::new(), &member));
    }

    /// Who asks, in project `p1`: a name, the user, the roles. `creator` and `member` own the
    /// entities of `corrected_rules_follow_barbican`.
    const PEOPLE: &[(&str, &str, &[&str])] = &[
        ("observer", "o", &["observer"]),
        ("auditor", "a", &["audit"]),
        ("creator", "owner", &["creator"]),
        ("creator2", "c2", &["creator"]),
        ("member", "owner", &["member", "reader"]),
        ("member2", "m2", &["member", "reader"]),
        ("reader", "r", &["reader"]),
        ("admin", "ad", &["admin"]),
        ("service_admin", "s", &["key-manager:service-admin"]),
    ];

    /// Rules whose defaults once let the legacy roles in under the secure-RBAC defaults (or
    /// missed their deprecated form): who each lets in, with the new defaults and then with the
    /// legacy roles, on a secret, container and order of `p1` that `owner` created and that is
    /// not private. Barbican 23.0.0's oslo.policy gives the same answers.
    #[test]
    fn corrected_rules_follow_barbican() {
        const META_WRITE: (&str, &str) = ("member member2 admin", "creator creator2 admin");
        const ENTITY_READ: (&str, &str) =
            ("member member2 admin", "observer auditor creator creator2 admin service_admin");
        const ACL_READ: (&str, &str) = ("member member2 admin", "observer creator creator2 admin");
        const LIST: (&str, &str) = ("member member2", "observer creator creator2 admin");
        const CREATE: (&str, &str) = ("member member2", "creator creator2 admin");
        const KEYS_READ: (&str, &str) =
            ("member member2 reader", "observer auditor creator creator2 admin service_admin");
        const KEYS_WRITE: (&str, &str) = ("admin", "service_admin");
        let expected: &[(&str, (&str, &str))] = &[
            ("secret_meta:get", ENTITY_READ),
            ("secret_meta:post", META_WRITE),
            ("secret_meta:put", META_WRITE),
            ("secret_meta:delete", META_WRITE),
            ("secret_acls:get", ACL_READ),
            ("secret_acls:delete", META_WRITE),
            ("secret_acls:put_patch", META_WRITE),
            ("container_acls:get", ACL_READ),
            ("container_acls:delete", META_WRITE),
            ("container_acls:put_patch", META_WRITE),
            ("containers:post", CREATE),
            ("containers:get", LIST),
            ("container:get", ENTITY_READ),
            ("container:delete", ("member member2 admin", "creator admin")),
            ("container_secret:post", META_WRITE),
            ("container_secret:delete", META_WRITE),
            ("orders:get", LIST),
            ("orders:post", CREATE),
            ("orders:put", CREATE),
            ("order:get", ("member member2", ENTITY_READ.1)),
            ("order:delete", ("member member2", "admin")),
            ("transport_key:get", KEYS_READ),
            ("transport_key:delete", KEYS_WRITE),
            ("transport_keys:get", KEYS_READ),
            ("transport_keys:post", KEYS_WRITE),
        ];
        let mut target = Target::new().set("target.order.project_id", "p1");
        for kind in ["secret", "container"] {
            target = target
                .set(&format!("target.{kind}.project_id"), "p1")
                .set(&format!("target.{kind}.creator_id"), "owner")
                .set(&format!("target.{kind}.read_project_access"), "True");
        }
        for (enforce_new_defaults, pick) in [(true, 0), (false, 1)] {
            let policy = Policy::barbican(enforce_new_defaults).unwrap();
            for (action, allowed_both) in expected {
                let want = if pick == 0 { allowed_both.0 } else { allowed_both.1 };
                let got: Vec<&str> = PEOPLE
                    .iter()
                    .filter(|(_, user, roles)| {
                        allowed(&policy, action, &target, &creds("p1", Some(user), roles))
                    })
                    .map(|(name, _, _)| *name)
                    .collect();
                assert_eq!(
                    got.join(" "),
                    want,
                    "{action} with enforce_new_defaults = {enforce_new_defaults}"
                );
            }
        }
    }

    /// Under the secure-RBAC defaults an ACL user may read the entity but not its ACL, and a
    /// private entity's ACL is its owner's and the admin's only.
    #[test]
    fn acl_rules_on_private_entities() {
        let policy = Policy::barbican(true).unwrap();
        let owner = creds("p1", Some("owner"), &["member", "reader"]);
        let colleague = creds("p1", Some("u2"), &["member", "reader"]);
        let admin = creds("p1", Some("ad"), &["admin"]);
        let listed = creds("p2", Some("u7"), &["member", "reader"]);
        for kind in ["secret", "container"] {
            let private_for = |c: &Credentials| {
                let read = (c.user_id.as_deref() == Some("u7")).then(|| "read".to_owned());
                Target::new()
                    .set(&format!("target.{kind}.project_id"), "p1")
                    .set(&format!("target.{kind}.creator_id"), "owner")
                    .set(&format!("target.{kind}.read_project_access"), "False")
                    .set_opt(&format!("target.{kind}.read"), read)
            };
            let get = if kind == "secret" { "secret:get" } else { "container:get" };
            let acl_get = format!("{kind}_acls:get");
            let acl_put = format!("{kind}_acls:put_patch");
            for action in [acl_get.as_str(), acl_put.as_str(), get] {
                assert!(allowed(&policy, action, &private_for(&owner), &owner), "{action}");
                assert!(allowed(&policy, action, &private_for(&admin), &admin), "{action}");
                assert!(
                    !allowed(&policy, action, &private_for(&colleague), &colleague),
                    "{action}"
                );
            }
            assert!(allowed(&policy, get, &private_for(&listed), &listed), "{kind}");
            assert!(!allowed(&policy, &acl_get, &private_for(&listed), &listed), "{kind}");
        }
    }
}
