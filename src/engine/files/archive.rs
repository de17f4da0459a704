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

/// The largest extension record (a GNU long name or link name, a PAX header) an upload may
/// hold. The tar reader reads each one whole into memory, so a gzip of a few MB could announce
/// gigabytes; a path is at most 4 KiB, and real PAX headers are far smaller than this.
const MAX_EXTENSION_BYTES: u64 = 64 * 1024;
const BLOCK: usize = 512;

/// Passes a tar stream through unchanged, reading each 512-byte header whole before handing it
/// on, and fails the read at an extension record (GNU `L`/`K`, PAX `x`/`g`) larger than
/// [`MAX_EXTENSION_BYTES`], before the tar reader would buffer it. It follows the entries' sizes
/// as the tar reader does, a PAX `size` record included.
struct ExtensionLimit<R> {
    inner: R,
    header: [u8; BLOCK],
    /// Bytes of `header` read so far, and handed on so far.
    filled: usize,
    handed: usize,
    /// Data bytes (padding included) before the next header.
    data_left: u64,
    /// The data of the PAX record being read, to find its `size`.
    pax: Option<Vec<u8>>,
    /// The size a PAX record gave the next entry.
    next_size: Option<u64>,
}

impl<R: Read> ExtensionLimit<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            header: [0; BLOCK],
            filled: 0,
            handed: 0,
            data_left: 0,
            pax: None,
            next_size: None,
        }
    }

    /// Checks the header just read and sets up the data that follows it, reading the header
    /// with the tar reader's own parser so that both see the same sizes.
    fn enter_entry(&mut self) -> io::Result<()> {
        if self.header.iter().all(|&byte| byte == 0) {
            return Ok(());
        }
        let header = tar::Header::from_byte_slice(&self.header);
        let size = entry_size(&self.header)
            .ok_or_else(|| invalid("a tar header with an unreadable size".into()))?;
        let kind = header.entry_type();
        let size = if kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions()
        {
            if size > MAX_EXTENSION_BYTES {
                return Err(invalid(format!(
                    "an extension header of {size} bytes (long names and PAX records may hold {MAX_EXTENSION_BYTES})"
                )));
            }
            if kind.is_pax_local_extensions() {
                self.pax = Some(Vec::with_capacity(size as usize));
            }
            size
        } else {
            self.next_size.take().unwrap_or(size)
        };
        self.data_left = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        Ok(())
    }
}

impl<R: Read> Read for ExtensionLimit<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.data_left == 0 {
            if let Some(pax) = self.pax.take() {
                self.next_size = pax_size(&pax);
            }
            while self.filled < BLOCK {
                let read = self.inner.read(&mut self.header[self.filled..])?;
                if read == 0 {
                    // The end of the stream: what was read of a header goes on as it is.
                    break;
                }
                self.filled += read;
            }
            if self.filled == BLOCK && self.handed == 0 {
                self.enter_entry()?;
            }
            if self.handed < self.filled {
                let count = out.len().min(self.filled - self.handed);
                out[..count].copy_from_slice(&self.header[self.handed..self.handed + count]);
                self.handed += count;
                if self.handed == BLOCK {
                    self.filled = 0;
                    self.handed = 0;
                }
                return Ok(count);
            }
            return Ok(0);
        }
        let room = out
            .len()
            .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut out[..room])?;
        self.data_left -= read as u64;
        if let Some(pax) = &mut self.pax {
            let keep = (MAX_EXTENSION_BYTES as usize)
                .saturating_sub(pax.len())
                .min(read);
            pax.extend_from_slice(&out[..keep]);
        }
        Ok(read)
    }
}

fn invalid(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

/// A header block's data size (octal, or GNU's base-256 for large sizes), as the tar reader
/// reads it; `None` when the field is not a number.
fn entry_size(header: &[u8; BLOCK]) -> Option<u64> {
    tar::Header::from_byte_slice(header).entry_size().ok()
}

/// The `size` a PAX record gives the next entry, read as the tar reader reads it.
fn pax_size(records: &[u8]) -> Option<u64> {
    tar::PaxExtensions::new(records).find_map(|extension| {
        let extension = extension.ok()?;
        match extension.key() {
            Ok("size") => extension.value().ok()?.parse().ok(),
            _ => None,
        }
    })
}

/// Copies a tar archive entry by entry, refusing unsafe entries and giving every entry to the
/// sandbox user. Returns a reason on refusal.
pub(super) fn sanitize_archive(input: impl Read, output: impl io::Write) -> Result<(), String> {
    let mut archive = tar::Archive::new(ExtensionLimit::new(input));
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
        // The size the reader used, which a PAX record may have set instead of the header.
        header.set_size(entry.size());
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

    /// A raw header block: `name`, `kind`, and `size` in the octal size field.
    fn raw_header(name: &str, kind: u8, size: u64) -> [u8; BLOCK] {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_mode(0o644);
        header.set_size(size);
        header.set_entry_type(tar::EntryType::new(kind));
        header.set_cksum();
        let mut block = [0; BLOCK];
        block.copy_from_slice(header.as_bytes());
        block
    }

    fn padded(data: &[u8]) -> Vec<u8> {
        let mut padded = data.to_vec();
        padded.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
        padded
    }

    #[test]
    fn an_extension_record_past_the_limit_is_refused_before_it_is_read() {
        // A GNU long name announcing 8 GiB, whose data never needs to come.
        let mut input = raw_header("././@LongLink", b'L', 8 << 30).to_vec();
        input.extend_from_slice(&[b'a'; 4 * BLOCK]);
        let error = sanitize_archive(&input[..], &mut Vec::new()).expect_err("refused");
        assert!(
            error.contains("extension header of 8589934592 bytes"),
            "{error}"
        );
        for kind in [b'K', b'x', b'g'] {
            let mut input = raw_header("ext", kind, MAX_EXTENSION_BYTES + 1).to_vec();
            input.extend_from_slice(&vec![
                b'a';
                (MAX_EXTENSION_BYTES as usize + 1).div_ceil(BLOCK)
                    * BLOCK
            ]);
            assert!(sanitize_archive(&input[..], &mut Vec::new()).is_err());
        }
    }

    #[test]
    fn long_names_and_pax_sizes_are_followed() {
        // A long name as the tar builder writes it (a GNU `L` record).
        let long = format!("{}/file.txt", "d".repeat(300));
        let input = archive_with(|b| {
            let mut header = tar::Header::new_gnu();
            header.set_size(2);
            header.set_mode(0o644);
            b.append_data(&mut header, &long, &b"hi"[..])
                .expect("append");
        });
        let mut output = Vec::new();
        sanitize_archive(&input[..], &mut output).expect("a long name passes");
        let mut archive = tar::Archive::new(&output[..]);
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|entry| {
                entry
                    .expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, [long]);

        // A PAX record giving the next file a size its header does not: its data (which here
        // looks like a huge long-name header) is data, not a header.
        let data = padded(&raw_header("././@LongLink", b'L', 8 << 30));
        // "LEN size=512\n", LEN counting itself: 12 bytes.
        let record = format!("12 size={}\n", data.len());
        assert_eq!(record.len(), 12);
        let mut input = raw_header("pax", b'x', record.len() as u64).to_vec();
        input.extend_from_slice(&padded(record.as_bytes()));
        input.extend_from_slice(&raw_header("big.bin", b'0', 0));
        input.extend_from_slice(&data);
        input.extend_from_slice(&raw_header("after.txt", b'0', 2));
        input.extend_from_slice(&padded(b"ok"));
        input.extend_from_slice(&[0; 2 * BLOCK]);
        let mut output = Vec::new();
        sanitize_archive(&input[..], &mut output).expect("the PAX size is followed");
        let mut archive = tar::Archive::new(&output[..]);
        let sizes: Vec<(String, u64)> = archive
            .entries()
            .expect("entries")
            .map(|entry| {
                let entry = entry.expect("entry");
                (
                    entry.path().expect("path").display().to_string(),
                    entry.size(),
                )
            })
            .collect();
        assert_eq!(
            sizes,
            [
                ("big.bin".to_string(), BLOCK as u64),
                ("after.txt".to_string(), 2)
            ]
        );
    }

    #[test]
    fn sizes_are_read_in_octal_and_base_256() {
        let with_size_field = |field: &[u8; 12]| {
            let mut block = raw_header("f", b'0', 0);
            block[124..136].copy_from_slice(field);
            block
        };
        assert_eq!(entry_size(&with_size_field(b"00000001750\0")), Some(1000));
        assert_eq!(
            entry_size(&with_size_field(b"  1750 \0\0\0\0\0")),
            Some(1000)
        );
        // No number at all: the tar reader refuses it, and so does the guard.
        assert_eq!(entry_size(&with_size_field(&[0; 12])), None);
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[8..].copy_from_slice(&(8u32 << 28).to_be_bytes());
        assert_eq!(entry_size(&with_size_field(&big)), Some(8 << 28));
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
