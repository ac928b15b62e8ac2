//! Cargo build script: hands the target triple to the crate (`backend::bundle::TARGET`), since a
//! bundle records the target its binaries are for.

fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET for build scripts");
    println!("cargo:rustc-env=SENTINEL_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
