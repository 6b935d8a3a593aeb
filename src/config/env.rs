//! `FALGATE_<SECTION>__<KEY>` environment overrides, applied onto the parsed TOML tree.
//!
//! Written by hand rather than with figment's `Env` provider because that one reads only the
//! process environment; reading through [`Sources`] lets tests pass a map and never call
//! `set_var`.

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

/// Variables that share the prefix but are not config keys.
const NOT_KEYS: [&str; 1] = ["FALGATE_CONFIG"];

/// Applies every `FALGATE_A__B=value` onto `table` as `a.b = value`.
///
/// A value is read as a TOML scalar when it is one (`5000`, `true`), else as a string, so
/// `FALGATE_UPSTREAM__CONNECT_TIMEOUT_MS=2000` and `FALGATE_LISTEN=0.0.0.0:8080` both work.
pub(crate) fn apply_overrides(table: &mut Table, sources: &dyn Sources) -> Result<(), String> {
    for (name, raw) in sources.vars_with_prefix("FALGATE_") {
        if NOT_KEYS.contains(&name.as_str()) {
            continue;
        }
        let path: Vec<String> = name["FALGATE_".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("environment variable {name} does not name a config key"));
        }
        set_path(table, &path, scalar(&raw))
            .map_err(|key| format!("environment variable {name}: `{key}` is not a section"))?;
    }
    Ok(())
}

fn scalar(raw: &str) -> Value {
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut parsed) => match parsed.remove("v") {
            Some(value @ (Value::Integer(_) | Value::Float(_) | Value::Boolean(_))) => value,
            _ => Value::String(raw.to_owned()),
        },
        Err(_) => Value::String(raw.to_owned()),
    }
}

fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, sections) = path.split_last().expect("split yields at least one element");
    let mut current = table;
    for section in sections {
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        current = entry.as_table_mut().ok_or_else(|| section.clone())?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn nested_override_sets_typed_scalar_and_string() {
        let mut table = Table::new();
        let vars = env(&[
            ("FALGATE_UPSTREAM__CONNECT_TIMEOUT_MS", "2000"),
            ("FALGATE_LISTEN", "127.0.0.1:0"),
        ]);
        apply_overrides(&mut table, &vars).unwrap();
        assert_eq!(table["upstream"]["connect_timeout_ms"].as_integer(), Some(2000));
        assert_eq!(table["listen"].as_str(), Some("127.0.0.1:0"));
    }

    #[test]
    fn empty_path_segment_is_refused_with_the_variable_named() {
        let err = apply_overrides(&mut Table::new(), &env(&[("FALGATE_UPSTREAM____X", "1")])).unwrap_err();
        assert!(err.contains("FALGATE_UPSTREAM____X"), "{err}");
    }

    #[test]
    fn falgate_config_is_not_a_key() {
        let mut table = Table::new();
        apply_overrides(&mut table, &env(&[("FALGATE_CONFIG", "x.toml")])).unwrap();
        assert!(table.is_empty());
    }
}
