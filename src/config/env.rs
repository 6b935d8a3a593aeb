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
mod tests {
    use super::*;

    const TOP: [&str; 5] = ["listen", "admin_listen", "upstream", "limits", "endpoints"];

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn apply(pairs: &[(&str, &str)]) -> Result<(Table, Overrides), String> {
        let mut table = Table::new();
        let overrides = apply_overrides(&mut table, &env(pairs), &TOP)?;
        Ok((table, overrides))
    }

    /// What the kubelet injects into every pod of the namespace for a Service `falgate` (port
    /// `http` 80 and `admin` 9090) and a Service `falgate-redis` (6379), plus a script's own.
    const KUBELET: [(&str, &str); 23] = [
        ("FALGATE_SERVICE_HOST", "10.0.0.1"),
        ("FALGATE_SERVICE_PORT", "80"),
        ("FALGATE_SERVICE_PORT_HTTP", "80"),
        ("FALGATE_SERVICE_PORT_ADMIN", "9090"),
        ("FALGATE_PORT", "tcp://10.0.0.1:80"),
        ("FALGATE_PORT_80_TCP", "tcp://10.0.0.1:80"),
        ("FALGATE_PORT_80_TCP_PROTO", "tcp"),
        ("FALGATE_PORT_80_TCP_PORT", "80"),
        ("FALGATE_PORT_80_TCP_ADDR", "10.0.0.1"),
        ("FALGATE_PORT_9090_TCP", "tcp://10.0.0.1:9090"),
        ("FALGATE_PORT_9090_TCP_PROTO", "tcp"),
        ("FALGATE_PORT_9090_TCP_PORT", "9090"),
        ("FALGATE_PORT_9090_TCP_ADDR", "10.0.0.1"),
        ("FALGATE_REDIS_SERVICE_HOST", "10.0.0.2"),
        ("FALGATE_REDIS_SERVICE_PORT", "6379"),
        ("FALGATE_REDIS_SERVICE_PORT_REDIS", "6379"),
        ("FALGATE_REDIS_PORT", "tcp://10.0.0.2:6379"),
        ("FALGATE_REDIS_PORT_6379_TCP", "tcp://10.0.0.2:6379"),
        ("FALGATE_REDIS_PORT_6379_TCP_PROTO", "tcp"),
        ("FALGATE_REDIS_PORT_6379_TCP_PORT", "6379"),
        ("FALGATE_REDIS_PORT_6379_TCP_ADDR", "10.0.0.2"),
        ("FALGATE_BIN", "/usr/local/bin/falgate"),
        ("FALGATE_CONFIG", "/etc/falgate/falgate.toml"),
    ];

    #[test]
    fn the_kubelets_service_links_are_ignored_and_listed_by_name_only() {
        let mut pairs = KUBELET.to_vec();
        pairs.push(("FALGATE_LISTEN", "127.0.0.1:0"));
        let (table, overrides) = apply(&pairs).unwrap();
        assert_eq!(table.keys().collect::<Vec<_>>(), ["listen"]);
        let mut expected: Vec<_> = KUBELET[..22].iter().map(|(k, _)| (*k).to_owned()).collect();
        expected.sort();
        assert_eq!(overrides.ignored, expected);
        let warning = overrides.warning().unwrap();
        assert!(
            !warning.contains("10.0.0.1") && !warning.contains("FALGATE_CONFIG"),
            "{warning}"
        );
        assert!(warning.contains("FALGATE_PORT_80_TCP_ADDR"), "{warning}");
        assert!(apply(&[("FALGATE_LISTEN", "x")]).unwrap().1.warning().is_none());
    }

    #[test]
    fn nested_override_sets_typed_scalar_and_string() {
        let (table, _) = apply(&[
            ("FALGATE_UPSTREAM__CONNECT_TIMEOUT_MS", "2000"),
            ("FALGATE_LISTEN", "127.0.0.1:0"),
            ("FALGATE_UPSTREAM__QUEUE_URL", "[not toml"),
        ])
        .unwrap();
        assert_eq!(table["upstream"]["connect_timeout_ms"].as_integer(), Some(2000));
        assert_eq!(table["listen"].as_str(), Some("127.0.0.1:0"));
        assert_eq!(table["upstream"]["queue_url"].as_str(), Some("[not toml"));
    }

    #[test]
    fn lists_and_tables_are_toml_inline_values() {
        let (table, _) = apply(&[
            ("FALGATE_LIMITS__TRUSTED_PROXIES", r#"["10.0.0.0/8", "fd00::/8"]"#),
            (
                "FALGATE_ENDPOINTS",
                r#"{ "a/b" = { schema = "s.json", sync_run = true } }"#,
            ),
        ])
        .unwrap();
        let proxies = table["limits"]["trusted_proxies"].as_array().unwrap();
        assert_eq!(proxies.len(), 2);
        assert_eq!(table["endpoints"]["a/b"]["sync_run"].as_bool(), Some(true));
    }

    #[test]
    fn a_table_is_set_before_the_keys_inside_it() {
        let (table, _) = apply(&[
            ("FALGATE_LIMITS__DEFAULT_TIER", "gold"),
            (
                "FALGATE_LIMITS",
                r#"{ default_tier = "free", max_tracked_callers = 5 }"#,
            ),
        ])
        .unwrap();
        assert_eq!(table["limits"]["default_tier"].as_str(), Some("gold"));
        assert_eq!(table["limits"]["max_tracked_callers"].as_integer(), Some(5));
    }

    #[test]
    fn a_double_underscore_name_outside_the_config_is_refused_with_the_variable_named() {
        for name in [
            "FALGATE_UPSTREAM____X",
            "FALGATE_LIMITZ__DEFAULT_TIER",
            "FALGATE__LISTEN",
        ] {
            let err = apply(&[(name, "1")]).unwrap_err();
            assert!(err.contains(name), "{err}");
        }
        let mut table: Table = "listen = \"x\"".parse().unwrap();
        let err = apply_overrides(&mut table, &env(&[("FALGATE_LISTEN__X", "1")]), &TOP).unwrap_err();
        assert!(
            err.contains("FALGATE_LISTEN__X") && err.contains("not a section"),
            "{err}"
        );
    }

    #[test]
    fn an_error_is_blamed_on_the_variable_that_holds_or_created_its_key() {
        let mut table: Table = "[limits]\ndefault_tier = \"d\"\n".parse().unwrap();
        let vars = env(&[
            ("FALGATE_LIMITS__TRUSTED_PROXIES", "[\"x\"]"),
            ("FALGATE_UPSTREAM__QUEUE_URL", "http://x"),
        ]);
        let overrides = apply_overrides(&mut table, &vars, &TOP).unwrap();
        let path = |parts: &[&str]| parts.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let blame = |parts: &[&str]| overrides.blame(&path(parts));
        assert_eq!(
            blame(&["limits", "trusted_proxies", "0"]),
            Some("FALGATE_LIMITS__TRUSTED_PROXIES")
        );
        // `[limits]` came from the file: a missing field there is the file's.
        assert_eq!(blame(&["limits"]), None);
        // `[upstream]` was created by the variable.
        assert_eq!(blame(&["upstream"]), Some("FALGATE_UPSTREAM__QUEUE_URL"));
        assert_eq!(blame(&["listen"]), None);
    }
}
