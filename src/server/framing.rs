//! Spotting request heads that carry both `Content-Length` and `Transfer-Encoding`. hyper
//! resolves that pair by dropping `Content-Length` (RFC 9112 §6.3) before the service sees
//! the request, so the raw head is checked on its way in, and such a request is refused.

/// Longest head scanned; hyper refuses longer ones anyway (`max_header_bytes`).
const MAX_SCANNED_HEAD: usize = 64 * 1024;

/// Collects the bytes of one request head as they are read.
#[derive(Debug, Default)]
pub struct HeadScan {
    buf: Vec<u8>,
    active: bool,
}

impl HeadScan {
    /// Starts collecting a new head (the connection was waiting for one).
    pub fn start(&mut self) {
        self.buf.clear();
        self.active = true;
    }

    /// Feeds bytes just read. Returns `Some(ambiguous)` once the head is complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<bool> {
        if !self.active {
            return None;
        }
        // The common case: a whole head in one read, checked where it lies.
        if self.buf.is_empty() {
            if let Some(end) = find(bytes, b"\r\n\r\n") {
                self.active = false;
                return Some(has_both_framings(&bytes[..end]));
            }
        }
        // Only what can still belong to the head; a blank line may straddle two reads.
        let from = self.buf.len().saturating_sub(3);
        let room = MAX_SCANNED_HEAD.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let end = find(&self.buf[from..], b"\r\n\r\n").map(|i| from + i);
        match end {
            Some(end) => {
                self.active = false;
                Some(has_both_framings(&self.buf[..end]))
            }
            None if self.buf.len() >= MAX_SCANNED_HEAD => {
                self.active = false;
                None
            }
            None => None,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// Whether a head (request line and header lines) names both framing headers.
pub fn has_both_framings(head: &[u8]) -> bool {
    let mut content_length = false;
    let mut transfer_encoding = false;
    // Each header line starts after a line feed; the request line is skipped.
    for start in memchr::memchr_iter(b'\n', head).map(|i| i + 1) {
        let line = &head[start..];
        match line.first() {
            Some(b'c' | b'C') => content_length |= names(line, b"content-length"),
            Some(b't' | b'T') => transfer_encoding |= names(line, b"transfer-encoding"),
            _ => {}
        }
    }
    content_length && transfer_encoding
}

/// Whether header `line` is `name` (any case) followed by its colon.
fn names(line: &[u8], name: &[u8]) -> bool {
    line.get(name.len()) == Some(&b':') && line[..name.len()].eq_ignore_ascii_case(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_table() {
        let cases: [(&[u8], bool); 6] = [
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
                true,
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 5",
                true,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 5", false),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked", false),
            (
                b"POST /content-length:/transfer-encoding: HTTP/1.1\r\nX: content-length",
                false,
            ),
            (
                b"POST / HTTP/1.1\r\nX-Content-Length: 1\r\nTransfer-Encoding: chunked",
                false,
            ),
        ];
        for (head, both) in cases {
            assert_eq!(has_both_framings(head), both, "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn heads_split_across_reads() {
        let head = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for split in 1..head.len() {
            let mut scan = HeadScan::default();
            scan.start();
            let first = scan.feed(&head[..split]);
            let verdict = first.or_else(|| scan.feed(&head[split..]));
            assert_eq!(verdict, Some(true), "split at {split}");
        }
        let mut scan = HeadScan::default();
        assert_eq!(scan.feed(head), None, "not started: not scanned");
        scan.start();
        assert_eq!(scan.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(false));
        assert_eq!(scan.feed(head), None, "one head per start");
    }
}
