//! Redis as a read-through cache, optional by design: the connection is made in the background
//! and never holds up readiness, every call has a short deadline, and any failure is treated as a
//! miss. Redis down means slower reads, never wrong answers or failed requests.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use redis::{AsyncCommands, aio::ConnectionManager};

use crate::config::RedisSettings;

/// Longest a cache call may take before it counts as a miss.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// A namespaced key-value cache; cheap to clone.
#[derive(Clone)]
pub struct Cache {
    connection: Arc<OnceLock<ConnectionManager>>,
    prefix: String,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("prefix", &self.prefix)
            .field("connected", &self.connection.get().is_some())
            .finish()
    }
}

impl Cache {
    /// Starts connecting in the background (retrying every few seconds while Redis is down) and
    /// returns at once. An empty URL disables the cache.
    pub fn connect(settings: &RedisSettings, namespace: &str) -> Cache {
        for operation in ["get", "set", "delete"] {
            crate::metrics::CACHE_ERRORS.with_label_values(&[operation]);
        }
        let cache = Cache {
            connection: Arc::new(OnceLock::new()),
            prefix: format!("{namespace}:"),
        };
        if settings.url.is_empty() {
            return cache;
        }
        let url = settings.url.clone();
        let slot = cache.connection.clone();
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                match open(&url).await {
                    Ok(connection) => {
                        let _ = slot.set(connection);
                        tracing::info!("redis cache connected");
                        return;
                    }
                    Err(error) => {
                        if !warned {
                            tracing::warn!(%error, "redis unavailable; reads go to PostgreSQL until it is back");
                            warned = true;
                        }
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                }
            }
        });
        cache
    }

    /// Connects before returning, for a maintenance command that must reach Redis now (to evict
    /// what it changed) rather than in the background. When Redis cannot be reached, says so on
    /// stderr and returns a cache that does nothing: copies it holds expire with their TTL.
    pub async fn connect_now(settings: &RedisSettings, namespace: &str) -> Cache {
        let cache = Cache {
            connection: Arc::new(OnceLock::new()),
            prefix: format!("{namespace}:"),
        };
        if settings.url.is_empty() {
            return cache;
        }
        match open(&settings.url).await {
            Ok(connection) => {
                let _ = cache.connection.set(connection);
            }
            Err(error) => eprintln!(
                "warning: redis unreachable ({error}); cached orders are not evicted and may show \
                 their old view until they expire"
            ),
        }
        cache
    }

    /// The cached value of `key`, or `None` on a miss or any failure.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut connection = self.connection.get()?.clone();
        let key = format!("{}{key}", self.prefix);
        match tokio::time::timeout(CALL_TIMEOUT, connection.get::<_, Option<Vec<u8>>>(&key)).await {
            Ok(Ok(value)) => value,
            outcome => {
                failed("get", outcome.err().is_some());
                None
            }
        }
    }

    /// Stores `value` under `key` for `ttl`; failures are logged and otherwise ignored.
    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) {
        let Some(connection) = self.connection.get() else {
            return;
        };
        let mut connection = connection.clone();
        let key = format!("{}{key}", self.prefix);
        let call = connection.set_ex::<_, _, ()>(&key, value, ttl.as_secs().max(1));
        if !matches!(tokio::time::timeout(CALL_TIMEOUT, call).await, Ok(Ok(()))) {
            failed("set", false);
        }
    }

    /// Removes `key` (the value changed).
    pub async fn delete(&self, key: &str) {
        let Some(connection) = self.connection.get() else {
            return;
        };
        let mut connection = connection.clone();
        let key = format!("{}{key}", self.prefix);
        if !matches!(
            tokio::time::timeout(CALL_TIMEOUT, connection.del::<_, ()>(&key)).await,
            Ok(Ok(()))
        ) {
            failed("delete", false);
        }
    }
}

async fn open(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, config).await
}

fn failed(operation: &'static str, timed_out: bool) {
    crate::metrics::CACHE_ERRORS
        .with_label_values(&[operation])
        .inc();
    tracing::debug!(
        operation,
        timed_out,
        "redis cache call failed; treated as a miss"
    );
}
