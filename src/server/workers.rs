//! Workers: one listening socket per worker on the same TCP address (`SO_REUSEPORT`, the
//! kernel spreads new connections over them), and the threads that serve all but the first,
//! each on a current-thread runtime of its own. A worker's connections, and the tasks they
//! spawn, never leave its thread: no work stealing between cores shared with the load.

use std::future::Future;
use std::net::SocketAddr;
use tokio::sync::oneshot;

/// How many connections may wait in one listener's accept backlog (std's own choice).
const BACKLOG: i32 = 1024;

/// `count` listening sockets on `addr`, all bound to the same port (the first one picks it
/// when `addr`'s port is 0). A single socket is bound without `SO_REUSEPORT`, so that a second
/// process cannot share its port unnoticed.
pub fn bind_tcp(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count.max(1) {
        let listener = bind_one(at, count > 1)?;
        at = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std and tokio do: a restart may bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// A worker running on its own thread; see [`spawn`].
pub struct Worker {
    done: oneshot::Receiver<()>,
}

impl Worker {
    /// Waits until the worker's serving future has returned (its drain is over).
    pub async fn finished(self) {
        let _ = self.done.await;
    }
}

/// Runs `serve()` on a new thread named `name`, on a current-thread runtime of its own;
/// `serve` is called on that thread, inside the runtime (so it may register sockets with
/// it). The thread ends when the future returns.
pub fn spawn<S, F>(name: String, serve: S) -> std::io::Result<Worker>
where
    S: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new().name(name).spawn(move || {
        runtime.block_on(async move { serve().await });
        let _ = done_tx.send(());
        // Idle pooled connections and their tasks go with the runtime; nothing waits on them.
        runtime.shutdown_background();
    })?;
    Ok(Worker { done })
}
