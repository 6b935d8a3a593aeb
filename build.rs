//! Records the compiler's version for `falgate_build_info{rustc=…}`. Offline and cheap: one
//! `rustc -V`, rerun only when the compiler changes. No git: a source tarball or a container
//! build without `.git` must build the same.
//!
//! The variable is named outside falgate's `FALGATE_` configuration namespace: cargo hands a
//! build script's `rustc-env` variables to the processes it runs (`cargo run -- dev`), and a
//! `FALGATE_` name there would be read as a config key and warned about.

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=RUSTC_VERSION_FOR_BUILD_INFO={version}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
