//! The Go services' own tests, run with the project's pinned Go so that `cargo test` covers
//! every service.

mod support;

use std::process::Command;

use support::{run, workspace};

#[test]
fn go_services_pass_vet_and_tests() {
    let go = workspace().join(".tools/python/go/bin/go");
    assert!(go.is_file(), "{} not found: run `cargo xtask setup`", go.display());
    for service in ["exporter", "worker"] {
        let dir = workspace().join("services").join(service);
        for args in [&["vet", "./..."][..], &["test", "./..."][..]] {
            run(Command::new(&go)
                .args(args)
                .current_dir(&dir)
                .env("GOTOOLCHAIN", "local")
                .env("GOPROXY", "off")
                .env("GOFLAGS", "-buildvcs=false"));
        }
    }
}
