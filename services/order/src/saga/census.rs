//! Gauges that need a query: how many sagas are in each phase and step, how long the stalest
//! one has gone without progress, and how many messages wait in the dead-letter stream. Sampled
//! every few seconds by each instance (they all report the same database-wide figures, so
//! dashboards take `max` across instances, not `sum`).

use std::{collections::HashMap, time::Duration};

use async_nats::jetstream;
use ordermesh::metrics::sample_every;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{definition::TABLE, messages::Names};
use crate::metrics::{DEAD_LETTERS_PENDING, SAGA_STALEST_AGE, SAGAS_ACTIVE};

/// How often the census runs.
const PERIOD: Duration = Duration::from_secs(5);

/// Samples until `shutdown`.
pub async fn run(
    pool: PgPool,
    jetstream: jetstream::Context,
    names: Names,
    shutdown: CancellationToken,
) {
    let dead_letters = names.dead_letter_stream();
    sample_every("saga census", PERIOD, shutdown, move || {
        let pool = pool.clone();
        let jetstream = jetstream.clone();
        let dead_letters = dead_letters.clone();
        async move {
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT phase, coalesce(current_step, ''), count(*) FROM sagas
                 WHERE phase <> 'done' GROUP BY 1, 2",
            )
            .fetch_all(&pool)
            .await?;
            set_sagas_active(rows);
            let stalest: f64 = sqlx::query_scalar(
                "SELECT coalesce(extract(epoch FROM now() - min(updated_at))::float8, 0) FROM sagas
                 WHERE phase <> 'done' AND phase <> 'parked'",
            )
            .fetch_one(&pool)
            .await?;
            SAGA_STALEST_AGE.set(stalest);
            let mut stream = jetstream.get_stream(&dead_letters).await?;
            let messages = stream.info().await?.state.messages;
            DEAD_LETTERS_PENDING.set(i64::try_from(messages).unwrap_or(i64::MAX));
            Ok(())
        }
    })
    .await;
}

/// Sets every (phase, step) the transition table allows, 0 where no saga is, so a state that
/// empties reads 0 rather than keeping its last count (the label set is bounded by the table).
fn set_sagas_active(rows: Vec<(String, String, i64)>) {
    let mut counts: HashMap<(String, String), i64> = HashMap::new();
    for spec in TABLE {
        let phase = if spec.compensation {
            "compensating"
        } else {
            "forward"
        };
        for phase in [phase, "parked"] {
            counts.insert((phase.to_string(), spec.step.name().to_string()), 0);
        }
    }
    for (phase, step, count) in rows {
        counts.insert((phase, step), count);
    }
    for ((phase, step), count) in counts {
        SAGAS_ACTIVE.with_label_values(&[&phase, &step]).set(count);
    }
}
