//! The rule language: check strings parsed into a tree.
//!
//! Grammar (as oslo.policy): `expr := or`, `or := and ("or" and)*`, `and := not ("and" not)*`,
//! `not := "not" not | "(" expr ")" | check`; a check is `@` (always), `!` (never),
//! `rule:NAME`, `role:NAME`, or `KIND:MATCH` where KIND is a credential attribute or a quoted
//! literal and MATCH may hold `%(key)s` substitutions from the target. The empty string is
//! `@`.

use std::fmt;

use crate::Error;

/// A parsed check string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `@`: always true.
    Always,
    /// `!`: always false.
    Never,
    /// `rule:NAME`: another rule's outcome.
    Named(String),
    /// `role:NAME`: the credentials carry the role (case-insensitive).
    Role(String),
    /// `KIND:MATCH`: compare a credential attribute (or a literal) with a string built from
    /// the target.
    Generic {
        /// A credential attribute (`project_id`, `user_id`, ...) or a quoted literal.
        kind: String,
        /// The value, with `%(key)s` substitutions.
        pattern: String,
    },
    /// All of them.
    And(Vec<Rule>),
    /// Any of them.
    Or(Vec<Rule>),
    /// Not this one.
    Not(Box<Rule>),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Always => f.write_str("@"),
            Rule::Never => f.write_str("!"),
            Rule::Named(n) => write!(f, "rule:{n}"),
            Rule::Role(r) => write!(f, "role:{r}"),
            Rule::Generic { kind, pattern } => write!(f, "{kind}:{pattern}"),
            Rule::And(rules) => join(f, rules, " and "),
            Rule::Or(rules) => join(f, rules, " or "),
            Rule::Not(rule) => write!(f, "not {rule}"),
        }
    }
}

fn join(f: &mut fmt::Formatter<'_>, rules: &[Rule], sep: &str) -> fmt::Result {
    f.write_str("(")?;
    for (i, r) in rules.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        write!(f, "{r}")?;
    }
    f.write_str(")")
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    And,
    Or,
    Not,
    Check(String),
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    for word in text.split_whitespace() {
        let mut word = word;
        while let Some(rest) = word.strip_prefix('(') {
            tokens.push(Token::Open);
            word = rest;
        }
        let mut closes = 0;
        while let Some(rest) = word.strip_suffix(')') {
            closes += 1;
            word = rest;
        }
        if !word.is_empty() {
            tokens.push(match word.to_ascii_lowercase().as_str() {
                "and" => Token::And,
                "or" => Token::Or,
                "not" => Token::Not,
                _ => Token::Check(word.to_owned()),
            });
        }
        tokens.extend(std::iter::repeat_n(Token::Close, closes));
    }
    tokens
}

/// Parses one check string; `name` is only used in error messages.
pub fn parse(name: &str, text: &str) -> Result<Rule, Error> {
    let tokens = tokenize(text);
    if tokens.is_empty() {
        return Ok(Rule::Always);
    }
    let mut parser = Parser { tokens: &tokens, at: 0, name };
    let rule = parser.or()?;
    if parser.at != tokens.len() {
        return Err(parser.error("unexpected text after the end of the rule"));
    }
    Ok(rule)
}

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
    name: &'a str,
}

impl Parser<'_> {
    fn error(&self, reason: &str) -> Error {
        Error::Syntax { name: self.name.to_owned(), reason: reason.to_owned() }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn or(&mut self) -> Result<Rule, Error> {
        let mut terms = vec![self.and()?];
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Rule::Or(terms) })
    }

    fn and(&mut self) -> Result<Rule, Error> {
        let mut terms = vec![self.not()?];
        while self.peek() == Some(&Token::And) {
            self.at += 1;
            terms.push(self.not()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Rule::And(terms) })
    }

    fn not(&mut self) -> Result<Rule, Error> {
        match self.peek().cloned() {
            Some(Token::Not) => {
                self.at += 1;
                Ok(Rule::Not(Box::new(self.not()?)))
            }
            Some(Token::Open) => {
                self.at += 1;
                let inner = self.or()?;
                if self.peek() != Some(&Token::Close) {
                    return Err(self.error("missing ')'"));
                }
                self.at += 1;
                Ok(inner)
            }
            Some(Token::Check(text)) => {
                self.at += 1;
                check(&text).ok_or_else(|| self.error(&format!("{text:?} is not a check")))
            }
            Some(_) => Err(self.error("expected a check, 'not' or '('")),
            None => Err(self.error("the rule ends too early")),
        }
    }
}

fn check(text: &str) -> Option<Rule> {
    match text {
        "@" => return Some(Rule::Always),
        "!" => return Some(Rule::Never),
        _ => {}
    }
    let (kind, pattern) = text.split_once(':')?;
    if kind.is_empty() {
        return None;
    }
    Some(match kind {
        "rule" => Rule::Named(pattern.to_owned()),
        "role" => Rule::Role(pattern.to_owned()),
        _ => Rule::Generic { kind: kind.to_owned(), pattern: pattern.to_owned() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Rule {
        parse("t", text).unwrap()
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        assert_eq!(
            p("role:a or role:b and not role:c"),
            Rule::Or(vec![
                Rule::Role("a".into()),
                Rule::And(vec![
                    Rule::Role("b".into()),
                    Rule::Not(Box::new(Rule::Role("c".into())))
                ]),
            ])
        );
    }

    #[test]
    fn parentheses_may_touch_checks() {
        assert_eq!(
            p("(role:a or role:b) and (rule:x)"),
            Rule::And(vec![
                Rule::Or(vec![Rule::Role("a".into()), Rule::Role("b".into())]),
                Rule::Named("x".into()),
            ])
        );
        assert_eq!(p("((@))"), Rule::Always);
    }

    #[test]
    fn special_and_generic_checks() {
        assert_eq!(p(""), Rule::Always);
        assert_eq!(p("   "), Rule::Always);
        assert_eq!(p("!"), Rule::Never);
        assert_eq!(
            p("'read':%(target.secret.read)s"),
            Rule::Generic { kind: "'read'".into(), pattern: "%(target.secret.read)s".into() }
        );
        assert_eq!(
            p("role:key-manager:service-admin"),
            Rule::Role("key-manager:service-admin".into())
        );
    }

    #[test]
    fn syntax_errors_name_the_rule() {
        for bad in ["(role:a", "role:a)", "role:a or", "and role:a", "nocolon", ":x", "not"] {
            let err = parse("secrets:get", bad).unwrap_err();
            assert!(
                matches!(err, Error::Syntax { ref name, .. } if name == "secrets:get"),
                "{bad}: {err:?}"
            );
        }
    }
}
