//! HTTP/1.x on a raw socket: reading responses byte by byte as the proxy sends them, for tests
//! that write requests no well-behaved client would.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// One HTTP/1.x response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads one response, keeping any bytes past it in `buf` for the next call.
pub async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    within: Duration,
) -> Result<RawResponse, String> {
    let deadline = Instant::now() + within;
    let mut eof = false;
    loop {
        if let Some((response, used)) = parse_response(buf, eof) {
            buf.drain(..used);
            return Ok(response);
        }
        if eof {
            return Err(format!(
                "closed before a whole response: {:?}",
                String::from_utf8_lossy(buf)
            ));
        }
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => {
                return Err(format!(
                    "no whole response within {within:?}: {:?}",
                    String::from_utf8_lossy(buf)
                ))
            }
            Ok(Ok(0)) | Ok(Err(_)) => eof = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A complete response at the start of `data`, and how many bytes it took.
pub fn parse_response(data: &[u8], eof: bool) -> Option<(RawResponse, usize)> {
    let end = find(data, b"\r\n\r\n", 0)?;
    let head = String::from_utf8_lossy(&data[..end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let start = end + 4;
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let done = |body: Vec<u8>, used: usize| {
        Some((
            RawResponse {
                status,
                headers: headers.clone(),
                body,
            },
            used,
        ))
    };
    if status < 200 || status == 204 || status == 304 {
        return done(Vec::new(), start);
    }
    if get("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut pos = start;
        loop {
            let line_end = find(data, b"\r\n", pos)?;
            let size_text = String::from_utf8_lossy(&data[pos..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            pos = line_end + 2;
            if size == 0 {
                let trailer_end = if data[pos..].starts_with(b"\r\n") {
                    pos + 2
                } else {
                    find(data, b"\r\n\r\n", pos)? + 4
                };
                return done(body, trailer_end);
            }
            if data.len() < pos + size + 2 {
                return None;
            }
            body.extend_from_slice(&data[pos..pos + size]);
            pos += size + 2;
        }
    }
    if let Some(length) = get("content-length") {
        let n: usize = length.parse().ok()?;
        return (data.len() >= start + n).then(|| {
            (
                RawResponse {
                    status,
                    headers: headers.clone(),
                    body: data[start..start + n].to_vec(),
                },
                start + n,
            )
        });
    }
    eof.then(|| {
        (
            RawResponse {
                status,
                headers: headers.clone(),
                body: data[start..].to_vec(),
            },
            data.len(),
        )
    })
}

fn find(data: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    data.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}
