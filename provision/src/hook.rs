//! Route 6: the libvirt `qemu` hook.
//!
//! libvirt runs `/etc/libvirt/hooks/qemu` and, since libvirt 6.5, every
//! executable in `/etc/libvirt/hooks/qemu.d/`, as `HOOK NAME OP SUBOP EXTRA`
//! with the domain XML on stdin. A hook cannot change the XML, but it can
//! prepare resources: on `prepare begin` this one creates the region file
//! with the right owner and mode; on `release end` it removes the file or
//! keeps it. It never fails a VM start because of its own error unless
//! configured to (`strict`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::region::{self, Created, Owner};
use crate::spec::Spec;

/// Marker line that identifies a hook script written by this tool.
pub const SCRIPT_MARKER: &str = "# ivchan-provision hook";

/// What to do with the region file when the VM is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRelease {
    /// Leave the file (host agents may still read it).
    #[default]
    Keep,
    /// Remove the file.
    Remove,
}

/// Hook behaviour.
#[derive(Debug, Clone)]
pub struct HookConfig {
    pub spec: Spec,
    pub mode: u32,
    pub owner: Owner,
    pub on_release: OnRelease,
    /// Fail the libvirt operation (non-zero exit) when the hook fails.
    pub strict: bool,
}

/// Run the hook for `libvirt`'s arguments (`NAME OP SUBOP [EXTRA]`) and the
/// domain XML. Returns a line describing what was done, if anything.
pub fn run(args: &[String], xml: &str, cfg: &HookConfig) -> Result<Option<String>> {
    let op = args.get(1).map(String::as_str);
    let sub = args.get(2).map(String::as_str);
    let path = |xml: &str| -> Result<PathBuf> {
        let uuid = crate::inject::domain_uuid(xml)?;
        Ok(cfg.spec.region_path(&uuid))
    };
    match (op, sub) {
        (Some("prepare"), Some("begin")) => {
            let p = path(xml)?;
            Ok(Some(
                match region::create(&p, cfg.spec.size, cfg.mode, cfg.owner)? {
                    Created::New => format!("created {}", p.display()),
                    Created::Existing => format!("kept existing {}", p.display()),
                },
            ))
        }
        (Some("release"), Some("end")) if cfg.on_release == OnRelease::Remove => {
            let p = path(xml)?;
            Ok(region::remove(&p)?.then(|| format!("removed {}", p.display())))
        }
        _ => Ok(None),
    }
}

/// Quote one word for `/bin/sh` (single quotes, `'` as `'\''`).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The hook script: it execs `binary hook OPTIONS -- "$@"`.
pub fn script(binary: &Path, options: &[String]) -> String {
    let mut line = format!("exec {} hook", sh_quote(&binary.to_string_lossy()));
    for o in options {
        line.push(' ');
        line.push_str(&sh_quote(o));
    }
    line.push_str(" -- \"$@\"");
    format!("#!/bin/sh\n{SCRIPT_MARKER}: written by `ivchan-provision install-hook`; reinstall rather than edit.\n{line}\n")
}

/// Where the hook goes: `DIR/qemu.d/ivchan`, or `DIR/qemu` for libvirt < 6.5.
pub fn hook_path(hooks_dir: &Path, legacy: bool) -> PathBuf {
    if legacy {
        hooks_dir.join("qemu")
    } else {
        hooks_dir.join("qemu.d").join("ivchan")
    }
}

/// Install the script without clobbering a hook that is not ours (unless
/// `force`, which keeps a `.bak`). Returns the path written.
pub fn install(hooks_dir: &Path, legacy: bool, force: bool, script: &str) -> Result<PathBuf> {
    let path = hook_path(hooks_dir, legacy);
    let mut backup = false;
    if let Ok(old) = fs::read(&path) {
        let ours = String::from_utf8_lossy(&old).contains(SCRIPT_MARKER);
        if !ours && !force {
            return Err(Error::Hook(format!(
                "{} exists and was not written by ivchan-provision; not overwriting it{} (or pass --force to replace it, keeping a .bak)",
                path.display(),
                if legacy { "; install under qemu.d/ instead (drop --legacy)" } else { "" }
            )));
        }
        backup = !ours;
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    crate::fsutil::write_atomic(&path, script.as_bytes(), backup)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
        .map_err(Error::io(format!("chmod {}", path.display())))?;
    Ok(path)
}

/// Remove our hook script; a hook that is not ours is left alone.
pub fn uninstall(hooks_dir: &Path, legacy: bool) -> Result<Option<PathBuf>> {
    let path = hook_path(hooks_dir, legacy);
    match fs::read(&path) {
        Ok(old) if String::from_utf8_lossy(&old).contains(SCRIPT_MARKER) => {
            fs::remove_file(&path).map_err(Error::io(format!("removing {}", path.display())))?;
            Ok(Some(path))
        }
        Ok(_) => Err(Error::Hook(format!(
            "{} was not written by ivchan-provision; leaving it",
            path.display()
        ))),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        let s = script(
            Path::new("/usr/bin/ivchan-provision"),
            &["--mode".into(), "0660".into()],
        );
        assert!(s.ends_with("exec '/usr/bin/ivchan-provision' hook '--mode' '0660' -- \"$@\"\n"));
    }

    #[test]
    fn install_does_not_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("qemu");
        fs::write(&legacy, "#!/bin/sh\necho theirs\n").unwrap();
        let s = script(Path::new("/bin/true"), &[]);
        assert!(install(dir.path(), true, false, &s).is_err());
        assert_eq!(
            fs::read_to_string(&legacy).unwrap(),
            "#!/bin/sh\necho theirs\n"
        );
        let p = install(dir.path(), false, false, &s).unwrap();
        assert_eq!(p, dir.path().join("qemu.d/ivchan"));
        // Reinstalling over our own script is fine.
        install(dir.path(), false, false, &s).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
        install(dir.path(), true, true, &s).unwrap();
        assert!(dir.path().join("qemu.bak").exists());
        assert_eq!(uninstall(dir.path(), false).unwrap(), Some(p));
    }
}
