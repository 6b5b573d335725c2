//! Barbican's unauthenticated context: the caller is whoever the `X-Project-Id`, `X-User-Id`,
//! `X-Roles` and `X-Domain-Id` headers say. For development and tests only.

use hyper::header::HeaderMap;

use super::{Identity, IdentityError, header};

/// The caller the headers name.
pub(super) fn identify(headers: &HeaderMap) -> Result<Identity, IdentityError> {
    let project_id = header(headers, "x-project-id").ok_or(IdentityError::MissingProject)?;
    let explicit: Vec<String> = match headers.get("x-roles").and_then(|v| v.to_str().ok()) {
        // Without X-Roles the caller is `admin`, as in Barbican's unauthenticated context.
        None => vec!["admin".to_owned()],
        Some(list) => list
            .split(',')
            .map(|r| r.trim().to_ascii_lowercase())
            .filter(|r| !r.is_empty())
            .collect(),
    };
    Ok(Identity {
        project_id: project_id.to_owned(),
        user_id: header(headers, "x-user-id").map(str::to_owned),
        roles: with_implied_roles(explicit),
        domain_id: header(headers, "x-domain-id").map(str::to_owned),
    })
}

/// Keystone's default role inference (admin implies member, member implies reader), which a
/// token carries and Barbican's no-auth context lacks. Without it the official clients, which
/// send no X-Roles in no-auth mode, are refused every create and list.
fn with_implied_roles(mut roles: Vec<String>) -> Vec<String> {
    for (role, implied) in [("admin", "member"), ("member", "reader")] {
        if roles.iter().any(|r| r == role) && !roles.iter().any(|r| r == implied) {
            roles.push(implied.to_owned());
        }
    }
    roles
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn roles_are_trimmed_lower_cased_and_implied() {
        let id = identify(&headers(&[
            ("x-project-id", "p1"),
            ("x-roles", " Member, ,reader"),
            ("x-user-id", "u"),
        ]))
        .unwrap();
        assert_eq!(id.project_id, "p1");
        assert_eq!(id.roles, vec!["member", "reader"]);
        assert_eq!(id.user_id.as_deref(), Some("u"));
        let id = identify(&headers(&[("x-project-id", "p1"), ("x-roles", "member")])).unwrap();
        assert_eq!(id.roles, vec!["member", "reader"]);
    }

    #[test]
    fn without_roles_the_caller_is_admin() {
        let id = identify(&headers(&[("x-project-id", "p1")])).unwrap();
        assert_eq!(id.roles, vec!["admin", "member", "reader"]);
    }

    #[test]
    fn without_a_project_the_request_is_refused() {
        assert_eq!(identify(&headers(&[])), Err(IdentityError::MissingProject));
        assert_eq!(
            identify(&headers(&[("x-project-id", "  ")])),
            Err(IdentityError::MissingProject)
        );
    }
}
