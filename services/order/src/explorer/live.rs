//! The explorer's live streams (server-sent events). Each sends HTML fragments rendered by the
//! same functions as the page, as events named after the element they replace (`order`,
//! `counts`, `orders`), and `end` when nothing more will change; the page's script swaps them
//! in. They wake on the change signals WatchOrder uses and re-read on a timer as well (signals
//! are best-effort), and end at shutdown or after the explorer's stream limit (the browser's
//! EventSource then reconnects on its own).

use std::{collections::HashMap, convert::Infallible, time::Duration};

use axum::{
    extract::{Path, Query, State, rejection::QueryRejection},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::{AttentionParams, Explorer, Filter, ListParams, Problem, page, query};
use crate::Deps;

/// The `end` event's data: an event without data is never dispatched (the SSE specification).
const END: &str = "final";

/// Re-read this often even without a signal.
const FALLBACK: Duration = Duration::from_secs(2);

/// A list re-renders at most this often, however fast orders change (at 500 orders/s a list
/// that followed every signal would be a query storm and an unreadable page).
const LIST_EVERY: Duration = Duration::from_secs(1);

/// Live streams one instance keeps open at once; more are refused (503) rather than letting
/// browser tabs pile up tasks and queries.
pub const MAX_STREAMS: usize = 256;

/// A live stream's response.
type Events = Response;

/// Runs `feed` for one stream until it returns, the browser leaves, the service shuts down or
/// the stream's time is up. Refused when [`MAX_STREAMS`] are open.
fn stream<F, Fut>(explorer: &Explorer, feed: F) -> Result<Events, Problem>
where
    F: FnOnce(Sender) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permit = explorer.streams.clone().try_acquire_owned().map_err(|_| {
        Problem::Unavailable(format!(
            "{MAX_STREAMS} live pages are open on this instance already"
        ))
    })?;
    let (tx, rx) = mpsc::channel(4);
    let shutdown = explorer.shutdown.clone();
    let limit = explorer.max_stream;
    tokio::spawn(async move {
        let _permit = permit;
        let closed = tx.clone();
        tokio::select! {
            _ = feed(Sender { tx, shown: HashMap::new() }) => {}
            _ = closed.closed() => {}
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(limit) => {}
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Where a feed sends its events; sending fails once the browser left.
struct Sender {
    tx: mpsc::Sender<Result<Event, Infallible>>,
    /// The last fragment sent under each event name (see [`Sender::update`]).
    shown: HashMap<&'static str, String>,
}

impl Sender {
    async fn send(&self, name: &str, html: String) -> Result<(), ()> {
        self.tx
            .send(Ok(Event::default().event(name).data(html)))
            .await
            .map_err(|_| ())
    }

    /// Sends `html` as `name` unless it is what was last sent as `name`: a re-read that found
    /// nothing new costs the browser nothing.
    async fn update(&mut self, name: &'static str, html: String) -> Result<(), ()> {
        if self.shown.get(name) != Some(&html) {
            self.send(name, html.clone()).await?;
            self.shown.insert(name, html);
        }
        Ok(())
    }
}

/// `/ui/live/orders/{id}`: the order page's body after every change, until the saga is final.
pub async fn order(
    State(explorer): State<Explorer>,
    Path(raw): Path<String>,
) -> Result<Events, Problem> {
    let order_id = super::order_id(&raw)?;
    let deps = explorer.deps.get()?.clone();
    // Subscribe before the first read, so a change between the two is not missed.
    let signals = deps.journal.changes.subscribe(order_id).await?;
    let namespace = explorer.namespace.clone();
    stream(&explorer, move |tx| {
        follow_order(deps, order_id, signals, namespace, tx)
    })
}

async fn follow_order(
    deps: Deps,
    order_id: Uuid,
    mut signals: crate::changes::Watch,
    namespace: String,
    tx: Sender,
) {
    let mut shown = None;
    loop {
        match query::order(&deps, order_id).await {
            Ok(Some(detail)) => {
                if shown != Some(detail.version()) {
                    shown = Some(detail.version());
                    let html = page::order(&detail, &namespace, chrono::Utc::now()).into_string();
                    if tx.send("order", html).await.is_err() {
                        return;
                    }
                }
                if detail.settled() {
                    let _ = tx.send("end", END.into()).await;
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.send("end", END.into()).await;
                return;
            }
            Err(error) => tracing::debug!(%error, %order_id, "explorer: order not read; retrying"),
        }
        tokio::select! {
            _ = signals.next() => {}
            _ = tokio::time::sleep(FALLBACK) => {}
        }
    }
}

/// `/ui/live/orders?…`: the counts, and on the first page the newest orders of the filter,
/// whenever orders change (at most once per [`LIST_EVERY`]).
pub async fn orders(
    State(explorer): State<Explorer>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Events, Problem> {
    let Query(params) = params.map_err(|r| super::bad("query", r.body_text()))?;
    let (filter, request) = Filter::parse(params)?;
    let deps = explorer.deps.get()?.clone();
    let changes = deps.journal.changes.any().await?;
    let counts = explorer.counts.clone();
    stream(&explorer, move |tx| async move {
        follow_orders(deps, counts, filter, request, changes, tx).await
    })
}

async fn follow_orders(
    deps: Deps,
    counts: query::CountsCache,
    filter: Filter,
    request: ordermesh::proto::order::ListOrdersRequest,
    mut changes: tokio::sync::watch::Receiver<u64>,
    mut tx: Sender,
) {
    loop {
        if let Ok(now) = counts.get(&deps.pool).await {
            let html = page::counts_bar(&filter, &now).into_string();
            if tx.update("counts", html).await.is_err() {
                return;
            }
        }
        if filter.before.is_none()
            && let Ok((orders, _)) = query::orders(&deps.pool, &request).await
        {
            let html = page::order_table(&orders).into_string();
            if tx.update("orders", html).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(LIST_EVERY).await;
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(FALLBACK) => {}
        }
    }
}

/// Attention is re-read this often while a page shows it: what lands there (a retry, a
/// deadline passing) is not always an order change that would signal.
const ATTENTION_EVERY: Duration = Duration::from_secs(3);

/// `/ui/live/attention?after=…`: the Attention table, re-read every [`ATTENTION_EVERY`].
pub async fn attention(
    State(explorer): State<Explorer>,
    params: Result<Query<AttentionParams>, QueryRejection>,
) -> Result<Events, Problem> {
    let after = AttentionParams::parse(params)?;
    let deps = explorer.deps.get()?.clone();
    let namespace = explorer.namespace.clone();
    stream(&explorer, move |mut tx| async move {
        loop {
            if let Ok(stuck) = query::attention(&deps, after).await {
                let html = page::attention_table(&stuck, after, &namespace, chrono::Utc::now())
                    .into_string();
                if tx.update("attention", html).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(ATTENTION_EVERY).await;
        }
    })
}
