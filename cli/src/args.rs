//! Command-line options shared by every host tool that opens region files
//! (`ivchan`, the agents): one spelling, one parser, one trust policy.
//!
//! Sizes take binary suffixes (`8M`, `1G`), users and groups names or
//! numbers, modes octal; each parser's error says what it expected.

use std::path::PathBuf;

use clap::Args;
use ivchan_host::region_file::{parse_group, parse_owner, parse_user, DEFAULT_DIR, DEFAULT_PREFIX};
use ivchan_host::{RegionOptions, RegionSize};

/// Where region files are: `--dir`, `--prefix`.
#[derive(Args, Debug, Clone)]
pub struct RegionDirArgs {
    /// Directory holding region files (a hugetlbfs mount works too).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// File-name prefix before the VM UUID.
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,
}

/// Which region files to trust, and how to create new ones.
///
/// By default a file is trusted when its owner is this user, root or
/// QEMU's user (libvirt-qemu or qemu), and nobody else may write it but a
/// group of those users: the libvirt hook's, QEMU's and `ivchan init`'s
/// files all pass.
#[derive(Args, Debug, Clone)]
pub struct RegionArgs {
    /// Where region files are.
    #[command(flatten)]
    pub place: RegionDirArgs,
    /// Size of a new region: a power of two from 1M to 16G (K, M, G
    /// suffixes, binary).
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = parse_size)]
    pub size: RegionSize,
    /// Permission bits of a new region file (octal).
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_mode)]
    pub mode: u32,
    /// Owner of a new region file, USER or USER:GROUP (names or numbers; needs
    /// root), e.g. libvirt-qemu.
    #[arg(long, value_name = "USER[:GROUP]", value_parser = parse_owner_arg)]
    pub owner: Option<(Option<u32>, Option<u32>)>,
    /// Group of a new region file (name or number), e.g. QEMU's with
    /// --mode 660.
    #[arg(long, value_name = "GROUP", value_parser = parse_group_arg)]
    pub group: Option<u32>,
    /// Also trust existing region files owned by this user (name or
    /// number); repeatable.
    #[arg(long, value_name = "USER", value_parser = parse_user_arg)]
    pub allow_owner: Vec<u32>,
    /// Also trust existing region files this group may write (name or
    /// number); repeatable.
    #[arg(long, value_name = "GROUP", value_parser = parse_group_arg)]
    pub allow_group: Vec<u32>,
    /// Trust region files that every local user may write (not
    /// recommended).
    #[arg(long)]
    pub allow_other_write: bool,
    /// Map a region lazily: its memory is allocated as the rings first
    /// touch it, not all at once when it is mapped (for hosts that keep
    /// many idle regions; each page's first use then costs a fault).
    #[arg(long)]
    pub lazy: bool,
}

impl RegionArgs {
    /// The host crate's options for these arguments.
    pub fn options(&self) -> RegionOptions {
        let mut options = RegionOptions::new()
            .dir(&self.place.dir)
            .prefix(self.place.prefix.clone())
            .size(self.size.bytes())
            .mode(self.mode)
            .allow_other_write(self.allow_other_write)
            .prefault(!self.lazy);
        if let Some((uid, gid)) = self.owner {
            if let Some(uid) = uid {
                options = options.owner(uid);
            }
            if let Some(gid) = gid {
                options = options.group(gid);
            }
        }
        if let Some(gid) = self.group {
            options = options.group(gid);
        }
        for &uid in &self.allow_owner {
            options = options.allow_owner(uid);
        }
        for &gid in &self.allow_group {
            options = options.allow_group(gid);
        }
        options
    }
}

/// A region size with suffixes (`8M`), checked against the layout's limits.
pub fn parse_size(text: &str) -> Result<RegionSize, String> {
    text.parse::<RegionSize>().map_err(|e| e.to_string())
}

/// An octal mode (`600`, `0660`).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{text:?} is not an octal mode like 600 or 0660"))
}

fn parse_user_arg(text: &str) -> Result<u32, String> {
    parse_user(text).map_err(|e| e.to_string())
}

fn parse_group_arg(text: &str) -> Result<u32, String> {
    parse_group(text).map_err(|e| e.to_string())
}

fn parse_owner_arg(text: &str) -> Result<(Option<u32>, Option<u32>), String> {
    parse_owner(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        region: RegionArgs,
    }

    fn parse(args: &[&str]) -> Result<RegionArgs, String> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map(|c| c.region)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn names_suffixes_and_octal_are_accepted() {
        let args = parse(&[
            "--size",
            "16M",
            "--allow-owner",
            "root",
            "--allow-group",
            "0",
            "--owner",
            "root:root",
            "--mode",
            "0660",
        ])
        .expect("parse");
        assert_eq!(args.size.bytes(), 16 << 20);
        assert_eq!(args.allow_owner, [0]);
        assert_eq!(args.mode, 0o660);
        assert_eq!(args.owner, Some((Some(0), Some(0))));
        let options = args.options();
        assert!(options.trust_policy().owners().contains(&0));
        assert!(options.prefaults(), "regions are faulted in by default");
        assert!(!parse(&["--lazy"]).expect("parse").options().prefaults());
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let err = parse(&["--size", "3M"]).unwrap_err();
        assert!(
            err.contains("region size 3145728 is not a power of two (1 MiB to 16 GiB, e.g. 8M)"),
            "{err}"
        );
        let err = parse(&["--size", "64G"]).unwrap_err();
        assert!(err.contains("above the 16 GiB maximum"), "{err}");
        let err = parse(&["--allow-owner", "no-such-user-ivchan"]).unwrap_err();
        assert!(
            err.contains(
                "no user named \"no-such-user-ivchan\" (give a user name or a numeric uid)"
            ),
            "{err}"
        );
        let err = parse(&["--mode", "999"]).unwrap_err();
        assert!(
            err.contains("\"999\" is not an octal mode like 600 or 0660"),
            "{err}"
        );
    }
}
