//! Evaluation: a [`Policy`] (rules by name) decides an action for credentials and a target.

use std::collections::{BTreeMap, HashMap};

use crate::Error;
use crate::defaults::BARBICAN_DEFAULTS;
use crate::rule::{Rule, parse};

/// Rules may refer to rules this deep before evaluation gives up (and denies).
const MAX_DEPTH: usize = 32;

/// The outcome of an authorisation check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The action is allowed.
    Allow,
    /// The action is denied.
    Deny,
}

/// What a token (or the no-auth headers) is scoped to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A project.
    Project,
    /// A domain.
    Domain,
    /// The whole deployment.
    System,
    /// Nothing (anonymous).
    Unscoped,
}

/// Who is asking.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Role names, compared case-insensitively.
    pub roles: Vec<String>,
    /// The user, if known.
    pub user_id: Option<String>,
    /// The project the credentials are scoped to.
    pub project_id: Option<String>,
    /// The domain, if any.
    pub domain_id: Option<String>,
    /// What the credentials are scoped to.
    pub scope: Scope,
    /// Further attributes generic checks may name (`KIND:...`).
    pub attributes: BTreeMap<String, String>,
}

impl Credentials {
    fn attribute(&self, kind: &str) -> Option<&str> {
        match kind {
            "user_id" => self.user_id.as_deref(),
            "project_id" => self.project_id.as_deref(),
            "domain_id" => self.domain_id.as_deref(),
            other => self.attributes.get(other).map(String::as_str),
        }
    }

    fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.eq_ignore_ascii_case(role))
    }
}

/// What the request is about, as the flat keys check strings substitute (`target.secret.
/// project_id`, ...). A key set to `None` is known to be empty: checks on it fail.
#[derive(Clone, Debug, Default)]
pub struct Target {
    values: BTreeMap<String, Option<String>>,
}

impl Target {
    /// An empty target.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key`.
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.values.insert(key.to_owned(), Some(value.into()));
        self
    }

    /// Sets `key` to a value that may be absent.
    pub fn set_opt(mut self, key: &str, value: Option<String>) -> Self {
        self.values.insert(key.to_owned(), value);
        self
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(|v| v.as_deref())
    }
}

#[derive(Clone, Debug)]
struct Entry {
    rule: Rule,
    /// Scopes the rule applies to; empty means any.
    scope_types: &'static [&'static str],
}

/// A set of named rules: Barbican's defaults, possibly overridden by an operator's file.
#[derive(Clone, Debug)]
pub struct Policy {
    rules: HashMap<String, Entry>,
    enforce_new_defaults: bool,
}

impl Policy {
    /// Barbican 23.0.0's defaults. With `enforce_new_defaults` false, each rule that has a
    /// deprecated (pre-Wallaby) form is the new rule *or* the deprecated one, as oslo.policy
    /// does.
    pub fn barbican(enforce_new_defaults: bool) -> Result<Policy, Error> {
        let mut rules = HashMap::new();
        for default in BARBICAN_DEFAULTS {
            let mut rule = parse(default.name, default.check)?;
            if let (false, Some(old)) = (enforce_new_defaults, default.deprecated) {
                rule = Rule::Or(vec![rule, parse(default.name, old)?]);
            }
            rules.insert(default.name.to_owned(), Entry { rule, scope_types: default.scope_types });
        }
        let policy = Policy { rules, enforce_new_defaults };
        policy.check_cycles()?;
        Ok(policy)
    }

    /// Applies an operator's policy file (YAML or JSON: rule name → check string). Overridden
    /// rules replace the defaults entirely; new names add rules.
    pub fn apply_overrides(&mut self, text: &str) -> Result<usize, Error> {
        let map: BTreeMap<String, serde_yaml_ng::Value> = match serde_yaml_ng::from_str(text) {
            Ok(Some(map)) => map,
            Ok(None) => BTreeMap::new(),
            Err(e) => return Err(Error::File(e.to_string())),
        };
        let mut count = 0;
        for (name, value) in map {
            let serde_yaml_ng::Value::String(check) = value else {
                return Err(Error::File(format!("the value of {name:?} must be a string")));
            };
            let rule = parse(&name, &check)?;
            let scope_types = self.rules.get(&name).map(|e| e.scope_types).unwrap_or(&[]);
            self.rules.insert(name, Entry { rule, scope_types });
            count += 1;
        }
        self.check_cycles()?;
        Ok(count)
    }

    /// The rule named `name`, if any.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.get(name).map(|e| &e.rule)
    }

    /// Whether `creds` may perform `action` on `target`. Unknown actions are denied, and so is
    /// any credential whose scope the action does not accept.
    pub fn enforce(&self, action: &str, target: &Target, creds: &Credentials) -> Decision {
        let Some(entry) = self.rules.get(action) else { return Decision::Deny };
        if !scope_allowed(entry.scope_types, &creds.scope) {
            return Decision::Deny;
        }
        let mut decided = HashMap::new();
        let allowed = self.eval(&entry.rule, target, creds, 0, &mut decided);
        if allowed { Decision::Allow } else { Decision::Deny }
    }

    /// `decided` holds each named rule's outcome by the depth it was reached at: within one
    /// enforcement the outcome depends on nothing else, and without it a file whose rules
    /// name the same rules several times over (`a: rule:b or rule:b ...`) costs exponential
    /// time, pinning a request's thread.
    fn eval<'a>(
        &'a self,
        rule: &'a Rule,
        target: &Target,
        creds: &Credentials,
        depth: usize,
        decided: &mut HashMap<(&'a str, usize), bool>,
    ) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match rule {
            Rule::Always => true,
            Rule::Never => false,
            Rule::Role(role) => match self.substitute(role, target) {
                Some(role) => creds.has_role(&role),
                None => false,
            },
            Rule::Named(name) => {
                if let Some(outcome) = decided.get(&(name.as_str(), depth)) {
                    return *outcome;
                }
                let outcome = match self.rules.get(name) {
                    Some(entry) => self.eval(&entry.rule, target, creds, depth + 1, decided),
                    None => false,
                };
                decided.insert((name.as_str(), depth), outcome);
                outcome
            }
            Rule::Generic { kind, pattern } => {
                let Some(value) = self.substitute(pattern, target) else { return false };
                match literal(kind) {
                    Some(lit) => lit == value,
                    None => creds.attribute(kind).is_some_and(|attr| attr == value),
                }
            }
            Rule::And(rules) => {
                rules.iter().all(|r| self.eval(r, target, creds, depth + 1, decided))
            }
            Rule::Or(rules) => {
                rules.iter().any(|r| self.eval(r, target, creds, depth + 1, decided))
            }
            Rule::Not(rule) => !self.eval(rule, target, creds, depth + 1, decided),
        }
    }

    /// Replaces each `%(key)s`; `None` when a key is missing or empty (the check then fails).
    fn substitute(&self, pattern: &str, target: &Target) -> Option<String> {
        let mut out = String::with_capacity(pattern.len());
        let mut rest = pattern;
        while let Some(start) = rest.find("%(") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find(")s")?;
            let key = &after[..end];
            let value = match key {
                "enforce_new_defaults" => {
                    if self.enforce_new_defaults {
                        "True"
                    } else {
                        "False"
                    }
                }
                _ => target.get(key)?,
            };
            out.push_str(value);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Some(out)
    }

    fn check_cycles(&self) -> Result<(), Error> {
        fn refs<'a>(rule: &'a Rule, out: &mut Vec<&'a str>) {
            match rule {
                Rule::Named(n) => out.push(n),
                Rule::And(rs) | Rule::Or(rs) => rs.iter().for_each(|r| refs(r, out)),
                Rule::Not(r) => refs(r, out),
                _ => {}
            }
        }
        // Depth-first search with colours: 1 = on the current path, 2 = done.
        let mut colour: HashMap<&str, u8> = HashMap::new();
        fn visit<'a>(
            policy: &'a Policy,
            name: &'a str,
            colour: &mut HashMap<&'a str, u8>,
        ) -> Result<(), Error> {
            match colour.get(name) {
                Some(1) => return Err(Error::Cycle(name.to_owned())),
                Some(_) => return Ok(()),
                None => {}
            }
            colour.insert(name, 1);
            if let Some(entry) = policy.rules.get(name) {
                let mut names = Vec::new();
                refs(&entry.rule, &mut names);
                for n in names {
                    visit(policy, n, colour)?;
                }
            }
            colour.insert(name, 2);
            Ok(())
        }
        for name in self.rules.keys() {
            visit(self, name, &mut colour)?;
        }
        Ok(())
    }
}

fn scope_allowed(scope_types: &[&str], scope: &Scope) -> bool {
    if scope_types.is_empty() {
        return true;
    }
    let name = match scope {
        Scope::Project => "project",
        Scope::Domain => "domain",
        Scope::System => "system",
        Scope::Unscoped => return false,
    };
    scope_types.contains(&name)
}

/// The literal a check's left side stands for, if it is one (oslo.policy evaluates it as a
/// Python literal): a quoted string, `True`, `False`, or a number.
fn literal(kind: &str) -> Option<&str> {
    for quote in ['\'', '"'] {
        if let Some(inner) = kind.strip_prefix(quote).and_then(|k| k.strip_suffix(quote)) {
            return Some(inner);
        }
    }
    if kind == "True" || kind == "False" || kind.parse::<f64>().is_ok() {
        return Some(kind);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten rules, each naming the next eight times over, the last one `last`.
    fn fan_out(last: &str) -> String {
        let mut text = String::from("\"secret:get\": \"rule:r0\"\n");
        for i in 0..10 {
            let alternatives = vec![format!("rule:r{}", i + 1); 8].join(" or ");
            text.push_str(&format!("r{i}: \"{alternatives}\"\n"));
        }
        text.push_str(&format!("r10: \"{last}\"\n"));
        text
    }

    fn member() -> Credentials {
        Credentials {
            roles: vec!["member".into()],
            user_id: Some("u".into()),
            project_id: Some("p".into()),
            domain_id: None,
            scope: Scope::Project,
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn rules_named_many_times_over_are_decided_once() {
        // Walked naively, the denying file below takes 8^10 evaluations.
        for (last, expected) in [("!", Decision::Deny), ("@", Decision::Allow)] {
            let mut policy = Policy::barbican(true).unwrap();
            policy.apply_overrides(&fan_out(last)).unwrap();
            let started = std::time::Instant::now();
            assert_eq!(policy.enforce("secret:get", &Target::new(), &member()), expected);
            assert!(started.elapsed() < std::time::Duration::from_secs(1), "{last}");
        }
    }
}
