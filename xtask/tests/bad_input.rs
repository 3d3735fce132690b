//! Bad configuration gives one clear error naming the file, the line and the key or value,
//! before anything builds. Each case edits a copy of the repository's configuration and runs
//! `xtask --config COPY check`.

mod support;

use std::path::{Path, PathBuf};

use support::{workspace, xtask};

/// Copies targets/, toolchains/ and images/ into a fresh directory.
fn config_copy(name: &str) -> PathBuf {
    let dir = support::test_target_dir().join("bad-input").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["targets", "toolchains", "images"] {
        copy_dir(&workspace().join(sub), &dir.join(sub));
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} holds no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// Runs `check` on `config` and returns its stderr, failing if it succeeded.
fn check_fails(config: &Path, envs: &[(&str, &str)]) -> String {
    let mut command = xtask();
    command.arg("--config").arg(config).arg("check");
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "check succeeded:\n{stderr}");
    assert_eq!(output.stdout, b"", "a failed check printed a plan");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

#[test]
fn unknown_key_is_named() {
    let config = config_copy("unknown-key");
    edit(&config.join("images/worker.toml"), "tag = ", "tga = ");
    let err = check_fails(&config, &[]);
    assert!(err.contains("images/worker.toml"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("unknown field `tga`"), "{err}");
}

#[test]
fn wrong_type_is_named() {
    let config = config_copy("wrong-type");
    edit(&config.join("images/exporter.toml"), "tag = \"0.1.0\"", "tag = 5");
    let err = check_fails(&config, &[]);
    assert!(err.contains("images/exporter.toml"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("invalid type: integer `5`, expected a string"), "{err}");
}

#[test]
fn unknown_package_lists_known_ones() {
    let config = config_copy("unknown-package");
    edit(&config.join("images/notifier.toml"), "package = \"notifier\"", "package = \"notifyer\"");
    let err = check_fails(&config, &[]);
    assert!(err.contains("images/notifier.toml:6"), "{err}");
    assert!(err.contains("\"notifyer\" is not a package of this workspace"), "{err}");
    assert!(err.contains("known packages are notifier statusd xtask"), "{err}");
}

#[test]
fn unknown_binary_lists_known_ones() {
    let config = config_copy("unknown-binary");
    edit(&config.join("images/statusd.toml"), "package = \"statusd\"", "package = \"statusd\"\nbin = \"statusd2\"");
    let err = check_fails(&config, &[]);
    assert!(err.contains("images/statusd.toml:8"), "{err}");
    assert!(err.contains("has no binary \"statusd2\": its binaries are statusd"), "{err}");
}

#[test]
fn unknown_platform_lists_known_ones() {
    let config = config_copy("unknown-platform");
    edit(&config.join("images/worker.toml"), "tag = \"0.1.0\"", "tag = \"0.1.0\"\nplatforms = [\"amd64\", \"riscv64\"]");
    let err = check_fails(&config, &[]);
    assert!(err.contains("images/worker.toml:3"), "{err}");
    assert!(err.contains("unknown platform \"riscv64\": known platforms are amd64, arm64"), "{err}");
}

#[test]
fn unknown_elf_machine_is_named() {
    let config = config_copy("unknown-machine");
    edit(&config.join("targets/arm64.toml"), "machine = \"aarch64\"", "machine = \"arm64\"");
    let err = check_fails(&config, &[]);
    assert!(err.contains("targets/arm64.toml:16"), "{err}");
    assert!(err.contains("unknown elf.machine \"arm64\""), "{err}");
}

#[test]
fn missing_go_module_is_named() {
    let config = config_copy("missing-module");
    edit(&config.join("images/worker.toml"), "services/worker", "services/wroker");
    let err = check_fails(&config, &[]);
    assert!(err.contains("images/worker.toml:5"), "{err}");
    assert!(err.contains("go.module \"services/wroker\" contains no go.mod"), "{err}");
}

#[test]
fn too_old_toolchain_is_rejected() {
    let config = config_copy("old-go");
    edit(&config.join("toolchains/go.toml"), "min_version = \"1.25\"", "min_version = \"9.1\"");
    let err = check_fails(&config, &[]);
    assert!(err.contains("is too old"), "{err}");
    assert!(err.contains("need at least 9.1.0"), "{err}");
    assert!(err.contains("cargo xtask setup"), "{err}");
}

#[test]
fn missing_toolchain_is_rejected() {
    let config = config_copy("missing-zig");
    let err = check_fails(&config, &[("XTASK_ZIG", "/nonexistent/zig")]);
    assert!(err.contains("zig not found at /nonexistent/zig"), "{err}");
    assert!(err.contains("the Rust images notifier, statusd, xtask need it"), "{err}");
    assert!(err.contains("pip install ziglang=="), "{err}");
}

#[test]
fn invalid_user_is_named() {
    let config = config_copy("invalid-user");
    edit(&config.join("images/worker.toml"), "tag = \"0.1.0\"", "tag = \"0.1.0\"\nuser = \"nonroot\"");
    let err = check_fails(&config, &[]);
    assert!(err.contains("images/worker.toml:3"), "{err}");
    assert!(err.contains("invalid user \"nonroot\""), "{err}");
}

#[test]
fn good_config_checks() {
    let config = config_copy("good");
    let output = support::stdout(xtask().arg("--config").arg(&config).arg("check"));
    assert!(output.contains("registry:2.8 linux/amd64 linux/arm64/v8"), "{output}");
}

#[test]
fn duplicate_platform_is_named() {
    let config = config_copy("duplicate-platform");
    edit(&config.join("images/worker.toml"), "tag = \"0.1.0\"", "tag = \"0.1.0\"\nplatforms = [\"amd64\", \"amd64\"]");
    let err = check_fails(&config, &[]);
    assert!(err.contains("images/worker.toml:3"), "{err}");
    assert!(err.contains("platform \"amd64\" is listed twice"), "{err}");
}
