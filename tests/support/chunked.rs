//! A request body of fixed chunks with no declared length, so that hyper sends it chunked.

use bytes::Bytes;

pub struct Chunked(std::collections::VecDeque<Bytes>);

impl Chunked {
    /// `count` chunks of `size` bytes each.
    pub fn new(count: usize, size: usize) -> Chunked {
        Chunked(
            (0..count)
                .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
                .collect(),
        )
    }
}

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|chunk| Ok(hyper::body::Frame::data(chunk))))
    }
}
