//! Consumes order outcome events (OrderConfirmed, OrderCancelled) from JetStream and records
//! exactly one notification per event id: the insert and the de-duplication are one statement,
//! and the message is acked only after it committed, so redeliveries never notify twice.

use std::time::Duration;

use tracing::Instrument;

use async_nats::jetstream::{AckKind, consumer::PullConsumer};
use ordermesh::events::{OrderOutcome, OutcomeKind};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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

/// Records notifications until `shutdown`, in order of arrival.
pub async fn run(pool: PgPool, consumer: PullConsumer, shutdown: CancellationToken) {
    ordermesh::nats::consume("order_events", consumer, 1, shutdown, move |message| {
        let pool = pool.clone();
        async move { handle(&pool, message).await }
    })
    .await;
}

async fn handle(pool: &PgPool, message: async_nats::jetstream::Message) {
    let Ok(event) = serde_json::from_slice::<OrderOutcome>(&message.payload) else {
        tracing::error!(subject = %message.subject, "undecodable order event; terminated");
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    let span = tracing::info_span!(
        "notification.record",
        order_id = %event.order_id,
        kind = ?event.kind,
        trace_id = tracing::field::Empty,
    );
    let context = ordermesh::context::adopt_message(&span, message.headers.as_ref());
    let recorded = context
        .scope(record(pool, &event).instrument(span.clone()))
        .await;
    let _enter = span.enter();
    match recorded {
        Ok(inserted) => {
            if inserted {
                crate::metrics::SENT
                    .with_label_values(&[event.kind.subject_token()])
                    .inc();
                tracing::info!(order_id = %event.order_id, kind = ?event.kind, "notification sent");
            }
            let _ = message.ack().await;
        }
        Err(error) => {
            tracing::warn!(%error, "could not record notification; will retry");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}

/// Inserts the notification unless this event id was already notified. True when inserted.
async fn record(pool: &PgPool, event: &OrderOutcome) -> Result<bool, sqlx::Error> {
    let (kind, message) = match event.kind {
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
    };
    let inserted = sqlx::query(
        "INSERT INTO notifications (notification_id, event_id, order_id, kind, channel, message)
         VALUES ($1, $2, $3, $4, 'email', $5) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(event.event_id)
    .bind(event.order_id)
    .bind(kind)
    .bind(message)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
