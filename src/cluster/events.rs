//! The pub/sub side: one subscription per replica to the prefix's event channel, which wakes
//! permit waiters, feeds the cool-down cache and announces new shared tokens. After every
//! (re)subscription the state that messages would have carried is read back from Redis.

use super::conn::CONNECT_TIMEOUT_MS;
use super::health::PROBE_INTERVAL_MS;
use super::keys::TenantKey;
use super::Inner;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A message on the event channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A permit of this tenant key was released: waiters may try again.
    Release(TenantKey),
    /// Hold requests to this tenant key until this wall-clock time (ms since the epoch).
    Cool(TenantKey, u64),
    /// The shared token of this tenant key was stored or deleted.
    Token(TenantKey),
}

impl Event {
    pub(crate) fn encode(&self) -> String {
        match self {
            Event::Release(key) => format!("release {key}"),
            Event::Cool(key, until) => format!("cool {key} {until}"),
            Event::Token(key) => format!("token {key}"),
        }
    }

    pub(crate) fn decode(text: &str) -> Option<Event> {
        let mut parts = text.split(' ');
        let kind = parts.next()?;
        let key = TenantKey::from_id(parts.next()?)?;
        let event = match kind {
            "release" => Event::Release(key),
            "token" => Event::Token(key),
            "cool" => Event::Cool(key, parts.next()?.parse().ok()?),
            _ => return None,
        };
        parts.next().is_none().then_some(event)
    }
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Keeps the subscription up for as long as the cluster runs.
pub(crate) async fn subscribe_loop(inner: Arc<Inner>) {
    let channel = inner.names.events();
    let mut generation = inner.conn.generation();
    let mut lost_logged = false;
    loop {
        generation.mark_unchanged();
        let client = inner.conn.client();
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect).await {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                if !lost_logged {
                    let reason = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    tracing::debug!(%reason, "cannot subscribe to cluster events; waiters poll meanwhile");
                    lost_logged = true;
                }
                tokio::time::sleep(Duration::from_millis(PROBE_INTERVAL_MS)).await;
                continue;
            }
        };
        lost_logged = false;
        // Messages sent while unsubscribed are lost: read back what they would have said.
        inner.resync().await;
        let mut messages = pubsub.into_on_message();
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => {
                        if let Some(event) = std::str::from_utf8(message.get_payload_bytes()).ok().and_then(Event::decode) {
                            inner.dispatch(event);
                        }
                    }
                    None => break,
                },
                // A new password or client: subscribe again with it.
                _ = generation.changed() => break,
            }
        }
        tracing::debug!("cluster event subscription ended; resubscribing");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let key = TenantKey::new("https://h", "c", None);
        for event in [
            Event::Release(key.clone()),
            Event::Cool(key.clone(), 1_800_000_000_000),
            Event::Token(key.clone()),
        ] {
            assert_eq!(Event::decode(&event.encode()), Some(event));
        }
        for junk in ["", "release", "release xyz", "cool abc", "other 00", "token a b"] {
            assert_eq!(Event::decode(junk), None, "{junk}");
        }
        assert_eq!(Event::decode(&format!("cool {key}")), None);
        assert_eq!(Event::decode(&format!("token {key} extra")), None);
    }
}
