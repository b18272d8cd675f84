//! Conformance vector patterns: matching a received message against a
//! pattern (with bindings for generated values), and filling a message to
//! send with the values bound so far. The keywords are documented in
//! docs/protocol.md, "Conformance vectors".

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// Values bound by `"$name"` patterns, shared by every client of a vector.
#[derive(Debug, Clone, Default)]
pub struct Bindings(BTreeMap<String, Value>);

impl Bindings {
    /// Binds `name` (without the `$`) to `value`, replacing any binding.
    pub fn set(&mut self, name: &str, value: Value) {
        self.0.insert(name.to_owned(), value);
    }

    /// The value bound to `name` (without the `$`).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }
}

/// Why a message did not match: where in the message, and what differed.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// A path such as `.event.callees[0].id` (empty: the whole message).
    pub path: String,
    /// What was expected and what was there.
    pub why: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.path.is_empty() {
            "."
        } else {
            &self.path
        };
        write!(f, "at {at}: {}", self.why)
    }
}

/// What a `"$..."` string in a pattern means.
enum Special<'a> {
    /// `"$any"`: anything present.
    Any,
    /// `"$absent"`: the field is not there (only as an object field).
    Absent,
    /// `"$name"`: bind on first sight, equal afterwards.
    Bind(&'a str),
    /// `"$$text"`: the literal string `$text`.
    Literal(&'a str),
}

fn special(s: &str) -> Option<Special<'_>> {
    let rest = s.strip_prefix('$')?;
    Some(match rest {
        "any" => Special::Any,
        "absent" => Special::Absent,
        _ if rest.starts_with('$') => Special::Literal(rest),
        _ => Special::Bind(rest),
    })
}

/// Matches `actual` against `pattern`. Bindings are only kept when the
/// whole message matches.
pub fn check(pattern: &Value, actual: &Value, bindings: &mut Bindings) -> Result<(), Mismatch> {
    let mut trial = bindings.clone();
    walk(pattern, actual, &mut trial, &mut String::new())?;
    *bindings = trial;
    Ok(())
}

fn fail(path: &str, why: String) -> Result<(), Mismatch> {
    Err(Mismatch {
        path: path.to_owned(),
        why,
    })
}

fn walk(
    pattern: &Value,
    actual: &Value,
    b: &mut Bindings,
    path: &mut String,
) -> Result<(), Mismatch> {
    match pattern {
        Value::String(s) => match special(s) {
            Some(Special::Any) => Ok(()),
            Some(Special::Absent) => fail(path, format!("expected no value, got {actual}")),
            Some(Special::Bind(name)) => match b.0.get(name) {
                Some(bound) if same(bound, actual) => Ok(()),
                Some(bound) => fail(path, format!("${name} is bound to {bound}, got {actual}")),
                None => {
                    b.0.insert(name.to_owned(), actual.clone());
                    Ok(())
                }
            },
            Some(Special::Literal(text)) => literal(&Value::String(text.to_owned()), actual, path),
            None => literal(pattern, actual, path),
        },
        Value::Object(p) if p.contains_key("$approx") => approx(p, actual, path),
        Value::Object(p) => {
            let Value::Object(a) = actual else {
                return fail(path, format!("expected an object, got {actual}"));
            };
            for (key, sub) in p {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                let absent = matches!(sub.as_str().and_then(special), Some(Special::Absent));
                let r = match (a.get(key), absent) {
                    (None, true) => Ok(()),
                    (Some(v), true) => fail(path, format!("expected no field, got {v}")),
                    (None, false) => fail(path, format!("missing (expected {sub})")),
                    (Some(v), false) => walk(sub, v, b, path),
                };
                r?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Array(p) => {
            let Value::Array(a) = actual else {
                return fail(path, format!("expected an array, got {actual}"));
            };
            if p.len() != a.len() {
                return fail(
                    path,
                    format!("expected {} elements, got {}: {actual}", p.len(), a.len()),
                );
            }
            for (i, (sub, v)) in p.iter().zip(a).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(sub, v, b, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => literal(pattern, actual, path),
    }
}

fn literal(pattern: &Value, actual: &Value, path: &str) -> Result<(), Mismatch> {
    if same(pattern, actual) {
        Ok(())
    } else {
        fail(path, format!("expected {pattern}, got {actual}"))
    }
}

/// JSON equality, numbers compared by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn approx(p: &Map<String, Value>, actual: &Value, path: &str) -> Result<(), Mismatch> {
    let (Some(want), Some(tol)) = (
        p.get("$approx").and_then(Value::as_f64),
        p.get("tol").and_then(Value::as_f64),
    ) else {
        return fail(
            path,
            format!("bad pattern {p:?}: $approx and tol must be numbers"),
        );
    };
    match actual.as_f64() {
        Some(got) if (got - want).abs() <= tol => Ok(()),
        _ => fail(path, format!("expected {want} ± {tol}, got {actual}")),
    }
}

/// Handles the `{"$...": ...}` objects [`fill`] does not know itself:
/// `None` when the object is not one of them.
pub type Extra<'a> = dyn Fn(&Map<String, Value>) -> Option<Result<Value, String>> + 'a;

/// Fills a message to send: `"$name"` becomes the bound value, `"$$text"`
/// the string `$text`, `{"$repeat": s, "times": n}` the string `s` repeated,
/// `{"$join": [parts]}` the parts (filled, numbers as digits) end to end,
/// and `extra` handles other `{"$...": ...}` objects (tokens).
pub fn fill(template: &Value, b: &Bindings, extra: &Extra<'_>) -> Result<Value, String> {
    Ok(match template {
        Value::String(s) => match special(s) {
            Some(Special::Bind(name)) => {
                b.0.get(name)
                    .cloned()
                    .ok_or_else(|| format!("${name} is not bound yet"))?
            }
            Some(Special::Literal(text)) => Value::String(text.to_owned()),
            Some(Special::Any | Special::Absent) => {
                return Err(format!("{s} is a pattern, not a value to send"));
            }
            None => template.clone(),
        },
        Value::Object(o) if o.contains_key("$repeat") => {
            let (Some(s), Some(n)) = (
                o.get("$repeat").and_then(Value::as_str),
                o.get("times").and_then(Value::as_u64),
            ) else {
                return Err(format!("bad $repeat {template}"));
            };
            Value::String(s.repeat(usize::try_from(n).map_err(|e| e.to_string())?))
        }
        Value::Object(o) if o.contains_key("$join") => {
            let Some(parts) = o.get("$join").and_then(Value::as_array) else {
                return Err(format!("bad $join {template}"));
            };
            let mut out = String::new();
            for part in parts {
                match fill(part, b, extra)? {
                    Value::String(s) => out.push_str(&s),
                    other => out.push_str(&other.to_string()),
                }
            }
            Value::String(out)
        }
        Value::Object(o) => match extra(o) {
            Some(r) => r?,
            None => Value::Object(
                o.iter()
                    .map(|(k, v)| Ok((k.clone(), fill(v, b, extra)?)))
                    .collect::<Result<_, String>>()?,
            ),
        },
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| fill(v, b, extra))
                .collect::<Result<_, String>>()?,
        ),
        _ => template.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(p: Value, a: Value, b: &mut Bindings) -> Result<(), Mismatch> {
        check(&p, &a, b)
    }

    #[test]
    fn a_wrong_value_is_rejected_with_its_path() {
        let mut b = Bindings::default();
        let e = run(
            json!({"type": "event", "event": {"reason": "canceled"}}),
            json!({"type": "event", "seq": 3, "event": {"reason": "timeout"}}),
            &mut b,
        )
        .unwrap_err();
        assert_eq!(e.path, ".event.reason");
        assert!(
            e.why.contains("\"canceled\"") && e.why.contains("\"timeout\""),
            "{e}"
        );
        // Numbers, arrays and types too.
        assert!(run(json!({"seq": 2}), json!({"seq": 3}), &mut b).is_err());
        assert!(run(json!({"seq": 2}), json!({"seq": "2"}), &mut b).is_err());
        assert!(run(json!([1, 2]), json!([1, 2, 3]), &mut b).is_err());
        assert!(run(json!({"a": {"b": 1}}), json!({"a": [1]}), &mut b).is_err());
        assert!(run(json!({"seq": 2}), json!({"seq": 2.0}), &mut b).is_ok());
    }

    #[test]
    fn a_wrong_binding_is_rejected_and_a_failed_match_binds_nothing() {
        let mut b = Bindings::default();
        run(
            json!({"call_id": "$call"}),
            json!({"call_id": "c-1"}),
            &mut b,
        )
        .unwrap();
        assert_eq!(b.get("call"), Some(&json!("c-1")));
        run(
            json!({"call_id": "$call"}),
            json!({"call_id": "c-1"}),
            &mut b,
        )
        .unwrap();
        let e = run(
            json!({"call_id": "$call"}),
            json!({"call_id": "c-2"}),
            &mut b,
        )
        .unwrap_err();
        assert_eq!(e.path, ".call_id");
        assert!(e.why.contains("$call is bound to \"c-1\""), "{e}");
        // A message that fails later leaves no binding behind.
        let e = run(
            json!({"other": "$other", "seq": 9}),
            json!({"other": "x", "seq": 1}),
            &mut b,
        )
        .unwrap_err();
        assert_eq!(e.path, ".seq");
        assert_eq!(b.get("other"), None);
    }

    #[test]
    fn a_missing_field_is_rejected_even_for_any() {
        let mut b = Bindings::default();
        let e = run(
            json!({"re": "r1", "result": {"type": "done"}}),
            json!({"re": "r1"}),
            &mut b,
        )
        .unwrap_err();
        assert_eq!(e.path, ".result");
        assert!(e.why.starts_with("missing"), "{e}");
        assert!(run(json!({"seq": "$any"}), json!({}), &mut b).is_err());
        assert!(run(json!({"seq": "$s"}), json!({}), &mut b).is_err());
        assert!(run(json!({"seq": "$any"}), json!({"seq": null}), &mut b).is_ok());
    }

    #[test]
    fn absent_extra_fields_literals_and_approx() {
        let mut b = Bindings::default();
        // Fields the pattern does not name are ignored.
        run(
            json!({"type": "pong"}),
            json!({"type": "pong", "seq": 4, "re": "p"}),
            &mut b,
        )
        .unwrap();
        // $absent: the field must not be there.
        run(json!({"re": "$absent"}), json!({"type": "sync"}), &mut b).unwrap();
        assert!(run(json!({"re": "$absent"}), json!({"re": "x"}), &mut b).is_err());
        // $$ escapes a literal dollar.
        run(json!({"data": "$$5"}), json!({"data": "$5"}), &mut b).unwrap();
        assert!(run(json!({"data": "$$5"}), json!({"data": "x"}), &mut b).is_err());
        // Tolerances.
        let p = json!({"ms": {"$approx": 1000, "tol": 50}});
        run(p.clone(), json!({"ms": 960}), &mut b).unwrap();
        run(p.clone(), json!({"ms": 1050}), &mut b).unwrap();
        assert!(run(p.clone(), json!({"ms": 1051}), &mut b).is_err());
        assert!(run(p, json!({"ms": "1000"}), &mut b).is_err());
    }

    #[test]
    fn fill_substitutes_bindings_repeats_and_escapes() {
        let mut b = Bindings::default();
        run(json!({"c": "$call"}), json!({"c": "c-9"}), &mut b).unwrap();
        let none = |_: &Map<String, Value>| None;
        let out = fill(
            &json!({"call_id": "$call", "d": {"$repeat": "ab", "times": 3}, "x": ["$$y", 1]}),
            &b,
            &none,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"call_id": "c-9", "d": "ababab", "x": ["$y", 1]})
        );
        assert!(fill(&json!({"c": "$nope"}), &b, &none).is_err());
        assert!(fill(&json!({"c": "$any"}), &b, &none).is_err());
    }
}
