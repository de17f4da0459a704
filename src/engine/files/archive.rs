//! The sanitizer every uploaded archive passes through before the helper extracts it: entries
//! that climb out, absolute names, links whose text leaves the target and devices are refused
//! here, with a reason; the helper enforces the same again where it matters, at the moment of
//! use, against what is really on disk.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// The sandbox user's uid/gid: files written in get this owner.
pub(super) const SANDBOX_UID: u64 = crate::backend::SANDBOX_UID as u64;

/// Normalizes an archive entry name; `None` when it is absolute or climbs out with `..`.
fn safe_entry_path(name: &Path) -> Option<PathBuf> {
    let mut clean = PathBuf::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !clean.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(clean)
}

/// Copies a tar archive entry by entry, refusing unsafe entries and giving every entry to the
/// sandbox user. Returns a reason on refusal.
pub(super) fn sanitize_archive(input: impl Read, output: impl io::Write) -> Result<(), String> {
    let mut archive = tar::Archive::new(input);
    let mut builder = tar::Builder::new(output);
    let entries = archive
        .entries()
        .map_err(|error| format!("not a tar archive: {error}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|error| format!("corrupt tar archive: {error}"))?;
        let raw_name = entry
            .path()
            .map_err(|error| format!("bad entry name: {error}"))?
            .into_owned();
        let name = safe_entry_path(&raw_name)
            .ok_or_else(|| format!("entry {} leaves the target directory", raw_name.display()))?;
        if name.as_os_str().is_empty() {
            continue;
        }
        let entry_type = entry.header().entry_type();
        let mut header = entry.header().clone();
        header.set_uid(SANDBOX_UID);
        header.set_gid(SANDBOX_UID);
        match entry_type {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|error| format!("bad link in {}: {error}", raw_name.display()))?
                    .ok_or_else(|| format!("link {} has no target", raw_name.display()))?
                    .into_owned();
                let base = if entry_type == tar::EntryType::Symlink {
                    name.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    PathBuf::new()
                };
                if safe_entry_path(&base.join(&target)).is_none() {
                    return Err(format!(
                        "link {} points outside the target directory ({})",
                        raw_name.display(),
                        target.display()
                    ));
                }
                builder
                    .append_link(&mut header, &name, &target)
                    .map_err(|error| format!("upload failed: {error}"))?;
                continue;
            }
            // PAX and GNU long-name records are consumed by the reader.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => {
                return Err(format!(
                    "entry {} has unsupported type {other:?}",
                    raw_name.display()
                ));
            }
        }
        builder
            .append_data(&mut header, &name, &mut entry)
            .map_err(|error| format!("upload failed: {error}"))?;
    }
    builder
        .finish()
        .map_err(|error| format!("upload failed: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().expect("archive")
    }

    fn file(builder: &mut tar::Builder<Vec<u8>>, name: &str) {
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Write the name bytes directly so hostile names survive the builder's own checks.
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        header.set_cksum();
        builder.append(&header, &b"hi"[..]).expect("append");
    }

    fn link(builder: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, name, target)
            .expect("link");
    }

    #[test]
    fn clean_archives_pass_and_are_reowned() {
        let input = archive_with(|b| {
            file(b, "dir/a.txt");
            link(b, "dir/l", "a.txt");
        });
        let mut output = Vec::new();
        sanitize_archive(&input[..], &mut output).expect("clean archive");
        let mut archive = tar::Archive::new(&output[..]);
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            assert_eq!(entry.header().uid().expect("uid"), SANDBOX_UID);
        }
    }

    #[test]
    fn hostile_archives_are_refused() {
        let cases: Vec<Vec<u8>> = vec![
            archive_with(|b| file(b, "../evil")),
            archive_with(|b| file(b, "/etc/x")),
            archive_with(|b| link(b, "root", "/")),
            archive_with(|b| link(b, "up", "../../etc")),
            archive_with(|b| link(b, "a/b", "../../x")),
        ];
        for input in cases {
            let mut output = Vec::new();
            assert!(sanitize_archive(&input[..], &mut output).is_err());
        }
    }
}
