//! pip inside a sandbox, as the sandbox user: a bare `pip install` goes to the user site, and
//! `--target` and `--prefix` install where they say. The package comes from a package index the
//! test serves itself (a wheel it builds, behind `python3 -m http.server` on the sandbox's
//! loopback), so nothing leaves the machine.

use serde_json::Value;

use crate::common::TestEngine;

/// Builds the wheel `kbdemo 1.0` (one module, `VALUE = 42`) and a PEP 503 index for it under
/// `/workspace/index`, serves it on a free loopback port, runs the three installs, and prints
/// what happened as JSON.
const SCENARIO: &str = r#"
import base64, glob, hashlib, json, os, site, subprocess, sys, zipfile

root = "/workspace/index/simple/kbdemo"
os.makedirs(root, exist_ok=True)
wheel = "kbdemo-1.0-py3-none-any.whl"
files = {
    "kbdemo/__init__.py": "VALUE = 42\n",
    "kbdemo-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: kbdemo\nVersion: 1.0\n",
    "kbdemo-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: kernelbox-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(os.path.join(root, wheel), "w") as archive:
    for name, text in files.items():
        archive.writestr(name, text)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text)}")
    record.append("kbdemo-1.0.dist-info/RECORD,,")
    archive.writestr("kbdemo-1.0.dist-info/RECORD", "\n".join(record) + "\n")
with open(os.path.join(root, "index.html"), "w") as page:
    page.write(f'<html><body><a href="{wheel}">{wheel}</a></body></html>')

server = subprocess.Popen(
    [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "-d", "/workspace/index"],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
)
line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (...)": it listens
port = int(line.split(" port ")[1].split()[0])
index = f"http://127.0.0.1:{port}/simple/"

def pip(*args):
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-input", "--no-cache-dir", "--index-url", index, *args, "kbdemo"],
        capture_output=True, text=True, timeout=120,
    )
    return {"code": done.returncode, "output": (done.stdout + done.stderr)[-2000:]}

def found(pattern):
    return sorted(glob.glob(pattern, recursive=True))

report = {}
report["target"] = pip("--target", "/workspace/lib")
report["target_files"] = found("/workspace/lib/kbdemo/__init__.py")
report["prefix"] = pip("--prefix", "/workspace/prefix")
report["prefix_files"] = found("/workspace/prefix/**/kbdemo/__init__.py")
report["bare"] = pip()
user_site = site.getusersitepackages()
report["user_site"] = user_site
report["bare_files"] = found(os.path.join(user_site, "kbdemo/__init__.py"))
imported = subprocess.run(
    [sys.executable, "-c", "import kbdemo; print(kbdemo.__file__, kbdemo.VALUE)"],
    capture_output=True, text=True, cwd="/", timeout=60,
)
report["imported"] = (imported.stdout + imported.stderr).strip()
server.kill()
print(json.dumps(report))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn pip_installs_to_the_user_site_by_default_and_honours_target_and_prefix() {
    let Some(t) = TestEngine::start("pip").await else {
        return;
    };
    let id = t.sandbox().await;
    let result = t.run(&id, SCENARIO).await;
    assert!(result.error.is_none(), "{result:?}");
    let report: Value = serde_json::from_str(result.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {result:?}"));
    for install in ["target", "prefix", "bare"] {
        assert_eq!(
            report[install]["code"], 0,
            "pip install ({install}): {report:#}"
        );
    }
    assert_eq!(
        report["target_files"],
        serde_json::json!(["/workspace/lib/kbdemo/__init__.py"]),
        "{report:#}"
    );
    assert_eq!(
        report["prefix_files"].as_array().map(Vec::len),
        Some(1),
        "--prefix installed nothing under /workspace/prefix: {report:#}"
    );
    let user_site = report["user_site"].as_str().expect("user site");
    assert!(user_site.starts_with("/home/"), "{report:#}");
    assert_eq!(
        report["bare_files"].as_array().map(Vec::len),
        Some(1),
        "a bare install did not go to the user site: {report:#}"
    );
    let imported = report["imported"].as_str().unwrap_or_default();
    assert!(
        imported.starts_with(user_site) && imported.ends_with(" 42"),
        "{report:#}"
    );
}
