//! Notification persistence.

use chrono::{DateTime, Utc};
use ordermesh::Error;
use ordermesh::{
    proto::notification::{Notification, NotificationKind},
    time::to_proto,
};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct NotificationRow {
    notification_id: Uuid,
    event_id: Uuid,
    order_id: Uuid,
    kind: String,
    channel: String,
    message: String,
    sent_at: DateTime<Utc>,
}

impl From<NotificationRow> for Notification {
    fn from(r: NotificationRow) -> Notification {
        Notification {
            notification_id: r.notification_id.to_string(),
            event_id: r.event_id.to_string(),
            order_id: r.order_id.to_string(),
            kind: NotificationKind::from_str_name(&r.kind).unwrap_or_default() as i32,
            channel: r.channel,
            message: r.message,
            sent_at: Some(to_proto(r.sent_at)),
        }
    }
}

/// Notifications newest first, optionally of one order and kind, before `before`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(
    pool: &PgPool,
    order_id: Option<Uuid>,
    kind: Option<NotificationKind>,
    before: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Notification>, Error> {
    let rows: Vec<NotificationRow> = sqlx::query_as(
        "SELECT notification_id, event_id, order_id, kind, channel, message, sent_at FROM notifications
         WHERE ($1::uuid IS NULL OR order_id = $1)
           AND ($2::text IS NULL OR kind = $2)
           AND ($3::uuid IS NULL OR notification_id < $3)
         ORDER BY notification_id DESC LIMIT $4",
    )
    .bind(order_id)
    .bind(kind.map(|k| k.as_str_name()))
    .bind(before)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Those of `event_ids` that have a notification (one index probe each).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn notified(pool: &PgPool, event_ids: &[Uuid]) -> Result<Vec<Uuid>, Error> {
    sqlx::query_scalar("SELECT event_id FROM notifications WHERE event_id = ANY($1)")
        .bind(event_ids)
        .fetch_all(pool)
        .await
        .map_err(Error::from)
}
