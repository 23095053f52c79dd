//! Durable step deadlines. A saga row says which step is current and since when (`updated_at`,
//! set by the transition that made it current); that is the durable record of a running step.
//! Once a step with a deadline has been current for [`STALE`], this task publishes its timeout
//! message to JetStream (`Nats-Msg-Id` = [`state::timeout_id`], so every replica may publish it
//! and JetStream keeps one), where the timeout worker holds it until due and then fails the
//! step if it is still current (see `executor::run_timeouts`).
//!
//! Why from the saga row and not an outbox row per step: nearly every step finishes well within
//! [`STALE`], so writing a timeout row with each step and deleting it when the step finished
//! cost two row writes per step for messages that were almost never sent.

use std::{collections::HashSet, time::Duration};

use async_nats::jetstream::{self, message::PublishMessage};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    definition::{Step, Timeouts},
    messages::{Names, StepMessage},
    state,
};

/// How often running steps are looked at.
const EVERY: Duration = Duration::from_secs(1);

/// A step current for this long gets its timeout published.
const STALE: Duration = Duration::from_secs(2);

/// Publishes the timeouts of steps that have run for [`STALE`], every [`EVERY`], until `shutdown`.
pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    names: Names,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Timeouts this instance published whose step is still current: not published again.
    let mut published = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = publish_due(&pool, &js, &names, &timeouts, &mut published).await {
            tracing::warn!(%error, "could not publish step timeouts; retrying");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum DeadlineError {
    #[error("reading running steps: {0}")]
    Db(#[from] sqlx::Error),
    #[error("publishing a timeout: {0}")]
    Publish(String),
    #[error("encoding a timeout: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One pass: every forward or compensating saga whose current step has a deadline and has run
/// for [`STALE`] gets its timeout published, unless this instance already did.
async fn publish_due(
    pool: &PgPool,
    js: &jetstream::Context,
    names: &Names,
    timeouts: &Timeouts,
    published: &mut HashSet<Uuid>,
) -> Result<(), DeadlineError> {
    let running: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT order_id, current_step, updated_at FROM sagas
         WHERE phase IN ('forward', 'compensating') AND current_step IS NOT NULL
           AND updated_at < now() - make_interval(secs => $1)",
    )
    .bind(STALE.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let mut current = HashSet::with_capacity(running.len());
    let mut acks = Vec::new();
    for (order_id, step, since) in running {
        let Some(step) = Step::from_name(&step) else {
            continue;
        };
        let Some(deadline) = step.spec().deadline else {
            continue;
        };
        let id = state::timeout_id(order_id, step);
        current.insert(id);
        if published.contains(&id) {
            continue;
        }
        let due = since + timeouts.of(deadline);
        let message = StepMessage {
            order_id,
            step,
            due_at_ms: Some(due.timestamp_millis()),
        };
        let publish = PublishMessage::build()
            .payload(serde_json::to_vec(&message)?.into())
            .message_id(id.to_string());
        let ack = js
            .send_publish(names.timeout_subject(step), publish)
            .await
            .map_err(|e| DeadlineError::Publish(e.to_string()))?;
        acks.push((id, ack));
    }
    // Forget steps that are no longer current, so the set stays as small as the running ones.
    published.retain(|id| current.contains(id));
    for (id, ack) in acks {
        ack.await
            .map_err(|e| DeadlineError::Publish(e.to_string()))?;
        published.insert(id);
    }
    Ok(())
}
