//! Re-running the current test binary as a child process.
//!
//! A test that needs a second process declares an ignored entry test that
//! does nothing unless its environment says which role to play:
//!
//! ```no_run
//! #[test]
//! #[ignore = "child process entry, run by the tests in this file"]
//! fn child_entry() {
//!     let Ok(role) = std::env::var("MY_ROLE") else {
//!         return;
//!     };
//!     // ... play `role` ...
//! }
//!
//! let status = ivchan_testkit::child::ChildTest::new("child_entry")
//!     .env("MY_ROLE", "sender")
//!     .command()
//!     .status()
//!     .unwrap();
//! assert!(status.success());
//! ```

use std::ffi::{OsStr, OsString};
use std::process::Command;

/// One ignored test of the current test binary, to be run as a child
/// process with some environment.
#[derive(Debug, Clone)]
pub struct ChildTest {
    entry: String,
    env: Vec<(OsString, OsString)>,
}

impl ChildTest {
    /// The test named `entry` (its full path within the binary, e.g.
    /// `child_entry` or `module::child_entry`); it must be `#[ignore]`d.
    pub fn new(entry: &str) -> Self {
        Self {
            entry: entry.to_owned(),
            env: Vec::new(),
        }
    }

    /// Sets `key` to `value` in the child's environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Sets each of `vars` in the child's environment.
    pub fn envs<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// The command that runs exactly the entry test, ignored as it is, with
    /// its output not captured and the harness's own output kept short.
    /// Stdio is left to the caller.
    ///
    /// # Panics
    ///
    /// If the path of the current executable cannot be found.
    pub fn command(&self) -> Command {
        let exe = std::env::current_exe().expect("finding this test binary");
        let mut cmd = Command::new(exe);
        cmd.args([
            self.entry.as_str(),
            "--exact",
            "--ignored",
            "--nocapture",
            "--quiet",
        ]);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "IVCHAN_TESTKIT_ROLE";
    const EXTRA: &str = "IVCHAN_TESTKIT_EXTRA";

    #[test]
    #[ignore = "child process entry, run by the tests in this module"]
    fn child_entry() {
        let Ok(role) = std::env::var(ROLE) else {
            return;
        };
        match role.as_str() {
            "echo" => println!("child says {}", std::env::var(EXTRA).unwrap()),
            "fail" => std::process::exit(7),
            other => panic!("unknown role {other}"),
        }
    }

    #[test]
    fn the_child_runs_the_entry_with_its_environment() {
        let out = ChildTest::new("child::tests::child_entry")
            .env(ROLE, "echo")
            .envs([(EXTRA, "hello")])
            .command()
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("child says hello"), "{stdout}");
    }

    #[test]
    fn the_childs_failure_reaches_the_parent() {
        let status = ChildTest::new("child::tests::child_entry")
            .env(ROLE, "fail")
            .command()
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(7));
    }

    #[test]
    fn only_the_named_entry_runs() {
        // A name that is no test: the harness runs nothing and succeeds, and
        // the child's entry (which would print) does not run.
        let out = ChildTest::new("child::tests::no_such_entry")
            .env(ROLE, "echo")
            .env(EXTRA, "hello")
            .command()
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("child says"));
    }
}
