//! `cargo xtask doctor`: every tool and package the plan needs, what is installed, the
//! minimum, and how to install what is missing.

use anyhow::{bail, Result};

use crate::plan::Plan;
use crate::setup;
use crate::Context as Shared;

pub fn run(shared: &Shared, plan: &Plan) -> Result<()> {
    let mut problems = 0;
    println!("{:<16} {:<10} {:<10} {:<6} {}", "TOOL", "FOUND", "MINIMUM", "OK", "PATH OR FIX");
    for tool in plan.tools() {
        let found = tool.version.as_ref().map_or("-".to_owned(), |v| v.to_string());
        let (ok, detail) = match tool.require() {
            Ok(path) => ("yes", path.display().to_string()),
            Err(_) => {
                problems += 1;
                ("no", format!("run {}", tool.install))
            }
        };
        println!("{:<16} {:<10} {:<10} {:<6} {}", tool.name, found, tool.minimum.to_string(), ok, detail);
    }

    let installed = crate::release::installed_targets(shared).unwrap_or_default();
    for platform in &plan.platforms {
        let target = &platform.rust_target;
        let ok = installed.iter().any(|t| t == target);
        if !ok {
            problems += 1;
        }
        let fix = if ok { String::new() } else { format!("run `rustup target add {target}`") };
        println!("{:<16} {:<10} {:<10} {:<6} {}", "rust target", target, "", yes_no(ok), fix);
    }
    for package in &plan.debian_packages {
        let ok = setup::debian_package_installed(package);
        if !ok {
            problems += 1;
        }
        let fix = if ok { String::new() } else { format!("run `apt-get install {package}`") };
        println!("{:<16} {:<10} {:<10} {:<6} {}", "debian package", package, "", yes_no(ok), fix);
    }
    if problems > 0 {
        bail!("{problems} requirement(s) missing: `cargo xtask setup` installs them all");
    }
    Ok(())
}

fn yes_no(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "no"
    }
}
