//! Builds capi/tests/c/abi_test.c with the system C compiler against include/envoy_smc.h and the Rust
//! staticlib (-Wall -Wextra -Werror, ASan/UBSan where the compiler has them) and runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn staticlib(root: &Path) -> PathBuf {
    // `cargo test` builds the library for the test harness only; build the staticlib itself.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--lib", "--quiet"])
        .current_dir(root)
        .status()
        .expect("run cargo build --lib");
    assert!(status.success(), "cargo build --lib failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../target"));
    target.join("debug/libenvoy_smc.a")
}

fn compile(root: &Path, lib: &Path, out: &Path, sanitize: bool) -> std::process::Output {
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.args([
        "-std=c11",
        "-D_GNU_SOURCE",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-g",
    ]);
    if sanitize {
        cmd.args(["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]);
    }
    cmd.arg("-I").arg(root.join("../include"));
    cmd.arg(root.join("tests/c/abi_test.c")).arg(lib);
    cmd.args(["-lpthread", "-ldl", "-lm", "-o"]).arg(out);
    cmd.output().expect("run the C compiler")
}

#[test]
fn c_program_drives_every_exported_function() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = staticlib(root);
    let out = std::env::temp_dir().join(format!("envoy-smc-abi-test-{}", std::process::id()));
    let mut built = compile(root, &lib, &out, true);
    if !built.status.success() {
        // Some toolchains lack the sanitizer runtimes; the checks still run without them.
        eprintln!(
            "building with ASan/UBSan failed, building without:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        built = compile(root, &lib, &out, false);
    }
    assert!(
        built.status.success(),
        "C build failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&out)
        // Rust's own allocations are released at exit, not freed: leak checking is not the point here.
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .env("UBSAN_OPTIONS", "halt_on_error=1")
        .output()
        .expect("run the C test");
    let _ = std::fs::remove_file(&out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "C test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
