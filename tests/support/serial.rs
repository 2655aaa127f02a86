//! One test at a time, for test binaries whose tests measure counts, timing or memory that a
//! neighbour on the same cores would skew.

/// Held for a whole test so that the tests of one test binary that take it run one at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
