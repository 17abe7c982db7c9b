//! The spec's JSON Schema as the one source of truth for a document's shape: every document
//! is validated against the schema generated from the spec's types (what
//! `schemas/cluster.schema.json` holds), and each violation becomes a [`Diagnostic`] at its
//! JSON path, worded for people.
//!
//! What a schema cannot say (references between parts, uniqueness, totals) is `check`'s.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use super::decode::{kind_of, short, suggest, Diagnostics};
use super::Spec;

struct Compiled {
    validator: Validator,
    schema: Value,
}

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let schema = Spec::json_schema();
        let validator = jsonschema::validator_for(&schema).expect("the spec's schema compiles");
        Compiled { validator, schema }
    })
}

/// Reports every way `doc` departs from the spec's schema.
pub(crate) fn validate(doc: &Value, diags: &mut Diagnostics) {
    let c = compiled();
    let errors: Vec<ValidationError<'_>> = c.validator.iter_errors(doc).collect();
    // A value of the wrong type gets that said once, not also every constraint of the type.
    let mistyped: std::collections::HashSet<&str> = errors
        .iter()
        .filter(|e| matches!(e.kind(), ValidationErrorKind::Type { .. }))
        .map(|e| e.instance_path().as_str())
        .collect();
    for e in &errors {
        let constraint = !matches!(
            e.kind(),
            ValidationErrorKind::Type { .. }
                | ValidationErrorKind::Required { .. }
                | ValidationErrorKind::AdditionalProperties { .. }
        );
        if constraint && mistyped.contains(e.instance_path().as_str()) {
            continue;
        }
        report(e, &c.schema, diags);
    }
}

fn report(e: &ValidationError<'_>, schema: &Value, diags: &mut Diagnostics) {
    let path = e.instance_path().as_str();
    let instance = e.instance();
    match e.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let known = known_properties(schema, e.schema_path().as_str());
            for key in unexpected {
                let hint = suggest(key, &known)
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                let expected = known
                    .iter()
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                diags.push(
                    format!("{path}/{}", super::json::token(key)),
                    format!(
                        "unknown field {}{hint}, expected one of {expected}",
                        short(&Value::String(key.clone()))
                    ),
                );
            }
        }
        ValidationErrorKind::Required { property } => {
            diags.push(path, format!("missing required field {property}"));
        }
        ValidationErrorKind::Type { kind } => diags.push(
            path,
            format!(
                "invalid type: {}, expected {}",
                typed(instance),
                expected_types(kind)
            ),
        ),
        ValidationErrorKind::Enum { options } => {
            let options = match &**options {
                Value::Array(items) => items.iter().map(short).collect::<Vec<_>>().join(", "),
                other => short(other),
            };
            diags.push(
                path,
                format!(
                    "unknown value {}, expected one of {options}",
                    short(instance)
                ),
            );
        }
        ValidationErrorKind::Constant { expected_value } => diags.push(
            path,
            format!(
                "unknown value {}, expected {}",
                short(instance),
                short(expected_value)
            ),
        ),
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // A branch that got past the value's own form (an object with a wrong field, say) is
            // what the author meant: its errors say more than "none of the alternatives".
            let entered: Vec<&Vec<ValidationError<'static>>> = context
                .iter()
                .filter(|branch| {
                    !branch.is_empty()
                        && branch.iter().all(|b| {
                            b.instance_path().as_str() != path
                                || matches!(
                                    b.kind(),
                                    ValidationErrorKind::Required { .. }
                                        | ValidationErrorKind::AdditionalProperties { .. }
                                        | ValidationErrorKind::AnyOf { .. }
                                        | ValidationErrorKind::OneOfNotValid { .. }
                                )
                        })
                })
                .collect();
            if let [branch] = entered.as_slice() {
                for b in branch.iter() {
                    report(b, schema, diags);
                }
            } else if let Some(types) = only_types(context, path) {
                diags.push(
                    path,
                    format!("invalid type: {}, expected {types}", typed(instance)),
                );
            } else if let Some(options) = choices(context) {
                diags.push(
                    path,
                    format!(
                        "unknown value {}, expected one of {options}",
                        short(instance)
                    ),
                );
            } else {
                let what = describe(schema, e.schema_path().as_str())
                    .unwrap_or_else(|| "one of the documented forms".into());
                diags.push(
                    path,
                    format!("invalid value {}: expected {what}", short(instance)),
                );
            }
        }
        ValidationErrorKind::Pattern { pattern } => diags.push(
            path,
            format!(
                "invalid value {}: it must match {pattern}{}",
                short(instance),
                aside(schema, e)
            ),
        ),
        ValidationErrorKind::Minimum { limit }
        | ValidationErrorKind::ExclusiveMinimum { limit }
        | ValidationErrorKind::Maximum { limit }
        | ValidationErrorKind::ExclusiveMaximum { limit } => {
            let side = match e.kind() {
                ValidationErrorKind::Minimum { .. } => "at least",
                ValidationErrorKind::ExclusiveMinimum { .. } => "more than",
                ValidationErrorKind::Maximum { .. } => "at most",
                _ => "less than",
            };
            diags.push(
                path,
                format!(
                    "{} is out of range: use {side} {limit}{}",
                    short(instance),
                    aside(schema, e)
                ),
            );
        }
        ValidationErrorKind::MaxItems { limit } => diags.push(
            path,
            format!(
                "{} items are too many: at most {limit} are allowed",
                instance.as_array().map_or(0, Vec::len)
            ),
        ),
        _ => diags.push(
            path,
            format!("invalid value {}: {}", short(instance), e.masked()),
        ),
    }
}

/// When every alternative is a fixed value (an enum whose variants are documented one by
/// one), those values: `"tgt", "lio"`.
fn choices(context: &[Vec<ValidationError<'static>>]) -> Option<String> {
    let mut out = Vec::new();
    for branch in context {
        let before = out.len();
        for e in branch {
            match e.kind() {
                ValidationErrorKind::Constant { expected_value } => out.push(short(expected_value)),
                ValidationErrorKind::Enum { options } => {
                    out.extend(options.as_array()?.iter().map(short));
                }
                ValidationErrorKind::Type { .. } => {}
                _ => return None,
            }
        }
        if out.len() == before {
            return None;
        }
    }
    Some(out.join(", "))
}

/// When every alternative is only a type the value does not have: those types.
fn only_types(context: &[Vec<ValidationError<'static>>], path: &str) -> Option<String> {
    let mut out = Vec::new();
    for branch in context {
        let [only] = branch.as_slice() else {
            return None;
        };
        match only.kind() {
            ValidationErrorKind::Type { kind } if only.instance_path().as_str() == path => {
                out.push(expected_types(kind))
            }
            _ => return None,
        }
    }
    Some(out.join(" or "))
}

/// A value with its JSON type, as a type error quotes it: `number 5`, `null`.
fn typed(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        other => format!("{} {}", kind_of(other), short(other)),
    }
}

fn expected_types(kind: &TypeKind) -> String {
    let name = |t: &jsonschema::JsonType| match t.to_string().as_str() {
        "object" => "an object".to_string(),
        "array" => "an array".to_string(),
        "integer" => "an integer".to_string(),
        "null" => "null".to_string(),
        other => format!("a {other}"),
    };
    match kind {
        TypeKind::Single(t) => name(t),
        TypeKind::Multiple(set) => set
            .iter()
            .map(|t| name(&t))
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

/// The schema object that holds the keyword at `keyword_path` (`/$defs/Size/oneOf`).
fn holder<'s>(schema: &'s Value, keyword_path: &str) -> Option<&'s Value> {
    let parent = &keyword_path[..keyword_path.rfind('/')?];
    schema.pointer(parent)
}

/// The property names of the object schema whose `additionalProperties` was violated.
fn known_properties<'s>(schema: &'s Value, keyword_path: &str) -> Vec<&'s str> {
    holder(schema, keyword_path)
        .and_then(|h| h.get("properties"))
        .and_then(Value::as_object)
        .map(|p| {
            p.keys()
                .map(String::as_str)
                .filter(|k| !k.starts_with('$'))
                .collect()
        })
        .unwrap_or_default()
}

/// What the violated keyword constrains, as an aside to its message: ` (cluster name: ...)`.
fn aside(schema: &Value, e: &ValidationError<'_>) -> String {
    describe(schema, e.schema_path().as_str())
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

/// The first sentence of the description of what the keyword at `keyword_path` constrains,
/// following a `$ref`, with a lowercase first letter: "a size: a number of bytes, ...".
fn describe(schema: &Value, keyword_path: &str) -> Option<String> {
    let mut node = holder(schema, keyword_path)?;
    let mut text = node.get("description").and_then(Value::as_str);
    for _ in 0..4 {
        if text.is_some() {
            break;
        }
        let target = node.get("$ref")?.as_str()?.strip_prefix('#')?;
        node = schema.pointer(target)?;
        text = node.get("description").and_then(Value::as_str);
    }
    let text = text?.replace('\n', " ");
    let first = match text.find(". ") {
        Some(i) => &text[..=i],
        None => text.as_str(),
    };
    let first = first.trim_end_matches('.');
    let mut chars = first.chars();
    let head = chars.next()?;
    Some(head.to_lowercase().chain(chars).collect())
}
