//! One request, one response over the daemon's Unix socket.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use actors::api::{self, Request, Response};

#[derive(Debug)]
pub enum ClientError {
    /// The daemon could not be reached at all.
    Unreachable(String),
    /// The daemon was reached but the exchange failed.
    Exchange(String),
}

pub fn call(socket: &Path, timeout: Duration, request: &Request) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such socket".to_string(),
            std::io::ErrorKind::ConnectionRefused => {
                "connection refused (a stale socket: the daemon is gone)".to_string()
            }
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (run as root or as a member of the socket's group)".to_string()
            }
            _ => e.to_string(),
        };
        ClientError::Unreachable(format!(
            "cannot reach x0tta6bl4-ebpfd at {}: {why}; start it with `sudo x0tta6bl4-ebpfd` \
             (or pass --socket PATH if it listens elsewhere)",
            socket.display()
        ))
    })?;
    let exchange = |e: std::io::Error| {
        let why = if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!("no answer within {}s (raise --timeout)", timeout.as_secs())
        } else {
            e.to_string()
        };
        ClientError::Exchange(format!(
            "talking to x0tta6bl4-ebpfd at {}: {why}",
            socket.display()
        ))
    };
    stream.set_read_timeout(Some(timeout)).map_err(exchange)?;
    stream.set_write_timeout(Some(timeout)).map_err(exchange)?;
    let frame = api::encode_frame(request).map_err(|e| ClientError::Exchange(e.to_string()))?;
    stream.write_all(&frame).map_err(exchange)?;
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).map_err(exchange)?;
    let len = api::frame_len(prefix, api::MAX_RESPONSE_LEN)
        .map_err(|e| ClientError::Exchange(format!("bad response: {e}")))?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).map_err(exchange)?;
    api::decode_body(&body).map_err(|e| ClientError::Exchange(format!("bad response: {e}")))
}
