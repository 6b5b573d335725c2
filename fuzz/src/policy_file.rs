//! The policy-file parser: an operator's YAML or JSON file of rule names to check strings,
//! applied over Barbican's defaults, then every rule it names enforced for a few callers.
//!
//! Input: the file's text (lossily decoded from bytes, as any bytes may sit in a file).

use std::sync::OnceLock;

use policy::{Credentials, Decision, Policy, Scope, Target};

fn defaults(enforce_new: bool) -> &'static Policy {
    static NEW: OnceLock<Policy> = OnceLock::new();
    static OLD: OnceLock<Policy> = OnceLock::new();
    let cell = if enforce_new { &NEW } else { &OLD };
    cell.get_or_init(|| match Policy::barbican(enforce_new) {
        Ok(policy) => policy,
        Err(e) => panic!("Barbican's default policy does not parse: {e}"),
    })
}

fn callers() -> [Credentials; 3] {
    let creds = |roles: &[&str], scope| Credentials {
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        user_id: Some("u1".into()),
        project_id: Some("p1".into()),
        domain_id: None,
        scope,
        attributes: Default::default(),
    };
    [
        creds(&["admin", "member", "reader"], Scope::Project),
        creds(&["reader"], Scope::Project),
        creds(&[], Scope::Unscoped),
    ]
}

fn target() -> Target {
    Target::new()
        .set("target.secret.project_id", "p1")
        .set("target.secret.creator_id", "u1")
        .set("target.container.project_id", "p2")
        .set_opt("target.secret.read_project_access", None)
        .set("project_id", "p1")
}

/// Parses `data` as a policy file over both default sets, and as a single check string.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // The text as one check string: any outcome but a panic is fine.
    let _ = policy::parse("fuzz", &text);
    for enforce_new in [true, false] {
        let mut p = defaults(enforce_new).clone();
        if p.apply_overrides(&text).is_err() {
            continue;
        }
        let names: Vec<String> = rule_names(&text);
        let target = target();
        for creds in callers() {
            for name in names.iter().map(String::as_str).chain(["secret:get", "nonexistent"]) {
                let decision = p.enforce(name, &target, &creds);
                if p.rule(name).is_none() {
                    assert_eq!(decision, Decision::Deny, "an unknown action was allowed");
                }
            }
        }
    }
}

/// The top-level keys of a policy file that applied (it parsed as a map of strings).
fn rule_names(text: &str) -> Vec<String> {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
        Ok(map) => map.keys().take(64).cloned().collect(),
        // YAML: the rules are named before the first colon of each unindented line.
        Err(_) => text
            .lines()
            .filter(|l| !l.starts_with([' ', '\t', '#', '-']))
            .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim().trim_matches(['"', '\''])))
            .take(64)
            .map(str::to_owned)
            .collect(),
    }
}
