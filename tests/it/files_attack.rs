//! The server's file operations against a hostile sandbox: sandbox code replaces `realpath` and
//! `sh` on its own PATH, plants links to `/etc`, races a directory against a link, and the test
//! sends archives with link chains and hard links. Checked as root in the container: nothing
//! outside `/workspace` changes. Also: the server acts with the sandbox user's rights (a root-only
//! file in the workspace is refused), links inside the workspace still work, listings keep odd
//! names and large directories, and the latency of a small write and read. Exists, stat, mkdir,
//! copy and move get the same attacks: planted links and lexical escapes on the source and on
//! the destination, root-owned files, and a directory raced against a link during copies.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kernelbox::engine::Tenant;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestEngine, TestServer};

async fn create(server: &TestServer) -> String {
    let created: Value = server
        .post("/containers")
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("created");
    created["id"].as_str().expect("id").to_string()
}

/// p50 and max of `samples`, in milliseconds.
fn summary(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn small_file_latency() {
    let Some(t) = TestEngine::start("files-latency").await else {
        return;
    };
    let id = t.sandbox().await;
    let e = &t.engine;
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    for round in 0..40 {
        let content = Bytes::from(format!("round {round}\n"));
        let started = Instant::now();
        e.write_file(&id, &Tenant::Local, "lat/small.txt", content.clone())
            .await
            .expect("write");
        writes.push(started.elapsed());
        let started = Instant::now();
        let back = e
            .read_file(&id, &Tenant::Local, "lat/small.txt", 1 << 20)
            .await
            .expect("read");
        reads.push(started.elapsed());
        assert_eq!(back, content);
    }
    let (write_p50, write_max) = summary(&mut writes);
    let (read_p50, read_max) = summary(&mut reads);
    eprintln!(
        "small file: write p50 {write_p50:.1} ms (max {write_max:.1}), read p50 {read_p50:.1} ms (max {read_max:.1})"
    );
}

/// Runs `code` in the sandbox's kernel (as the sandbox's own code) and returns its stdout.
async fn execute(server: &TestServer, id: &str, code: &str) -> String {
    let result: Value = server
        .post(&format!("/containers/{id}/execute"))
        .json(&json!({ "code": code }))
        .send()
        .await
        .expect("execute")
        .json()
        .await
        .expect("execution result");
    assert_eq!(result["status"], "completed", "{result}");
    result["stdout"].as_str().unwrap_or_default().to_string()
}

/// The sandbox's container (not its network sidecar).
fn container_of(sandbox_id: &str) -> String {
    let id = crate::common::sandbox_container(sandbox_id);
    assert!(
        !id.is_empty() && !id.contains('\n'),
        "one container: {id:?}"
    );
    id
}

/// `sh -c script` as root in the container: the test's own eyes, outside the server. (Root
/// there has no capability either; it owns `/etc`, and reads what it owns.)
fn as_root(container: &str, script: &str) -> String {
    let output = Command::new("docker")
        .args(["exec", "-u", "0", container, "/bin/sh", "-c", script])
        .output()
        .expect("docker exec as root");
    assert!(
        output.status.success(),
        "root check {script:?} failed ({}): {} {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Extracts `tar` into the container's `/workspace` with `docker cp` (Docker's archive API,
/// acting as root): how the test leaves root-owned files in the workspace.
fn copy_in_as_root(container: &str, tar: &[u8]) {
    use std::io::Write;
    let mut copy = Command::new("docker")
        .args(["cp", "-", &format!("{container}:/workspace")])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("docker cp");
    copy.stdin
        .take()
        .expect("stdin")
        .write_all(tar)
        .expect("write the tar");
    assert!(copy.wait().expect("docker cp").success());
}

/// Sandbox code replaces `realpath` and `sh` for everything that looks them up on its PATH
/// (`~/.local/bin` comes first): the fakes record that they ran, and the fake `realpath` says
/// every path is inside the workspace. Then it plants links to `/etc`.
const PLANT: &str = r##"
import os, stat
bin_dir = os.path.expanduser("~/.local/bin")
os.makedirs(bin_dir, exist_ok=True)
fakes = {
    "realpath": "#!/bin/sh\necho ran >> /tmp/kbx-fake-ran\nfor a; do last=$a; done\nprintf '%s\\n' \"$last\"\n",
    "sh": "#!/bin/bash\necho ran >> /tmp/kbx-fake-ran\nexec /bin/bash \"$@\"\n",
}
for name, body in fakes.items():
    path = os.path.join(bin_dir, name)
    with open(path, "w") as f:
        f.write(body)
    os.chmod(path, 0o755)
for link in ("etclink", "evil"):
    if not os.path.lexists(link):
        os.symlink("/etc", link)
print("planted", os.readlink("etclink"), os.readlink("evil"))
"##;

/// What must not change in `/etc`: content digests, owners, link counts.
const ETC_STATE: &str = "sha256sum /etc/shadow /etc/motd /etc/issue /etc/passwd; stat -c '%n %u %g %h %a' /etc /etc/shadow /etc/motd /etc/issue /etc/passwd; ls /etc | sort | sha256sum";

/// Files changed since the marker, outside what the sandbox may write anyway.
const CHANGED_SINCE_MARKER: &str = "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /tmp -o -path /run -o -path /workspace -o -path /home/sandbox \\) -prune -o -newer /tmp/kbx-marker -print 2>/dev/null; true";

/// Starts the check: a marker file (root-owned, in /tmp) to compare mtimes against, and the
/// state of `/etc`.
fn mark(container: &str) -> String {
    as_root(
        container,
        "touch /tmp/kbx-marker && sleep 0.01 && rm -f /tmp/kbx-fake-ran",
    );
    as_root(container, ETC_STATE)
}

/// Ends the check: nothing outside the workspace changed, `/etc` is as it was, and no fake
/// binary ran.
fn assert_untouched(container: &str, etc_before: &str) {
    assert_eq!(as_root(container, ETC_STATE), etc_before, "/etc changed");
    let changed = as_root(container, CHANGED_SINCE_MARKER);
    assert_eq!(changed.trim(), "", "written outside the workspace");
    let ran = as_root(
        container,
        "[ -e /tmp/kbx-fake-ran ] && echo FAKE-RAN; echo checked",
    );
    assert_eq!(
        ran, "checked\n",
        "the server ran a binary the sandbox replaced"
    );
}

/// A tar whose entries are written byte for byte (names, link targets), so hostile ones survive.
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_size(content.len() as u64);
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        if !link.is_empty() {
            let target = link.as_bytes();
            header.as_old_mut().linkname[..target.len()].copy_from_slice(target);
        }
        header.set_cksum();
        builder.append(&header, *content).expect("append");
    }
    builder.into_inner().expect("tar")
}

async fn status_and_body(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    (status, response.text().await.unwrap_or_default())
}

fn multipart(name: &str, content: &'static [u8]) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(content).file_name(name.to_string()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_sandbox_cannot_turn_file_operations_on_the_system() {
    let Some(server) = TestServer::start("files-attack", &[]).await else {
        return;
    };
    let id = create(&server).await;
    let container = container_of(&id);
    let planted = execute(&server, &id, PLANT).await;
    assert_eq!(planted, "planted /etc /etc\n");
    let before = mark(&container);

    // Reads, listings and deletes through the planted link: refused, never served.
    for path in ["etclink/shadow", "etclink/passwd", "etclink", "evil/motd"] {
        let (status, body) = status_and_body(
            server
                .get(&format!("/containers/{id}/files/{path}"))
                .send()
                .await
                .expect("get"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "GET {path}: {body}");
        assert!(
            body.contains("path_outside_workspace"),
            "GET {path}: {body}"
        );
        assert!(!body.contains("root:"), "GET {path} leaked: {body}");
    }
    let (status, body) = status_and_body(
        server
            .delete(&format!("/containers/{id}/files/etclink/motd"))
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "DELETE etclink/motd: {body}"
    );
    let (status, body) = status_and_body(
        server
            .get(&format!("/containers/{id}/directories/etclink"))
            .send()
            .await
            .expect("tree"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "GET directories/etclink: {body}"
    );

    // Uploads through the planted link: refused, nothing written.
    let (status, body) = status_and_body(
        server
            .post(&format!("/containers/{id}/files/evil"))
            .multipart(multipart("x", b"evil"))
            .send()
            .await
            .expect("upload"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "upload evil/x: {body}");
    let (status, body) = status_and_body(
        server
            .post(&format!("/containers/{id}/files/evil"))
            .multipart(multipart("motd", b"pwned"))
            .send()
            .await
            .expect("upload"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "upload evil/motd: {body}");
    let regular = tar::EntryType::Regular;
    let symlink = tar::EntryType::Symlink;
    let hardlink = tar::EntryType::Link;
    let archives: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "a file through the planted link",
            "",
            raw_tar(&[("evil/x", regular, "", b"evil")]),
        ),
        (
            "into the planted link",
            "evil",
            raw_tar(&[("x", regular, "", b"evil")]),
        ),
        (
            "a chain of links, then a new file",
            "",
            raw_tar(&[
                ("a", symlink, ".", b""),
                ("a/b", symlink, "..", b""),
                ("b/etc/kbx-chain", regular, "", b"evil"),
            ]),
        ),
        (
            "a chain of links, then over a root-owned file",
            "",
            raw_tar(&[
                ("c", symlink, ".", b""),
                ("c/d", symlink, "..", b""),
                ("d/etc/motd", regular, "", b"pwned"),
            ]),
        ),
        (
            "a hard link through the planted link",
            "",
            raw_tar(&[("issue", hardlink, "evil/issue", b"")]),
        ),
        (
            "a hard link to an absolute path",
            "",
            raw_tar(&[("issue2", hardlink, "/etc/issue", b"")]),
        ),
    ];
    for (what, target, archive) in archives {
        let route = match target {
            "" => format!("/containers/{id}/directories"),
            target => format!("/containers/{id}/directories/{target}"),
        };
        let (status, body) = status_and_body(
            server
                .post(&route)
                .header("content-type", "application/x-tar")
                .body(archive)
                .send()
                .await
                .expect("upload tree"),
        )
        .await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {status} {body}"
        );
    }
    assert_untouched(&container, &before);
    let leftovers = as_root(
        &container,
        "ls -la /etc/kbx-chain /etc/x /workspace/issue /workspace/issue2 2>/dev/null; stat -c '%U %h' /etc/issue",
    );
    assert_eq!(leftovers, "root 1\n", "{leftovers}");
}

#[tokio::test(flavor = "multi_thread")]
async fn file_operations_have_the_sandbox_users_rights_only() {
    let Some(server) = TestServer::start("files-rights", &[]).await else {
        return;
    };
    let id = create(&server).await;
    let container = container_of(&id);
    // Root leaves a secret, a read-only file and a directory of its own in the workspace.
    let mut builder = tar::Builder::new(Vec::new());
    for (name, mode, content) in [
        ("secret", 0o600, &b"secret\n"[..]),
        ("readonly", 0o644, b"ro\n"),
        ("rootdir/kept", 0o644, b"x\n"),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(content.len() as u64);
        builder
            .append_data(&mut header, name, content)
            .expect("append");
    }
    copy_in_as_root(&container, &builder.into_inner().expect("tar"));
    let (status, body) = status_and_body(
        server
            .get(&format!("/containers/{id}/files/secret"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("permission_denied"), "{body}");
    assert!(!body.contains("secret\n"), "{body}");
    for (dir, name) in [("rootdir", "new"), ("", "readonly")] {
        let route = match dir {
            "" => format!("/containers/{id}/files"),
            dir => format!("/containers/{id}/files/{dir}"),
        };
        let (status, body) = status_and_body(
            server
                .post(&route)
                .multipart(multipart(name, b"overwritten"))
                .send()
                .await
                .expect("upload"),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{dir}/{name}: {body}");
        assert!(body.contains("permission_denied"), "{body}");
    }
    let (status, body) = status_and_body(
        server
            .delete(&format!("/containers/{id}/files/rootdir/kept"))
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let state = as_root(
        &container,
        "cd /workspace && cat secret readonly rootdir/kept && ls rootdir && stat -c '%U' secret readonly",
    );
    assert_eq!(state, "secret\nro\nx\nkept\nroot\nroot\n");
    // What the server writes belongs to the sandbox user.
    let (status, body) = status_and_body(
        server
            .post(&format!("/containers/{id}/files/mine"))
            .multipart(multipart("file.txt", b"mine"))
            .send()
            .await
            .expect("upload"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        as_root(
            &container,
            "stat -c '%u:%g %a' /workspace/mine /workspace/mine/file.txt"
        ),
        "1000:1000 755\n1000:1000 644\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn links_inside_the_workspace_keep_working() {
    let Some(server) = TestServer::start("files-links", &[]).await else {
        return;
    };
    let id = create(&server).await;
    let setup = execute(
        &server,
        &id,
        "import os\nos.makedirs('data/sub')\nopen('data/real.txt','w').write('real')\nopen('data/sub/deep.txt','w').write('deep')\nos.symlink('data/real.txt','rel')\nos.symlink('/workspace/data/real.txt','abs')\nos.symlink('data','dirlink')\nos.symlink('../real.txt','data/sub/up')\nos.symlink('/workspace','data/root')\nprint('ok')",
    )
    .await;
    assert_eq!(setup, "ok\n");
    for path in [
        "rel",
        "abs",
        "dirlink/real.txt",
        "data/sub/up",
        "data/root/data/root/rel",
        "dirlink/sub/../real.txt",
    ] {
        let response = server
            .get(&format!("/containers/{id}/files/{path}"))
            .send()
            .await
            .expect("get");
        let (status, body) = status_and_body(response).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "real"), "{path}");
    }
    let listing: Value = server
        .get(&format!("/containers/{id}/files/dirlink"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("listing");
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|entry| entry["name"].as_str())
        .collect();
    assert_eq!(names, ["real.txt", "root", "sub"], "{listing}");
    // A write through a link lands on its target, in the workspace; the link stays a link.
    let (status, body) = status_and_body(
        server
            .post(&format!("/containers/{id}/files/dirlink"))
            .multipart(multipart("new.txt", b"new"))
            .send()
            .await
            .expect("upload"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body.contains("/workspace/data/new.txt"), "{body}");
    let check = execute(
        &server,
        &id,
        "import os; print(open('data/new.txt').read(), os.path.islink('dirlink'))",
    )
    .await;
    assert_eq!(check, "new True\n");
    // Deleting a link removes the link only.
    let deleted = server
        .delete(&format!("/containers/{id}/files/dirlink"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let check = execute(
        &server,
        &id,
        "import os; print(os.path.lexists('dirlink'), open('data/real.txt').read())",
    )
    .await;
    assert_eq!(check, "False real\n");
}

/// Sandbox code that swaps `/workspace/d` between a directory and a link to `/etc` as fast as
/// it can (an atomic exchange with renameat2 when it can, plain renames otherwise), until
/// `/workspace/stop` appears or a minute passes; it leaves `d` a directory and its count of
/// swaps in `swaps`.
const SWAPPER: &str = r#"
import os, subprocess, sys
script = r'''
import ctypes, os, time
os.chdir("/workspace")
os.makedirs("d", exist_ok=True)
if not os.path.lexists("d_alt"):
    os.symlink("/etc", "d_alt")
try:
    libc = ctypes.CDLL(None, use_errno=True)
    def swap():
        if libc.renameat2(-100, b"d", -100, b"d_alt", 2) != 0:
            raise OSError(ctypes.get_errno(), "renameat2")
    swap(); swap()
except Exception:
    def swap():
        os.rename("d", "d_tmp"); os.rename("d_alt", "d"); os.rename("d_tmp", "d_alt")
deadline = time.time() + 60
swaps = 0
while not os.path.exists("stop") and time.time() < deadline:
    swap()
    swaps += 1
if os.path.islink("d"):
    swap()
open("swaps", "w").write(str(swaps))
'''
swapper = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("started")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_swapped_for_a_link_during_uploads_leads_nowhere() {
    let Some(server) = TestServer::start("files-race", &[]).await else {
        return;
    };
    let id = create(&server).await;
    let container = container_of(&id);
    let before = mark(&container);
    assert_eq!(execute(&server, &id, SWAPPER).await, "started\n");
    // [files, archives]
    let mut written = [0; 2];
    let mut refused = [0; 2];
    let server = &server;
    let id = id.as_str();
    for round in 0..25 {
        let uploads = (0..4).map(|lane| async move {
            let name = format!("kbx-race-{round}-{lane}");
            let response = if lane % 2 == 0 {
                server
                    .post(&format!("/containers/{id}/files/d"))
                    .multipart(multipart(&name, b"race"))
                    .send()
                    .await
            } else {
                server
                    .post(&format!("/containers/{id}/directories"))
                    .header("content-type", "application/x-tar")
                    .body(raw_tar(&[(
                        &format!("d/{name}"),
                        tar::EntryType::Regular,
                        "",
                        b"race",
                    )]))
                    .send()
                    .await
            };
            let (status, body) = status_and_body(response.expect("upload")).await;
            assert!(!status.is_server_error(), "{name}: {status} {body}");
            (lane % 2, status.is_success(), body)
        });
        // Reads race too: `d/shadow` exists only in `/etc`.
        let reads = (0..2).map(|_| async move {
            let response = server
                .get(&format!("/containers/{id}/files/d/shadow"))
                .send()
                .await
                .expect("read");
            let (status, body) = status_and_body(response).await;
            assert!(
                status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND,
                "a read through the raced link: {status} {body}"
            );
            assert!(!body.contains("root:"), "{body}");
        });
        let (results, _) = futures::future::join(
            futures::future::join_all(uploads),
            futures::future::join_all(reads),
        )
        .await;
        for (kind, ok, body) in results {
            if ok {
                written[kind] += 1;
            } else {
                refused[kind] += 1;
                if refused[kind] == 1 {
                    eprintln!("race: a refusal: {body}");
                }
            }
        }
    }
    let swaps = execute(
        server,
        id,
        "open('stop', 'w').close()\nswapper.wait(timeout=60)\nprint(open('swaps').read())",
    )
    .await;
    eprintln!(
        "race: files {} written, {} refused; archives {} written, {} refused; {} swaps",
        written[0],
        refused[0],
        written[1],
        refused[1],
        swaps.trim()
    );
    assert!(
        written.iter().all(|count| *count > 0),
        "some uploads land while d is a directory"
    );
    assert!(
        swaps.trim().parse::<u64>().unwrap_or(0) > 100,
        "the swapper ran: {swaps}"
    );
    assert_untouched(&container, &before);
    assert_eq!(
        as_root(&container, "ls /etc | grep -c kbx-race || true").trim(),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_keep_odd_names_and_large_directories() {
    let Some(t) = TestEngine::start("files-listing").await else {
        return;
    };
    let id = t.sandbox().await;
    let made = t
        .run(
            &id,
            "import os\nos.makedirs('many')\nfor i in range(20000):\n    open('many/file-%05d' % i, 'w').close()\nopen(b'many/bad\\xffname', 'w').close()\nopen('many/two\\nlines', 'w').close()\nprint(len(os.listdir('many')))",
        )
        .await;
    assert_eq!(made.stdout, "20002\n", "{made:?}");
    let started = Instant::now();
    let listing = t
        .engine
        .list_files(&id, &Tenant::Local, "many")
        .await
        .expect("list");
    eprintln!(
        "listing of 20002 entries: {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(listing.len(), 20002);
    assert_eq!(listing[0].name, "bad\u{fffd}name");
    assert_eq!(listing[1].name, "file-00000");
    assert_eq!(listing[20001].name, "two\nlines");
    assert_eq!(listing[20001].path, "/workspace/many/two\nlines");
}

/// POSTs `body` to a copy or move route: (status, body text).
async fn transfer(server: &TestServer, id: &str, op: &str, body: Value) -> (StatusCode, String) {
    status_and_body(
        server
            .post(&format!("/containers/{id}/{op}"))
            .json(&body)
            .send()
            .await
            .expect(op),
    )
    .await
}

/// Exists, stat, mkdir, copy and move against planted links (absolute, relative, dangling, in a
/// tree) and lexical escapes: every way out is refused, on the source and on the destination;
/// a link as the destination is replaced, never written through; a tree with a link to `/etc`
/// copies the link, not `/etc`. Checked as root: nothing outside `/workspace` changed.
#[tokio::test(flavor = "multi_thread")]
async fn copy_move_stat_and_mkdir_refuse_every_way_out() {
    let Some(server) = TestServer::start("files-ops-attack", &[]).await else {
        return;
    };
    let id = create(&server).await;
    let container = container_of(&id);
    assert_eq!(execute(&server, &id, PLANT).await, "planted /etc /etc\n");
    let planted = execute(
        &server,
        &id,
        "import os\nos.symlink('../etc', 'rel')\nos.symlink('/etc/kbx-created', 'dangle')\n\
         os.symlink('/etc/motd', 'motdlink')\nos.makedirs('tree')\nos.symlink('/etc', 'tree/out')\n\
         open('tree/mine.txt', 'w').write('mine')\nopen('mine.txt', 'w').write('mine')\nprint('ok')",
    )
    .await;
    assert_eq!(planted, "ok\n");
    let before = mark(&container);
    let outside = |status: StatusCode, body: &str, what: &str| {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert!(body.contains("path_outside_workspace"), "{what}: {body}");
        assert!(!body.contains("root:"), "{what} leaked: {body}");
    };
    let through_links = [
        "etclink",
        "etclink/passwd",
        "evil/motd",
        "rel",
        "rel/shadow",
        "dangle",
        "tree/out/passwd",
    ];
    for path in through_links {
        for route in ["exists", "stat"] {
            let (status, body) = status_and_body(
                server
                    .get(&format!("/containers/{id}/{route}/{path}"))
                    .send()
                    .await
                    .expect(route),
            )
            .await;
            outside(status, &body, &format!("{route} {path}"));
        }
        let head = server
            .http
            .head(server.url(&format!("/containers/{id}/files/{path}/passwd")))
            .send()
            .await
            .expect("head");
        assert_eq!(head.status(), StatusCode::BAD_REQUEST, "HEAD {path}/passwd");
        let (status, body) = status_and_body(
            server
                .post(&format!("/containers/{id}/mkdir/{path}/kbx-made"))
                .send()
                .await
                .expect("mkdir"),
        )
        .await;
        outside(status, &body, &format!("mkdir {path}/kbx-made"));
    }
    // `dangle` itself: a made directory would land in /etc.
    let (status, body) = status_and_body(
        server
            .post(&format!("/containers/{id}/mkdir/dangle"))
            .send()
            .await
            .expect("mkdir"),
    )
    .await;
    outside(status, &body, "mkdir dangle");
    let lexical = [
        "../etc/passwd",
        "/etc/passwd",
        "tree/../../etc/passwd",
        "/workspace/../etc",
    ];
    for op in ["copy", "move"] {
        for source in through_links.iter().chain(&lexical) {
            if *source == "dangle" && op == "move" {
                continue; // moving the link itself is checked below
            }
            let (status, body) = transfer(
                &server,
                &id,
                op,
                json!({"source": source, "destination": "kbx-got"}),
            )
            .await;
            outside(status, &body, &format!("{op} from {source}"));
        }
        for destination in ["etclink/kbx-put", "rel/kbx-put", "tree/out/kbx-put"]
            .iter()
            .chain(&lexical)
        {
            for overwrite in [false, true] {
                let (status, body) = transfer(
                    &server,
                    &id,
                    op,
                    json!({"source": "mine.txt", "destination": destination, "overwrite": overwrite}),
                )
                .await;
                outside(status, &body, &format!("{op} to {destination}"));
            }
        }
    }
    // A link as the destination is replaced itself: /etc/motd keeps its content.
    let (status, body) = transfer(
        &server,
        &id,
        "copy",
        json!({"source": "mine.txt", "destination": "motdlink", "overwrite": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = transfer(
        &server,
        &id,
        "move",
        json!({"source": "tree/mine.txt", "destination": "dangle", "overwrite": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A tree holding a link to /etc: the link is copied as a link, /etc is not.
    let (status, body) = transfer(
        &server,
        &id,
        "copy",
        json!({"source": "tree", "destination": "tree2"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // (Seen by the sandbox user: its files are private to it, even from capability-less root.)
    let seen = execute(
        &server,
        &id,
        "import os\nprint(os.readlink('tree2/out'), sorted(os.listdir('tree2')), \
         open('motdlink').read(), open('dangle').read(), os.path.islink('motdlink'), \
         os.path.islink('dangle'))",
    )
    .await;
    assert_eq!(seen, "/etc ['out'] mine mine False False\n");
    // Moving a link that leads out is refused too.
    let (status, body) = transfer(
        &server,
        &id,
        "move",
        json!({"source": "etclink", "destination": "kbx-moved"}),
    )
    .await;
    outside(status, &body, "move etclink");
    assert_untouched(&container, &before);
    assert_eq!(
        as_root(&container, "ls /etc | grep -c kbx || true").trim(),
        "0"
    );
}

/// Copy, move and mkdir with the sandbox user's rights: a root-only file is not read by a copy
/// (alone or inside a tree), a root-owned file is neither overwritten nor moved, a root-owned
/// directory takes nothing new. Each is 403 `permission_denied`, and leaves no half-made copy.
#[tokio::test(flavor = "multi_thread")]
async fn copy_and_move_have_the_sandbox_users_rights_only() {
    let Some(server) = TestServer::start("files-ops-rights", &[]).await else {
        return;
    };
    let id = create(&server).await;
    let container = container_of(&id);
    let mut builder = tar::Builder::new(Vec::new());
    for (name, mode, content) in [
        ("secret", 0o600, &b"secret\n"[..]),
        ("readonly", 0o644, b"ro\n"),
        ("rootdir/kept", 0o644, b"x\n"),
        ("mixed/secret", 0o600, b"secret\n"),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(content.len() as u64);
        builder
            .append_data(&mut header, name, content)
            .expect("append");
    }
    copy_in_as_root(&container, &builder.into_inner().expect("tar"));
    assert_eq!(
        execute(
            &server,
            &id,
            "open('mine.txt', 'w').write('mine')\nprint('ok')"
        )
        .await,
        "ok\n"
    );
    let denied = |status: StatusCode, body: &str, what: &str| {
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
        assert!(body.contains("permission_denied"), "{what}: {body}");
        assert!(!body.contains("secret\n"), "{what} leaked: {body}");
    };
    for (op, source, destination, overwrite) in [
        ("copy", "secret", "got-secret", false),
        ("copy", "mixed", "got-mixed", false),
        ("copy", "mine.txt", "readonly", true),
        ("copy", "mine.txt", "rootdir/new", false),
        ("copy", "mine.txt", "rootdir/kept", true),
        ("move", "mine.txt", "readonly", true),
        ("move", "readonly", "taken", false),
        ("move", "secret", "taken", false),
        ("move", "mine.txt", "rootdir/new", false),
    ] {
        let (status, body) = transfer(
            &server,
            &id,
            op,
            json!({"source": source, "destination": destination, "overwrite": overwrite}),
        )
        .await;
        denied(status, &body, &format!("{op} {source} -> {destination}"));
    }
    let (status, body) = status_and_body(
        server
            .post(&format!("/containers/{id}/mkdir/rootdir/sub"))
            .send()
            .await
            .expect("mkdir"),
    )
    .await;
    denied(status, &body, "mkdir rootdir/sub");
    // Stat is no read: it describes a root-only file without its content.
    let (status, body) = status_and_body(
        server
            .get(&format!("/containers/{id}/stat/secret"))
            .send()
            .await
            .expect("stat"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""mode":"0600""#), "{body}");
    assert_eq!(
        as_root(
            &container,
            "cd /workspace && cat secret readonly rootdir/kept && ls -A && ls -A rootdir && ls -A mixed && stat -c '%U' secret readonly"
        ),
        "secret\nro\nx\nmine.txt\nmixed\nreadonly\nrootdir\nsecret\nkept\nsecret\nroot\nroot\n"
    );
    assert_eq!(
        execute(&server, &id, "print(open('mine.txt').read())").await,
        "mine\n"
    );
}

/// Copies and moves while sandbox code swaps a directory for a link to `/etc` as fast as it can:
/// each either acts inside the workspace or is refused; none reads `/etc` or writes into it.
#[tokio::test(flavor = "multi_thread")]
async fn a_directory_swapped_for_a_link_during_copies_leads_nowhere() {
    let Some(server) = TestServer::start("files-ops-race", &[]).await else {
        return;
    };
    let id = create(&server).await;
    let container = container_of(&id);
    assert_eq!(
        execute(
            &server,
            &id,
            "import os\nos.makedirs('d')\nopen('d/passwd', 'w').write('fake')\nopen('x.txt', 'w').write('x')\nprint('ok')"
        )
        .await,
        "ok\n"
    );
    let before = mark(&container);
    assert_eq!(execute(&server, &id, SWAPPER).await, "started\n");
    let server = &server;
    let id = id.as_str();
    let mut done = 0;
    let mut refused = 0;
    for round in 0..20 {
        let calls = (0..4).map(|lane| async move {
            let body = match lane {
                0 => json!({"source": "d/passwd", "destination": format!("got-{round}")}),
                1 => json!({"source": "x.txt", "destination": format!("d/kbx-race-{round}")}),
                2 => json!({"source": "d", "destination": format!("tree-{round}")}),
                _ => json!({"source": format!("d/kbx-race-{round}"), "destination": format!("d/kbx-moved-{round}")}),
            };
            let op = if lane == 3 { "move" } else { "copy" };
            let (status, text) = transfer(server, id, op, body).await;
            assert!(!status.is_server_error(), "{op}: {status} {text}");
            assert!(!text.contains("root:"), "{text}");
            status.is_success()
        });
        for ok in futures::future::join_all(calls).await {
            if ok {
                done += 1;
            } else {
                refused += 1;
            }
        }
    }
    let swaps = execute(
        server,
        id,
        "open('stop', 'w').close()\nswapper.wait(timeout=60)\nprint(open('swaps').read())",
    )
    .await;
    eprintln!(
        "copy race: {done} done, {refused} refused, {} swaps",
        swaps.trim()
    );
    assert!(done > 0, "some copies land while d is a directory");
    // What the copies got is the workspace's file, never /etc/passwd (read as the sandbox user,
    // whose files they are).
    let got = execute(
        server,
        id,
        "import glob\nfound = sorted(glob.glob('got-*') + glob.glob('tree-*/passwd'))\n\
         print(len(found), set(open(p).read() for p in found))",
    )
    .await;
    assert!(
        got.ends_with(" {'fake'}\n") && !got.starts_with("0 "),
        "copies: {got}"
    );
    assert_untouched(&container, &before);
    assert_eq!(
        as_root(&container, "ls /etc | grep -c kbx || true").trim(),
        "0"
    );
}
