use std::ffi::OsString;

use super::invocation::invocation_from;
use super::*;

/// A package folder with `target/{debug,release}/falgate`, removed when dropped.
struct Package(PathBuf);

impl Package {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("falgate-invocation-{}", uuid::Uuid::new_v4()));
        for profile in ["debug", "release", "other"] {
            std::fs::create_dir_all(dir.join("target").join(profile)).unwrap();
        }
        std::fs::create_dir_all(dir.join("src")).unwrap();
        Self(dir)
    }
}

impl Drop for Package {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cargo_env(manifest: &Path) -> impl Fn(&str) -> Option<OsString> {
    let manifest = manifest.as_os_str().to_owned();
    move |name| match name {
        "CARGO" => Some("/usr/bin/cargo".into()),
        "CARGO_PKG_NAME" => Some("falgate".into()),
        "CARGO_MANIFEST_DIR" => Some(manifest.clone()),
        _ => None,
    }
}

#[test]
fn under_cargo_run_the_commands_say_cargo_run_else_the_binarys_quoted_path() {
    let package = Package::new();
    let dir = &package.0;
    let cargo = cargo_env(dir);
    let debug = dir.join("target/debug/falgate");
    let release = dir.join("target/release/falgate");
    assert_eq!(invocation_from(Some(&debug), Some(dir), &cargo), "cargo run --");
    assert_eq!(
        invocation_from(Some(&release), Some(&dir.join("src")), &cargo),
        "cargo run --release --"
    );
    // Started by cargo from outside the package, or a profile `cargo run` alone does not
    // build: the binary's path.
    let elsewhere = std::env::temp_dir();
    assert_eq!(
        invocation_from(Some(&debug), Some(&elsewhere), &cargo),
        debug.display().to_string()
    );
    let other = dir.join("target/other/falgate");
    assert_eq!(
        invocation_from(Some(&other), Some(dir), &cargo),
        other.display().to_string()
    );
    // Not started by cargo (an installed binary): its path, quoted for a shell.
    let none = |_: &str| None;
    let spaced = Path::new("/opt/my tools/falgate");
    assert_eq!(
        invocation_from(Some(spaced), Some(dir), &none),
        "'/opt/my tools/falgate'"
    );
    assert_eq!(invocation_from(None, Some(dir), &none), "falgate");
    // Another package's cargo run (falgate started by a test of another crate).
    let other_package = |name: &str| match name {
        "CARGO_PKG_NAME" => Some("other".into()),
        _ => cargo(name),
    };
    assert_eq!(
        invocation_from(Some(&debug), Some(dir), &other_package),
        debug.display().to_string()
    );
}
