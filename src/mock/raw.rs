//! The mock's raw answers for protocol tests: bytes written straight onto the TLS stream,
//! past hyper's encoder, which would refuse to frame them (both lengths, a coding list, a
//! stray 1xx, HTTP/1.0, a stalled or truncated body). The connection is closed after each.

use super::api::{pattern_bytes, ApiMode};
use super::JSON;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// A connection's TLS stream, shared by hyper and the raw answers. A raw answer is written
/// while hyper waits for the handler, so the two never write at once; each poll holds the
/// lock for its own duration only.
#[derive(Clone)]
pub(super) struct SharedIo(Arc<Mutex<Tls>>);

impl SharedIo {
    pub(super) fn new(tls: Tls) -> SharedIo {
        SharedIo(Arc::new(Mutex::new(tls)))
    }

    fn with<R>(&self, f: impl FnOnce(Pin<&mut Tls>) -> R) -> R {
        f(Pin::new(&mut *self.0.lock().unwrap()))
    }
}

impl AsyncRead for SharedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.with(|tls| tls.poll_read(cx, buf))
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.with(|tls| tls.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.with(|tls| tls.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.0.lock().unwrap().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|tls| tls.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|tls| tls.poll_shutdown(cx))
    }
}

/// What a raw answer sends: `now`; for a stall, `held` once released; then a close.
#[derive(Debug)]
pub(super) struct Plan {
    now: Vec<u8>,
    held: Option<Vec<u8>>,
}

/// The bytes of `mode`'s raw answer, built from the answer the endpoint gives normally and
/// Zuora's headers; `None` for the modes hyper answers.
pub(super) fn plan(mode: &ApiMode, normal: &Response<Bytes>, zuora: &HeaderMap) -> Option<Plan> {
    let (status, body) = (normal.status(), normal.body());
    let headers: Vec<(&HeaderName, &HeaderValue)> = normal.headers().iter().chain(zuora).collect();
    let headers = headers.as_slice();
    let length = |n: usize| ("content-length", n.to_string());
    let mut held = None;
    let now = match mode {
        ApiMode::BothLengths => {
            let mut now = head(
                "HTTP/1.1",
                status,
                headers,
                &[length(body.len() / 2), ("transfer-encoding", "chunked".into())],
            );
            now.extend(chunked(body, true));
            now
        }
        ApiMode::TransferCoding(codings) => {
            let list: Vec<String> = codings.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
            let mut data = body.to_vec();
            for coding in &list {
                if coding == "gzip" || coding == "x-gzip" {
                    data = gzip(&data);
                }
            }
            let mut now = head("HTTP/1.1", status, headers, &[("transfer-encoding", codings.clone())]);
            // Chunked last frames the body; otherwise the close ends it (RFC 9112 §6.3).
            now.extend(if list.last().is_some_and(|c| c == "chunked") {
                chunked(&data, true)
            } else {
                data
            });
            now
        }
        ApiMode::Informational(101) => {
            let mut now =
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n".to_vec();
            // A WebSocket text frame: not HTTP, of no use to a client that asked for none.
            now.extend(b"\x81\x05hello");
            now
        }
        ApiMode::Informational(code) => {
            let interim = StatusCode::from_u16(*code).ok();
            let reason = interim.and_then(|s| s.canonical_reason()).unwrap_or("Informational");
            let mut now = format!("HTTP/1.1 {code} {reason}\r\n\r\n").into_bytes();
            now.extend(head("HTTP/1.1", status, headers, &[length(body.len())]));
            now.extend(body);
            now
        }
        ApiMode::EarlyAnswer { status } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::PAYLOAD_TOO_LARGE);
            let (message, challenge) = match status {
                StatusCode::UNAUTHORIZED => ("Authentication error", Some(super::api::CHALLENGE)),
                other => (other.canonical_reason().unwrap_or("Refused"), None),
            };
            let answer = serde_json::json!({ "message": message }).to_string();
            let mut extra = vec![("content-type", JSON.to_string()), length(answer.len())];
            extra.extend(challenge.map(|c| ("www-authenticate", c.to_string())));
            // The endpoint's own headers describe a body this answer does not have.
            let zuora: Vec<(&HeaderName, &HeaderValue)> = zuora.iter().collect();
            let mut now = head("HTTP/1.1", status, &zuora, &extra);
            now.extend(answer.as_bytes());
            now
        }
        ApiMode::Http10 => {
            let mut now = head("HTTP/1.0", status, headers, &[length(body.len())]);
            now.extend(body);
            now
        }
        ApiMode::StallBody { after_bytes, declared } => {
            let data = pattern_bytes(*declared);
            let split = (*after_bytes).min(data.len());
            let mut now = head("HTTP/1.1", status, headers, &[octets(), length(*declared)]);
            now.extend(&data[..split]);
            held = Some(data[split..].to_vec());
            now
        }
        ApiMode::Truncated { declared, sent } => {
            let mut now = head("HTTP/1.1", status, headers, &[octets(), length(*declared)]);
            now.extend(pattern_bytes(*sent));
            now
        }
        ApiMode::TruncatedChunked => {
            let mut now = head("HTTP/1.1", status, headers, &[("transfer-encoding", "chunked".into())]);
            now.extend(chunked(body, false));
            now
        }
        _ => return None,
    };
    Some(Plan { now, held })
}

/// Sends a planned answer and closes. `release` must be subscribed before the first byte
/// goes out, so that a test releasing a stall it has seen is never missed.
pub(super) async fn send(io: &mut SharedIo, plan: Plan, mut release: watch::Receiver<u64>) -> io::Result<()> {
    io.write_all(&plan.now).await?;
    io.flush().await?;
    if let Some(rest) = plan.held {
        // Silent with the connection open, until released (or the mock is dropped).
        let _ = release.changed().await;
        io.write_all(&rest).await?;
        io.flush().await?;
    }
    io.shutdown().await
}

fn octets() -> (&'static str, String) {
    ("content-type", "application/octet-stream".into())
}

/// A status line and header block: `headers` (less the framing the mode sets in `extra`),
/// then `extra`, then `connection: close`.
fn head(
    version: &str,
    status: StatusCode,
    headers: &[(&HeaderName, &HeaderValue)],
    extra: &[(&str, String)],
) -> Vec<u8> {
    let reason = status.canonical_reason().unwrap_or("Unknown");
    let mut out = format!("{version} {} {reason}\r\n", status.as_u16()).into_bytes();
    let kept = headers
        .iter()
        .filter(|(name, _)| !extra.iter().any(|(n, _)| name == n) && *name != http::header::CONNECTION)
        .map(|(name, value)| (name.as_str(), value.as_bytes()));
    for (name, value) in kept.chain(extra.iter().map(|(n, v)| (*n, v.as_bytes()))) {
        out.extend(name.as_bytes());
        out.extend(b": ");
        out.extend(value);
        out.extend(b"\r\n");
    }
    out.extend(b"connection: close\r\n\r\n");
    out
}

/// `data` as chunks of at most 4 KiB, with the last (empty) chunk when `last`.
fn chunked(data: &[u8], last: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    for chunk in data.chunks(4096) {
        out.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend(chunk);
        out.extend(b"\r\n");
    }
    if last {
        out.extend(b"0\r\n\r\n");
    }
    out
}

/// `data` as a gzip member of stored (uncompressed) deflate blocks: real gzip that any
/// decoder reads, without a compression library in the binary.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let blocks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(usize::from(u16::MAX)).collect()
    };
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend(*block);
    }
    out.extend(crc32(data).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE), bit by bit: the mock's bodies are small.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn gzip_is_a_stored_member_with_the_data_length_and_crc() {
        let data = pattern_bytes(70_000);
        let member = gzip(&data);
        assert_eq!(&member[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(member.len(), 10 + 2 * 5 + data.len() + 8, "two stored blocks");
        assert_eq!(member[10], 0, "the first block is not the last");
        assert_eq!(&member[member.len() - 4..], &(data.len() as u32).to_le_bytes());
        assert_eq!(&member[member.len() - 8..member.len() - 4], &crc32(&data).to_le_bytes());
    }

    #[test]
    fn chunked_ends_with_the_last_chunk_only_when_asked() {
        assert_eq!(chunked(b"hello", true), b"5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(chunked(b"hello", false), b"5\r\nhello\r\n");
    }
}
