//! The configuration reference, docs/configuration.md, written from the settings types: every
//! leaf field of [`Settings`](crate::config::Settings) and of a service's
//! [`Section`](crate::config::Section) is a row whose variable is its path, whose default is the
//! value the type defaults to, and whose meaning is the field's doc comment (through its JSON
//! schema). So a setting cannot be added, renamed or re-defaulted without the page following,
//! and its documentation lives where a reader of the code looks for it.

use schemars::{JsonSchema, Schema};
use serde::Serialize;
use serde_json::Value;

/// One documented environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `ORDERMESH_DATABASE__MAX_CONNECTIONS`.
    pub variable: String,
    /// Markdown: `` `16` ``, "unset", or one value per service where they differ.
    pub default: String,
    /// The field's doc comment, on one line.
    pub meaning: String,
}

/// The rows of settings type `T` under `prefix` (`ORDERMESH_`, `ORDERMESH_SAGA__`), with the
/// defaults of each labelled instance (one per service where the defaults depend on the
/// service; one unlabelled instance otherwise). Fields named in `skip` are left out.
pub fn rows<T: JsonSchema + Serialize>(
    prefix: &str,
    defaults: &[(&str, T)],
    skip: &[&str],
) -> Vec<Row> {
    let schema = schemars::schema_for!(T);
    let values: Vec<(&str, Value)> = defaults
        .iter()
        .map(|(label, value)| (*label, serde_json::to_value(value).unwrap_or(Value::Null)))
        .collect();
    let mut rows = Vec::new();
    walk(
        &schema,
        schema.as_value(),
        &mut Vec::new(),
        &values,
        skip,
        &mut rows,
    );
    rows.into_iter()
        .map(|mut row| {
            row.variable = format!("{prefix}{}", row.variable);
            row
        })
        .collect()
}

/// Descends into object schemas (following `$ref`s into `$defs`) and emits a row per leaf.
fn walk(
    root: &Schema,
    node: &Value,
    path: &mut Vec<String>,
    values: &[(&str, Value)],
    skip: &[&str],
    rows: &mut Vec<Row>,
) {
    let Some(properties) = resolve(root, node)
        .get("properties")
        .and_then(Value::as_object)
    else {
        return;
    };
    for (name, property) in properties {
        if path.is_empty() && skip.contains(&name.as_str()) {
            continue;
        }
        path.push(name.clone());
        if resolve(root, property).get("properties").is_some() {
            walk(root, property, path, values, skip, rows);
        } else {
            rows.push(Row {
                variable: path.join("__").to_uppercase(),
                default: default_of(path, values),
                meaning: meaning_of(root, property),
            });
        }
        path.pop();
    }
}

/// The schema a node stands for: itself, or the `$defs` entry its `$ref` names.
fn resolve<'a>(root: &'a Schema, node: &'a Value) -> &'a Value {
    node.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| root.as_value().get("$defs")?.get(name))
        .unwrap_or(node)
}

/// A field's doc comment (or, failing that, its type's) on one line, safe in a table cell.
fn meaning_of(root: &Schema, property: &Value) -> String {
    let text = property
        .get("description")
        .or_else(|| resolve(root, property).get("description"))
        .and_then(Value::as_str)
        .unwrap_or("");
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// The default at `path` in each instance: one value when they agree, else each labelled.
fn default_of(path: &[String], values: &[(&str, Value)]) -> String {
    let shown: Vec<(&str, String)> = values
        .iter()
        .map(|(label, value)| {
            let leaf = path.iter().try_fold(value, |v, key| v.get(key));
            (*label, show(leaf.unwrap_or(&Value::Null)))
        })
        .collect();
    if shown.windows(2).all(|pair| pair[0].1 == pair[1].1) {
        return shown.first().map(|(_, s)| s.clone()).unwrap_or_default();
    }
    shown
        .iter()
        .map(|(label, s)| format!("{s} ({label})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn show(value: &Value) -> String {
    match value {
        Value::Null => "unset".into(),
        Value::String(s) if s.is_empty() => "empty".into(),
        Value::String(s) => format!("`{s}`"),
        other => format!("`{other}`"),
    }
}

/// The Markdown table of `rows`.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for row in rows {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            row.variable, row.default, row.meaning
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A section of a section, with a doc comment or not.
    #[derive(Serialize, JsonSchema)]
    struct Outer {
        /// The inner part.
        inner: Inner,
        /// How many | pipes,
        /// over two lines.
        count: u32,
        service: String,
    }

    #[derive(Serialize, JsonSchema)]
    struct Inner {
        /// Where to connect.
        url: Option<String>,
    }

    #[test]
    fn leaves_become_rows_named_by_their_path_with_their_doc_and_default() {
        let a = Outer {
            inner: Inner { url: None },
            count: 3,
            service: "a".into(),
        };
        let b = Outer {
            inner: Inner { url: None },
            count: 4,
            service: "b".into(),
        };
        let rows = rows("X_", &[("a", a), ("b", b)], &["service"]);
        assert_eq!(
            rows,
            vec![
                Row {
                    variable: "X_COUNT".into(),
                    default: "`3` (a), `4` (b)".into(),
                    meaning: "How many \\| pipes, over two lines.".into(),
                },
                Row {
                    variable: "X_INNER__URL".into(),
                    default: "unset".into(),
                    meaning: "Where to connect.".into(),
                },
            ]
        );
    }
}
