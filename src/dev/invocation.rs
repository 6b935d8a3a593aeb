//! How to run this same `falgate` from a shell, for the commands the guide prints.

use std::path::{Path, PathBuf};

/// How to run this same `falgate` from a shell: `cargo run --` (with `--release` for a release
/// build) when `cargo run` started it from this package's folder, else the binary's own path,
/// quoted; `falgate` when neither is known.
pub(super) fn invocation() -> String {
    let exe = std::env::current_exe().ok();
    let cwd = std::env::current_dir().ok();
    invocation_from(exe.as_deref(), cwd.as_deref(), &|name| std::env::var_os(name))
}

pub(super) fn invocation_from(
    exe: Option<&Path>,
    cwd: Option<&Path>,
    var: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> String {
    let Some(exe) = exe else {
        return "falgate".to_owned();
    };
    if let Some(cargo) = cwd.and_then(|cwd| cargo_run(exe, cwd, var)) {
        return cargo.to_owned();
    }
    quoted(exe)
}

/// `cargo run` sets `CARGO`, `CARGO_PKG_NAME` and `CARGO_MANIFEST_DIR` for the program it runs.
/// Its form is printed only when it would run this binary again: started from inside the
/// package's folder (where `cargo run` finds this manifest), and the binary is the package's
/// own debug or release build.
pub(super) fn cargo_run(
    exe: &Path,
    cwd: &Path,
    var: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Option<&'static str> {
    var("CARGO")?;
    if var("CARGO_PKG_NAME")? != env!("CARGO_PKG_NAME") {
        return None;
    }
    let real = |path: PathBuf| std::fs::canonicalize(&path).unwrap_or(path);
    let manifest = real(PathBuf::from(var("CARGO_MANIFEST_DIR")?));
    if !real(cwd.to_path_buf()).starts_with(&manifest) {
        return None;
    }
    let target = real(var("CARGO_TARGET_DIR").map_or_else(|| manifest.join("target"), |dir| cwd.join(dir)));
    let profile = real(exe.parent()?.to_path_buf());
    if profile.parent()? != target || exe.file_name()? != env!("CARGO_PKG_NAME") {
        return None;
    }
    match profile.file_name()?.to_str()? {
        "debug" => Some("cargo run --"),
        "release" => Some("cargo run --release --"),
        _ => None,
    }
}

/// `path` as one shell word (quoted when it needs to be).
pub(super) fn quoted(path: &Path) -> String {
    let text = path.to_string_lossy();
    shlex::try_quote(&text).map_or_else(|_| text.clone().into_owned(), std::borrow::Cow::into_owned)
}
