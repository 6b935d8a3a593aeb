//! `FALGATE_*` environment variables, applied onto the parsed TOML tree before serde reads it.
//!
//! - `FALGATE_<KEY>` sets a top-level key, `FALGATE_<SECTION>__<KEY>` (double underscore between
//!   levels) one below it; names are case-insensitive. Variables are applied shortest path
//!   first, so `FALGATE_LIMITS__X` lands inside a table set by `FALGATE_LIMITS`.
//! - A value that is a TOML number, boolean, array or inline table (`["10.0.0.0/8"]`,
//!   `{ burst = 5, per_minute = 60 }`) is read as one; anything else is the raw text, a string.
//!   It replaces the key's value whole: a list or table is not merged with the file's.
//! - `FALGATE_CONFIG` names the file. Any other name without `__` that matches no top-level key
//!   is not a key (the kubelet's service links for a Service named `falgate`:
//!   `FALGATE_SERVICE_HOST`, `FALGATE_PORT_80_TCP_ADDR`, …; a script's `FALGATE_BIN`): it is
//!   ignored and listed, by name only, in one warning. A `__` name whose section is unknown
//!   stops startup, naming the variable.
//!
//! Written by hand rather than with figment's `Env` provider because that one reads only the
//! process environment; reading through [`Sources`] lets tests pass a map and never call
//! `set_var`. Each applied variable is remembered with its key, so an error at that key is
//! reported by the variable's name instead of being blamed on the file ([`Overrides::blame`]).

use std::collections::HashMap;

use toml::{Table, Value};

/// Where configuration comes from: the process environment in production, a map in tests.
pub trait Sources {
    /// One variable's value.
    fn var(&self, name: &str) -> Option<String>;
    /// Every `(name, value)` pair whose name starts with `prefix`.
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Sources for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        std::env::vars().filter(|(k, _)| k.starts_with(prefix)).collect()
    }
}

impl Sources for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }

    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut vars: Vec<_> = self
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        vars.sort();
        vars
    }
}

/// The prefix of every config variable.
const PREFIX: &str = "FALGATE_";
/// The variable naming the config file: shares the prefix, is not a key, is not warned about.
pub(crate) const CONFIG_VAR: &str = "FALGATE_CONFIG";

/// What the environment did to the config tree.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    applied: Vec<Applied>,
    /// `FALGATE_*` names that name no key, sorted (names only: values may be secrets).
    pub(crate) ignored: Vec<String>,
}

/// One applied variable.
#[derive(Debug)]
struct Applied {
    var: String,
    key: Vec<String>,
    /// How many of the tables on the way to `key` existed before this variable; it created
    /// the rest.
    existed: usize,
}

impl Overrides {
    /// The variable an error at `path` comes from: the one whose value holds `path`, or the one
    /// that created the table at `path` (a `missing field` in a section the file never had).
    pub(crate) fn blame(&self, path: &[String]) -> Option<&str> {
        self.applied
            .iter()
            .rev()
            .find(|a| path.starts_with(&a.key) || (a.key.starts_with(path) && path.len() > a.existed))
            .map(|a| a.var.as_str())
    }

    /// The one warning about ignored variables, if any were.
    pub(crate) fn warning(&self) -> Option<String> {
        (!self.ignored.is_empty()).then(|| {
            format!(
                "ignored environment variables that name no config key: {} (a key is FALGATE_<KEY> or FALGATE_<SECTION>__<KEY>)",
                self.ignored.join(", ")
            )
        })
    }
}

/// Applies every `FALGATE_A__B=value` onto `table` as `a.b = value`; `top_level` lists the
/// keys a single-underscore name may set.
pub(crate) fn apply_overrides(
    table: &mut Table,
    sources: &dyn Sources,
    top_level: &[&str],
) -> Result<Overrides, String> {
    let mut overrides = Overrides::default();
    let mut keyed = Vec::new();
    for (name, raw) in sources.vars_with_prefix(PREFIX) {
        if name == CONFIG_VAR {
            continue;
        }
        let key: Vec<String> = name[PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect();
        let known = top_level.contains(&key[0].as_str());
        if !name.contains("__") && !known {
            overrides.ignored.push(name);
            continue;
        }
        if key.iter().any(|segment| segment.is_empty() || segment.starts_with('_')) {
            return Err(format!("environment variable {name} does not name a config key"));
        }
        if !known {
            return Err(format!(
                "environment variable {name}: `{}` is not a config section or key",
                key[0]
            ));
        }
        keyed.push((key, name, raw));
    }
    overrides.ignored.sort();
    keyed.sort_by(|a, b| (a.0.len(), &a.1).cmp(&(b.0.len(), &b.1)));
    for (key, var, raw) in keyed {
        let existed = set_path(table, &key, value(&raw))
            .map_err(|section| format!("environment variable {var}: `{section}` is not a section"))?;
        overrides.applied.push(Applied { var, key, existed });
    }
    Ok(overrides)
}

/// A TOML number, boolean, array or inline table when the text is one, else the text itself
/// (a string needs no quotes: `FALGATE_LISTEN=0.0.0.0:8080`).
fn value(raw: &str) -> Value {
    match raw.parse::<Value>() {
        Ok(value @ (Value::Integer(_) | Value::Float(_) | Value::Boolean(_) | Value::Array(_) | Value::Table(_))) => {
            value
        }
        _ => Value::String(raw.to_owned()),
    }
}

/// Sets `path` to `value`, creating missing tables; returns how many of the tables on the way
/// existed, or the section that is not a table.
fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<usize, String> {
    let (last, sections) = path.split_last().expect("split yields at least one element");
    let mut current = table;
    let mut existed = 0;
    let mut creating = false;
    for section in sections {
        creating |= !current.contains_key(section);
        if !creating {
            existed += 1;
        }
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        current = entry.as_table_mut().ok_or_else(|| section.clone())?;
    }
    current.insert(last.clone(), value);
    Ok(existed)
}

#[cfg(test)]
mod tests;
