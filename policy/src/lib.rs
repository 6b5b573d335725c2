//! Authorisation for the Barbican API: the oslo.policy rule language and Barbican 23.0.0's
//! default rules.
//!
//! Pure: rules and a policy file's text in, [`Decision`]s out. The caller supplies the
//! credentials and the target (what the request is about), and reads any policy file itself.

#![forbid(unsafe_code)]

mod defaults;
mod eval;
mod rule;

pub use defaults::{BARBICAN_DEFAULTS, RuleDefault};
pub use eval::{Credentials, Decision, Policy, Scope, Target};
pub use rule::{Rule, parse};

/// Why rules or a policy file could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A check string does not parse.
    #[error("rule {name:?}: {reason}")]
    Syntax {
        /// The rule's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The policy file is not a YAML or JSON map of rule names to check strings.
    #[error("policy file: {0}")]
    File(String),
    /// A rule refers (directly or not) to itself.
    #[error("rule {0:?} refers to itself")]
    Cycle(String),
}
