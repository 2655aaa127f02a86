//! The pool of HTTP/1.1 connections toward one Zuora host, for one worker: a stack of idle
//! connections (the most recently used on top, so that spare ones age out at the bottom),
//! checked out by the request's own task, given back when the answer's body has been read
//! to its end. Each connection runs on a task of its own on the runtime that opened it (a
//! worker's current-thread runtime: the same thread as the requests that use it).

use crate::body::UpstreamBody;
use hyper::client::conn::http1::SendRequest;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// What a pool keeps: how long an idle connection may wait, and how many may.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

/// One worker's idle connections to one host.
pub struct HostPool {
    limits: Limits,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// Oldest at the bottom: an entry is never older than the one below it.
    stack: Vec<IdleConnection>,
    /// Whether a sweeper task is under way for this pool.
    sweeping: bool,
}

struct IdleConnection {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

impl HostPool {
    pub fn new(limits: Limits) -> Arc<HostPool> {
        Arc::new(HostPool {
            limits,
            idle: Mutex::default(),
        })
    }

    fn idle(&self) -> MutexGuard<'_, Idle> {
        // A panic while the stack was held leaves a stack all the same.
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open and ready, if any. Those
    /// found closed or past the idle timeout on the way are dropped (which closes them).
    pub fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        let now = Instant::now();
        let mut idle = self.idle();
        while let Some(entry) = idle.stack.pop() {
            if now.saturating_duration_since(entry.since) >= self.limits.idle_timeout {
                // Everything below is older still.
                idle.stack.clear();
                return None;
            }
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// A connection whose answer was read to its end goes back on the stack, unless the
    /// stack is full (then it is closed). hyper marks the connection ready once it has
    /// finished with the answer; if it has not yet, a small task waits for that.
    pub fn give_back(self: &Arc<HostPool>, mut sender: SendRequest<UpstreamBody>) {
        // An answer dropped outside any runtime (one shutting down) has no connection task
        // left to serve another request.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.limits.max_idle == 0 || sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.push(sender, &runtime);
            return;
        }
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            if sender.ready().await.is_ok() {
                if let (Some(pool), Ok(runtime)) = (pool.upgrade(), tokio::runtime::Handle::try_current()) {
                    pool.push(sender, &runtime);
                }
            }
        });
    }

    fn push(self: &Arc<HostPool>, sender: SendRequest<UpstreamBody>, runtime: &tokio::runtime::Handle) {
        let mut idle = self.idle();
        if idle.stack.len() >= self.limits.max_idle {
            return;
        }
        idle.stack.push(IdleConnection {
            sender,
            since: Instant::now(),
        });
        if !std::mem::replace(&mut idle.sweeping, true) {
            runtime.spawn(sweep(Arc::downgrade(self), self.limits.idle_timeout));
        }
    }

    /// Idle connections now on the stack (for tests and the pool's own checks).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle().stack.len()
    }
}

/// Closes idle connections as they pass the idle timeout, even with no traffic to find them:
/// sleeps until the oldest one expires, drops every expired one, and ends when the stack is
/// empty (the next connection given back starts another) or the pool is gone.
async fn sweep(pool: Weak<HostPool>, idle_timeout: Duration) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let mut idle = pool.idle();
            let now = Instant::now();
            let expired = idle
                .stack
                .iter()
                .take_while(|e| now.saturating_duration_since(e.since) >= idle_timeout)
                .count();
            idle.stack.drain(..expired);
            idle.stack.retain(|e| !e.sender.is_closed());
            match idle.stack.first() {
                Some(oldest) => oldest.since + idle_timeout,
                None => {
                    idle.sweeping = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;

    /// A connection to a server that reads and never answers: open, ready, idle.
    async fn connection() -> (SendRequest<UpstreamBody>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (sender, conn) = hyper::client::conn::http1::handshake::<_, UpstreamBody>(TokioIo::new(client.unwrap()))
            .await
            .unwrap();
        tokio::spawn(conn);
        (sender, accepted.unwrap().0)
    }

    fn limits(idle_timeout: Duration, max_idle: usize) -> Limits {
        Limits { idle_timeout, max_idle }
    }

    #[tokio::test]
    async fn the_most_recent_connection_is_checked_out_first_and_the_stack_is_capped() {
        let pool = HostPool::new(limits(Duration::from_secs(60), 2));
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (sender, peer) = connection().await;
            pool.give_back(sender);
            peers.push(peer);
        }
        assert_eq!(pool.idle_count(), 2, "the third one is closed, not kept");
        assert!(pool.checkout().is_some());
        assert!(pool.checkout().is_some());
        assert!(pool.checkout().is_none());
    }

    #[tokio::test]
    async fn no_connection_is_kept_with_max_idle_zero() {
        let pool = HostPool::new(limits(Duration::from_secs(60), 0));
        let (sender, _peer) = connection().await;
        pool.give_back(sender);
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_swept_after_the_idle_timeout() {
        let pool = HostPool::new(limits(Duration::from_secs(5), 8));
        let (sender, _peer) = connection().await;
        pool.give_back(sender);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(pool.idle_count(), 1, "not yet");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(pool.idle_count(), 0, "swept without a checkout");
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_is_not_checked_out() {
        let pool = HostPool::new(limits(Duration::from_secs(60), 8));
        let (sender, peer) = connection().await;
        pool.give_back(sender);
        drop(peer);
        // hyper reads the close on the connection's own task; wait for it to be seen.
        let seen = async {
            while !pool.idle().stack.last().is_some_and(|e| e.sender.is_closed()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), seen)
            .await
            .expect("the close was seen");
        assert!(pool.checkout().is_none());
        assert_eq!(pool.idle_count(), 0, "dropped on the way");
    }
}
