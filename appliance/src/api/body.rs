//! JSON request bodies as Barbican reads them: parsed, every string stripped of surrounding
//! whitespace, then checked field by field with jsonschema's wording.

use serde_json::{Map, Value};

use super::ApiError;

/// A parsed JSON object body.
pub(crate) type JsonObject = Map<String, Value>;

/// Parses a body that must be a JSON object, stripping every string in it.
pub(crate) fn parse_json(body: &[u8], schema: &str) -> Result<JsonObject, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| ApiError::malformed_json())?;
    match strip(value) {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::schema(
            schema,
            &format!("{} is not of type 'object'", repr(&other)),
            None,
        )),
    }
}

fn strip(value: Value) -> Value {
    match value {
        Value::String(s) => {
            let trimmed = s.trim();
            if trimmed.len() == s.len() {
                Value::String(s)
            } else {
                Value::String(trimmed.to_owned())
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(strip).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, strip(v))).collect()),
        other => other,
    }
}

/// A value as Python's `repr` shows it, which jsonschema's messages quote.
pub(crate) fn repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => py_str(s),
        Value::Array(items) => {
            format!("[{}]", items.iter().map(repr).collect::<Vec<_>>().join(", "))
        }
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", py_str(k), repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn py_str(s: &str) -> String {
    if s.contains('\'') && !s.contains('"') {
        format!("\"{s}\"")
    } else {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// A field's allowed JSON types, in jsonschema's order.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    String,
    StringOrNull,
    Integer,
}

/// Checks one field against its schema entry; absent fields pass.
pub(crate) fn check_field(
    schema: &str,
    body: &JsonObject,
    name: &str,
    kind: Kind,
    max_len: Option<usize>,
    range: Option<(i64, i64)>,
    choices: Option<&[&str]>,
) -> Result<(), ApiError> {
    let Some(value) = body.get(name) else { return Ok(()) };
    let fail = |reason: String| Err(ApiError::schema(schema, &reason, Some(name)));
    let type_ok = match kind {
        Kind::String => value.is_string(),
        Kind::StringOrNull => value.is_string() || value.is_null(),
        Kind::Integer => value.as_i64().is_some() || value.as_u64().is_some(),
    };
    if !type_ok {
        let expected = match kind {
            Kind::String => "'string'",
            Kind::StringOrNull => "'string', 'null'",
            Kind::Integer => "'integer'",
        };
        return fail(format!("{} is not of type {expected}", repr(value)));
    }
    if let (Some(text), Some(choices)) = (value.as_str(), choices)
        && !choices.contains(&text)
    {
        let list: Vec<String> = choices.iter().map(|c| format!("'{c}'")).collect();
        return fail(format!("{} is not one of [{}]", repr(value), list.join(", ")));
    }
    if let (Some(text), Some(max)) = (value.as_str(), max_len)
        && text.chars().count() > max
    {
        return fail(format!("{} is too long", repr(value)));
    }
    if let (Some(n), Some((min, max))) = (value.as_i64(), range) {
        if n < min {
            return fail(format!("{n} is less than the minimum of {min}"));
        }
        if n > max {
            return fail(format!("{n} is greater than the maximum of {max}"));
        }
    }
    if value.as_u64().is_some()
        && value.as_i64().is_none()
        && let Some((_, max)) = range
    {
        return fail(format!("{value} is greater than the maximum of {max}"));
    }
    Ok(())
}

/// A string field's value (absent and null are `None`).
pub(crate) fn string(body: &JsonObject, name: &str) -> Option<String> {
    body.get(name).and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_stripped_everywhere() {
        let body = parse_json(br#"{"a": "  x ", "b": [" y"], "c": {"d": "z  "}}"#, "S").unwrap();
        assert_eq!(body["a"], "x");
        assert_eq!(body["b"][0], "y");
        assert_eq!(body["c"]["d"], "z");
    }

    #[test]
    fn python_reprs() {
        assert_eq!(repr(&serde_json::json!("foo")), "'foo'");
        assert_eq!(repr(&serde_json::json!("it's")), "\"it's\"");
        assert_eq!(repr(&serde_json::json!(null)), "None");
        assert_eq!(repr(&serde_json::json!([1, true])), "[1, True]");
        assert_eq!(repr(&serde_json::json!({"k": "v"})), "{'k': 'v'}");
    }

    #[test]
    fn non_objects_and_bad_json() {
        assert_eq!(parse_json(b"{", "Secret").unwrap_err().description, "Malformed JSON");
        let err = parse_json(b"[1]", "Secret").unwrap_err();
        assert_eq!(
            err.description,
            "Provided object does not match schema 'Secret': [1] is not of type 'object'. Invalid property: 'None'"
        );
    }
}
