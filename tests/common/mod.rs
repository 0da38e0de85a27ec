//! Helpers shared by the test targets, one of each: core facts builders ([`facts`]), Kubernetes
//! Node/Pod JSON builders ([`objects`]), one fake API server ([`api`]) and the calls to an
//! in-process router ([`router`]). Each target uses a part, hence `dead_code` is allowed here.
#![allow(dead_code, unused_imports)]

pub mod api;
pub mod facts;
pub mod objects;
pub mod router;

pub use facts::*;

/// Waits for `check` to hold, polling every 10 ms (a guard against a hang, not a timing
/// assertion: the bound is minutes, far beyond anything the tests wait for).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..12_000 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// A loopback port free at the time of asking (for servers the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The stdout of a command that must have exited 0 (its stderr is the failure message).
pub fn succeeded(out: &std::process::Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

/// Writes `text` to `name` in this test process's scratch folder and returns the path.
pub fn scratch(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vramfit-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
