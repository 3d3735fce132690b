//! The static-binary check run on every binary before it is packaged.

use std::path::Path;

use anyhow::{bail, Context, Result};
use goblin::elf::program_header::PT_INTERP;
use goblin::elf::Elf;

/// Checks that `path` is an ELF executable for `machine` with no program interpreter and no
/// shared-library dependencies, so it runs in an image that contains no libc.
pub fn check_static(path: &Path, machine: u16) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let elf = Elf::parse(&bytes).with_context(|| format!("{} is not an ELF file", path.display()))?;
    let found = elf.header.e_machine;
    if found != machine {
        bail!(
            "{} is built for {} but the platform needs {}",
            path.display(),
            goblin::elf::header::machine_to_str(found),
            goblin::elf::header::machine_to_str(machine)
        );
    }
    if elf.program_headers.iter().any(|header| header.p_type == PT_INTERP) {
        let interpreter = elf.interpreter.unwrap_or("?");
        bail!(
            "{} is dynamically linked (program interpreter {interpreter}); a scratch image \
             has no loader: build it statically",
            path.display()
        );
    }
    if !elf.libraries.is_empty() {
        bail!(
            "{} needs shared libraries ({}); a scratch image has none: build it statically",
            path.display(),
            elf.libraries.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use goblin::elf::header::{EM_AARCH64, EM_X86_64};

    // Debian's coreutils are dynamically linked x86-64 executables.
    const DYNAMIC: &str = "/bin/true";

    #[test]
    fn dynamic_binary_is_rejected() {
        let err = check_static(Path::new(DYNAMIC), EM_X86_64).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
        assert!(err.contains("ld-linux"), "{err}");
    }

    #[test]
    fn wrong_machine_is_rejected() {
        let err = check_static(Path::new(DYNAMIC), EM_AARCH64).unwrap_err().to_string();
        assert!(err.contains("built for X86_64"), "{err}");
        assert!(err.contains("needs AARCH64"), "{err}");
    }

    #[test]
    fn non_elf_is_rejected() {
        let err = check_static(Path::new("Cargo.toml"), EM_X86_64).unwrap_err().to_string();
        assert!(err.contains("not an ELF file"), "{err}");
    }
}
