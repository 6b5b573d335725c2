//! Barbican 23.0.0's default policy: every rule's name, check string, pre-Wallaby
//! (deprecated) form, and the scopes it accepts.
//!
//! The check strings are Barbican's own (rule names and strings are what operators' policy
//! files override, so they must match); the transport-key rules follow the API contract.

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

const fn project(name: &'static str, check: &'static str) -> RuleDefault {
    RuleDefault { name, check, deprecated: None, scope_types: PROJECT }
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
    project(
        "secret_meta:get",
        "rule:secret_non_private_read or rule:secret_project_creator or \
         rule:secret_project_admin or rule:secret_acl_read or \
         (role:member and project_id:%(target.secret.project_id)s and \
         (user_id:%(target.secret.creator_id)s or True:%(target.secret.read_project_access)s)) \
         or role:admin and project_id:%(target.secret.project_id)s",
    ),
    project("secret_meta:post", SECRET_META_WRITE),
    project("secret_meta:put", SECRET_META_WRITE),
    project("secret_meta:delete", SECRET_META_WRITE),
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
    // ACLs.
    project(
        "secret_acls:get",
        "(rule:all_but_audit and rule:secret_project_match) or \
         (role:member and project_id:%(target.secret.project_id)s and \
         (user_id:%(target.secret.creator_id)s or True:%(target.secret.read_project_access)s)) \
         or role:admin and project_id:%(target.secret.project_id)s",
    ),
    project("secret_acls:delete", SECRET_ACL_WRITE),
    project("secret_acls:put_patch", SECRET_ACL_WRITE),
    project(
        "container_acls:get",
        "(rule:all_but_audit and rule:container_project_match) or \
         (role:member and project_id:%(target.container.project_id)s and \
         (user_id:%(target.container.creator_id)s or \
         True:%(target.container.read_project_access)s)) \
         or role:admin and project_id:%(target.container.project_id)s",
    ),
    project("container_acls:delete", CONTAINER_ACL_WRITE),
    project("container_acls:put_patch", CONTAINER_ACL_WRITE),
    // Containers.
    project("containers:post", "rule:admin_or_creator or role:member"),
    project("containers:get", "rule:all_but_audit or role:member"),
    project(
        "container:get",
        "rule:container_non_private_read or rule:container_project_creator or \
         rule:container_project_admin or rule:container_acl_read or \
         (role:member and project_id:%(target.container.project_id)s and \
         (user_id:%(target.container.creator_id)s or \
         True:%(target.container.read_project_access)s)) \
         or role:admin and project_id:%(target.container.project_id)s",
    ),
    project(
        "container:delete",
        "rule:container_project_admin or rule:container_project_creator or \
         (role:member and project_id:%(target.container.project_id)s and \
         (user_id:%(target.container.creator_id)s or \
         True:%(target.container.read_project_access)s)) \
         or role:admin and project_id:%(target.container.project_id)s",
    ),
    project("container_secret:post", CONTAINER_SECRET_WRITE),
    project("container_secret:delete", CONTAINER_SECRET_WRITE),
    // Orders.
    project("orders:get", "rule:all_but_audit or role:member"),
    project("orders:post", "rule:admin_or_creator or role:member"),
    project("orders:put", "rule:admin_or_creator or role:member"),
    project(
        "order:get",
        "rule:all_users and project_id:%(target.order.project_id)s or \
         role:member and project_id:%(target.order.project_id)s",
    ),
    project(
        "order:delete",
        "rule:admin and project_id:%(target.order.project_id)s or \
         role:member and project_id:%(target.order.project_id)s",
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
    // Transport keys (as the contract documents 23.0.0: readers list, admins manage).
    project("transport_key:get", "rule:all_users or role:reader"),
    project("transport_key:delete", "role:admin"),
    project("transport_keys:get", "rule:all_users or role:reader"),
    project("transport_keys:post", "role:admin"),
];

const SECRET_META_WRITE: &str = "rule:secret_project_admin or rule:secret_project_creator or \
     (rule:secret_project_creator_role and rule:secret_non_private_read) or \
     (role:member and project_id:%(target.secret.project_id)s and \
     (user_id:%(target.secret.creator_id)s or True:%(target.secret.read_project_access)s)) \
     or role:admin and project_id:%(target.secret.project_id)s";

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

const SECRET_ACL_WRITE: &str = "rule:secret_project_admin or rule:secret_project_creator or \
     (role:member and project_id:%(target.secret.project_id)s and \
     (user_id:%(target.secret.creator_id)s or True:%(target.secret.read_project_access)s)) \
     or role:admin and project_id:%(target.secret.project_id)s";

const CONTAINER_ACL_WRITE: &str = "rule:container_project_admin or \
     rule:container_project_creator or \
     (role:member and project_id:%(target.container.project_id)s and \
     (user_id:%(target.container.creator_id)s or \
     True:%(target.container.read_project_access)s)) \
     or role:admin and project_id:%(target.container.project_id)s";

const CONTAINER_SECRET_WRITE: &str = "rule:admin or \
     (role:member and project_id:%(target.container.project_id)s and \
     (user_id:%(target.container.creator_id)s or \
     True:%(target.container.read_project_access)s)) \
     or role:admin and project_id:%(target.container.project_id)s";

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
}
