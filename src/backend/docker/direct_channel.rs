//! The direct kernel channel: when the server runs on the Docker host itself (one kernel, one pid
//! namespace), it connects to a kernel's unix socket through `/proc/<pid>/root` of the sandbox's
//! main process instead of relaying the bytes through a `docker exec` running `socat`.
//!
//! The sandbox owns the directory that holds the sockets and can put anything there, so the path
//! is resolved as if the sandbox's root were `/` and no symlink, magic link or mount point may be
//! crossed (`openat2` with `RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`). What it
//! names must be a socket owned by the sandbox's user: the server never reaches anything outside
//! the sandbox's own filesystem, nor a socket there that the sandbox's user could not reach
//! itself. The socket is connected through `/proc/self/fd/N` of that `O_PATH` handle, so the path
//! is not looked up a second time.
//!
//! The pid comes from Docker and could, in principle, name another process by the time it is
//! used: a pidfd pins the process while its `/proc` entries are read, its cgroup must name the
//! container, and it must still be alive once its root is open.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, fstat, openat2};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, pidfd_open};

use crate::backend::SANDBOX_UID;

/// Why the direct channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DirectChannelError {
    /// The sandbox's processes are not visible as the sandbox's (another pid namespace, another
    /// host, no right to read them): the exec relay is the way.
    #[error("the sandbox's processes are not reachable from here: {0}")]
    NotLocal(String),
    /// Nothing listens at the socket's path yet (the kernel is starting).
    #[error("the kernel is not listening on {path} yet")]
    NotListening { path: String },
    /// The path names something other than a socket of the sandbox's user.
    #[error("refusing {path} in the sandbox: {why}")]
    Refused { path: String, why: String },
    /// The container's main process ended while the channel was being opened.
    #[error("the sandbox's main process exited")]
    Exited,
    #[error("connecting to the kernel's socket failed: {0}")]
    Io(#[from] io::Error),
}

/// Opens the unix socket at `socket_path` inside the filesystem of process `pid`, which must
/// belong to the container `container_id`, as an `O_PATH` handle for [`connect`]. Blocking (a few
/// syscalls on procfs): run it on the blocking pool.
pub fn open(
    pid: i64,
    container_id: &str,
    socket_path: &str,
) -> Result<OwnedFd, DirectChannelError> {
    let pid = i32::try_from(pid)
        .ok()
        .filter(|pid| *pid > 0)
        .and_then(Pid::from_raw)
        .ok_or_else(|| DirectChannelError::NotLocal(format!("Docker reports pid {pid}")))?;
    let not_local = |what: &str, errno: Errno| {
        DirectChannelError::NotLocal(format!("{what} of pid {}: {errno}", pid.as_raw_nonzero()))
    };
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).map_err(|errno| not_local("pidfd", errno))?;
    let proc_dir = format!("/proc/{}", pid.as_raw_nonzero());
    let root = rustix::fs::open(
        format!("{proc_dir}/root"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| not_local("root", errno))?;
    let cgroup = std::fs::read_to_string(format!("{proc_dir}/cgroup"))
        .map_err(|error| DirectChannelError::NotLocal(format!("cgroup of {proc_dir}: {error}")))?;
    if container_id.len() < 12 || !cgroup.contains(container_id) {
        return Err(DirectChannelError::NotLocal(format!(
            "{proc_dir} is not in the container's cgroup"
        )));
    }
    if exited(&pidfd)? {
        return Err(DirectChannelError::Exited);
    }
    let socket = open_socket(&root, socket_path)?;
    if exited(&pidfd)? {
        return Err(DirectChannelError::Exited);
    }
    Ok(socket)
}

/// Connects to the socket behind a handle from [`open`], through `/proc/self/fd/N`. The connect
/// never blocks: a socket whose backlog the sandbox keeps full answers "would block" at once,
/// like one nobody listens on, instead of holding a thread.
pub async fn connect(
    socket: &OwnedFd,
    socket_path: &str,
) -> Result<tokio::net::UnixStream, DirectChannelError> {
    let through = format!("/proc/self/fd/{}", socket.as_raw_fd());
    tokio::net::UnixStream::connect(&through)
        .await
        .map_err(|error| match error.kind() {
            // A socket file whose kernel has gone, one not listening yet, or one whose backlog
            // is full.
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::NotFound
            | io::ErrorKind::WouldBlock => DirectChannelError::NotListening {
                path: socket_path.to_string(),
            },
            _ => DirectChannelError::Io(error),
        })
}

/// Opens `socket_path` (absolute, inside the sandbox) beneath `root` without following anything
/// the sandbox could have planted, as an `O_PATH` handle to a socket owned by the sandbox's user.
fn open_socket(root: &OwnedFd, socket_path: &str) -> Result<OwnedFd, DirectChannelError> {
    let refused = |why: String| DirectChannelError::Refused {
        path: socket_path.to_string(),
        why,
    };
    let relative = socket_path.trim_start_matches('/');
    let handle = openat2(
        root,
        relative,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
    )
    .map_err(|errno| match errno {
        Errno::NOENT => DirectChannelError::NotListening {
            path: socket_path.to_string(),
        },
        Errno::LOOP => refused("a symbolic link is on its path".into()),
        Errno::XDEV => refused("a mount point is on its path".into()),
        Errno::NOSYS => {
            DirectChannelError::NotLocal("openat2 needs Linux 5.6 or later".to_string())
        }
        other => DirectChannelError::Io(other.into()),
    })?;
    let stat = fstat(&handle).map_err(io::Error::from)?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if file_type != FileType::Socket {
        return Err(refused(format!("it is a {file_type:?}, not a socket")));
    }
    if stat.st_uid != SANDBOX_UID {
        return Err(refused(format!(
            "it belongs to uid {}, not the sandbox's user",
            stat.st_uid
        )));
    }
    Ok(handle)
}

/// Whether the process behind `pidfd` has exited (the pidfd turns readable).
fn exited(pidfd: &OwnedFd) -> Result<bool, DirectChannelError> {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let ready = poll(&mut fds, Some(&zero)).map_err(io::Error::from)?;
    Ok(ready > 0 && !fds[0].revents().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_outside_the_container_is_not_local() {
        // This test process is not in any container whose id is all zeros.
        let error = open(
            i64::from(std::process::id()),
            &"0".repeat(64),
            "/run/kernelbox/kernel-1",
        )
        .expect_err("refused");
        assert!(
            matches!(error, DirectChannelError::NotLocal(_)),
            "{error:?}"
        );
    }

    #[test]
    fn an_impossible_pid_is_not_local() {
        for pid in [0, -1, i64::MAX] {
            let error = open(pid, &"0".repeat(64), "/x").expect_err("refused");
            assert!(
                matches!(error, DirectChannelError::NotLocal(_)),
                "{error:?}"
            );
        }
    }

    /// The resolution rules, on a directory that stands in for a sandbox's root.
    #[test]
    fn only_a_socket_reached_without_links_is_opened() {
        let root_dir = tempfile::tempdir().expect("test setup");
        let outside = tempfile::tempdir().expect("test setup");
        let root = rustix::fs::open(
            root_dir.path(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("test setup");
        let run = root_dir.path().join("run");
        std::fs::create_dir(&run).expect("test setup");
        // A real socket outside the root, which links inside must not reach.
        let target = outside.path().join("host.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&target).expect("test setup");
        std::os::unix::fs::symlink(&target, run.join("absolute-link")).expect("test setup");
        std::os::unix::fs::symlink("../../../../../../..", run.join("up")).expect("test setup");
        std::fs::write(run.join("plain"), b"x").expect("test setup");

        let refused = |path: &str| match open_socket(&root, path) {
            Err(DirectChannelError::Refused { .. }) => {}
            other => panic!("{path}: {other:?}"),
        };
        refused("/run/absolute-link");
        refused(&format!("/run/up{}", target.display()));
        refused("/run/plain");
        assert!(matches!(
            open_socket(&root, "/run/missing"),
            Err(DirectChannelError::NotListening { .. })
        ));
        // A socket inside, but not the sandbox user's: refused; once it is theirs, opened.
        let inside = run.join("kernel.sock");
        let _inside_listener = std::os::unix::net::UnixListener::bind(&inside).expect("test setup");
        if rustix::process::geteuid().is_root() {
            refused("/run/kernel.sock");
            rustix::fs::chown(&inside, Some(rustix::fs::Uid::from_raw(SANDBOX_UID)), None)
                .expect("test setup");
        }
        let handle = open_socket(&root, "/run/kernel.sock").unwrap_or_else(|error| {
            panic!("the sandbox user's socket is opened: {error:?}");
        });
        std::os::unix::net::UnixStream::connect(format!("/proc/self/fd/{}", handle.as_raw_fd()))
            .expect("connects through the handle");
        // `..` cannot climb out of the root either: it stays at the root, where nothing is.
        assert!(matches!(
            open_socket(&root, "/../../../../tmp/nothing-here"),
            Err(DirectChannelError::NotListening { .. })
        ));
    }
}
