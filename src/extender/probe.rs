//! `vramfit probe`: one plain-HTTP `GET` to the local server, for Kubernetes exec probes.
//!
//! The extender listens on loopback inside the scheduler pod, which the kubelet's `httpGet`
//! probes cannot reach (they connect to the pod IP), and the runtime image has no shell or
//! curl. So the probe runs the binary itself: success is status 200, anything else (refused,
//! timeout, another status) is a one-line error and exit code 1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Most of a reply the probe reads; the status line comes first.
const MAX_REPLY: u64 = 64 * 1024;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The path does not start with `/` (or holds whitespace or control characters).
    #[error("path must start with '/', got {0:?}")]
    BadPath(String),
    /// Connecting, writing or reading failed.
    #[error("{addr}: {error}")]
    Io {
        /// The address probed.
        addr: SocketAddr,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The reply did not start with an HTTP status line.
    #[error("{addr}: not an HTTP reply: {line:?}")]
    NotHttp {
        /// The address probed.
        addr: SocketAddr,
        /// The reply's first line, clipped to 80 characters.
        line: String,
    },
    /// The reply's status was not 200.
    #[error("GET http://{addr}{path}: status {status}")]
    Status {
        /// The address probed.
        addr: SocketAddr,
        /// The path requested.
        path: String,
        /// The HTTP status code.
        status: u16,
    },
}

/// GETs `http://{addr}{path}` and returns the reply body when the status is 200.
pub fn check(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, ProbeError> {
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ProbeError::BadPath(path.to_string()));
    }
    let io = |error| ProbeError::Io { addr, error };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: vramfit-probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut reply = Vec::new();
    stream.take(MAX_REPLY).read_to_end(&mut reply).map_err(io)?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| ProbeError::NotHttp {
            addr,
            line: status_line.chars().take(80).collect(),
        })?;
    if status != 200 {
        return Err(ProbeError::Status {
            addr,
            path: path.to_string(),
            status,
        });
    }
    Ok(body.to_string())
}
