//! Consumes order outcome events (OrderConfirmed, OrderCancelled) from JetStream and records
//! exactly one notification per event id: the insert and the de-duplication are one statement,
//! and a message is acked only after the statement that recorded it committed, so redeliveries
//! never notify twice.
//!
//! Events are recorded in batches: the first event of a batch waits up to [`LINGER`] for
//! others, and the whole batch is one statement and one commit. A notification is not on an
//! order's critical path (the saga is done when the event is published), so a few tens of
//! milliseconds cost nobody anything, while a commit per event was one of the ~11 durable
//! commits every order paid.

use std::{collections::HashSet, time::Duration};

use async_nats::jetstream::{AckKind, Message, consumer::PullConsumer};
use ordermesh::events::{OrderOutcome, OutcomeKind};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events recorded by one statement at most (and queued between the consumer and the writer).
const BATCH: usize = 256;

/// How long the first event of a batch waits for more.
const LINGER: Duration = Duration::from_millis(50);

/// Consumer settings: a durable pull consumer over the order events stream.
pub fn config() -> async_nats::jetstream::consumer::pull::Config {
    async_nats::jetstream::consumer::pull::Config {
        durable_name: Some("notification".into()),
        ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        max_ack_pending: 512,
        ..Default::default()
    }
}

/// Records notifications until `shutdown`, in batches, in order of arrival. At shutdown the
/// events already taken from the consumer are still recorded and acked before this returns.
pub async fn run(pool: PgPool, consumer: PullConsumer, shutdown: CancellationToken) {
    let (queue, pending) = mpsc::channel(BATCH);
    let writer = tokio::spawn(write_batches(pool, pending));
    ordermesh::nats::consume("order_events", consumer, 1, shutdown, move |message| {
        let queue = queue.clone();
        async move {
            // Fails only if the writer is gone; the message is then redelivered after ack_wait.
            let _ = queue.send(message).await;
        }
    })
    .await;
    // `consume` has dropped the last sender: the writer records what is queued, then ends.
    if let Err(error) = writer.await {
        tracing::error!(%error, "notification writer failed");
    }
}

/// Takes queued messages in batches of up to [`BATCH`], each closed [`LINGER`] after its first
/// message arrived (or when the queue closes), and records each batch.
async fn write_batches(pool: PgPool, pending: mpsc::Receiver<Message>) {
    let mut batches = std::pin::pin!(ReceiverStream::new(pending).chunks_timeout(BATCH, LINGER));
    while let Some(batch) = batches.next().await {
        record_batch(&pool, batch).await;
    }
}

/// One decoded event, with the span that continues its trace.
struct Received {
    message: Message,
    event: OrderOutcome,
    span: tracing::Span,
}

/// Records a batch in one statement, then acks every message of it (or naks them all for a
/// retry when the statement failed). Undecodable messages are terminated on their own.
#[tracing::instrument(level = "debug", skip_all)]
async fn record_batch(pool: &PgPool, batch: Vec<Message>) {
    let mut received = Vec::with_capacity(batch.len());
    for message in batch {
        let Ok(event) = serde_json::from_slice::<OrderOutcome>(&message.payload) else {
            tracing::error!(subject = %message.subject, "undecodable order event; terminated");
            let _ = message.ack_with(AckKind::Term).await;
            continue;
        };
        let span = tracing::info_span!(
            "notification.record",
            order_id = %event.order_id,
            kind = ?event.kind,
            batch = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        // One order stays one trace across the JetStream hop; nothing is called from here, so
        // the returned call context is not needed.
        let _ = ordermesh::context::adopt_message(&span, message.headers.as_ref());
        received.push(Received {
            message,
            event,
            span,
        });
    }
    if received.is_empty() {
        return;
    }
    let size = received.len();
    match insert(pool, &received).await {
        Ok(inserted) => {
            for Received {
                message,
                event,
                span,
            } in received
            {
                span.record("batch", size);
                if inserted.contains(&event.event_id) {
                    crate::metrics::SENT
                        .with_label_values(&[event.kind.subject_token()])
                        .inc();
                    span.in_scope(|| {
                        tracing::info!(order_id = %event.order_id, kind = ?event.kind, "notification sent");
                    });
                }
                let _ = message.ack().await;
            }
        }
        Err(error) => {
            tracing::warn!(%error, events = size, "could not record notifications; will retry");
            for Received { message, .. } in received {
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }
}

/// What a customer is told about an outcome.
fn notification(event: &OrderOutcome) -> (&'static str, String) {
    match event.kind {
        OutcomeKind::Confirmed => (
            "NOTIFICATION_KIND_ORDER_CONFIRMED",
            format!(
                "Your order {} is confirmed ({}).",
                event.order_id, event.confirmation_number
            ),
        ),
        OutcomeKind::Cancelled => (
            "NOTIFICATION_KIND_ORDER_CANCELLED",
            format!(
                "Your order {} was cancelled: {}",
                event.order_id, event.reason
            ),
        ),
    }
}

/// Inserts a notification for every event whose id was not notified before (a repeat within
/// the batch included), in one statement. Returns the event ids it inserted.
async fn insert(pool: &PgPool, received: &[Received]) -> Result<HashSet<Uuid>, sqlx::Error> {
    let mut ids = Vec::with_capacity(received.len());
    let mut event_ids = Vec::with_capacity(received.len());
    let mut order_ids = Vec::with_capacity(received.len());
    let mut kinds = Vec::with_capacity(received.len());
    let mut messages = Vec::with_capacity(received.len());
    for Received { event, .. } in received {
        let (kind, message) = notification(event);
        ids.push(Uuid::now_v7());
        event_ids.push(event.event_id);
        order_ids.push(event.order_id);
        kinds.push(kind);
        messages.push(message);
    }
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO notifications (notification_id, event_id, order_id, kind, channel, message)
         SELECT n.id, n.event_id, n.order_id, n.kind, 'email', n.message
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[])
              WITH ORDINALITY AS n(id, event_id, order_id, kind, message, position)
         ORDER BY n.position
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id",
    )
    .bind(&ids)
    .bind(&event_ids)
    .bind(&order_ids)
    .bind(&kinds)
    .bind(&messages)
    .fetch_all(pool)
    .await?;
    Ok(inserted.into_iter().collect())
}
