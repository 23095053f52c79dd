//! What the explorer's pages read: every query bounded (a page of orders, one order's few
//! timeline rows, a page of sagas that need attention), all from the order service's own
//! database and its dead-letter stream.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use ordermesh::{
    Error,
    events::dead_letter::{DELIVERY_COUNT, LAST_ERROR},
    proto::order::{ListOrdersRequest, Order, OrderStatus, SagaStep},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    Deps,
    saga::{decide::Phase, journal},
};

/// Sagas shown per Attention page.
pub const ATTENTION_PAGE: i64 = 50;

/// Order counts are recomputed at most this often, however many pages watch them...
const COUNTS_FRESH_FOR: Duration = Duration::from_secs(1);

/// ...and never more than this share of the time: counting scans the status index (160 ms at
/// a million orders on the 2-core machine), so a big table is counted less often rather than
/// keeping a database core busy while someone watches the list.
const COUNTS_DUTY: u32 = 20;

/// Orders per status, in the order of the status enum.
pub type Counts = Vec<(String, i64)>;

/// The last counts, when they were taken and how long that took; shared by every page of one
/// instance.
#[derive(Clone, Default)]
pub struct CountsCache(Arc<Mutex<Option<(Instant, Duration, Counts)>>>);

impl CountsCache {
    pub async fn get(&self, pool: &PgPool) -> Result<Counts, Error> {
        if let Some((at, took, counts)) = &*self.0.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < COUNTS_FRESH_FOR.max(*took * COUNTS_DUTY)
        {
            return Ok(counts.clone());
        }
        let started = Instant::now();
        let counts: Counts = sqlx::query_as(
            "SELECT status, count(*) FROM order_view GROUP BY status ORDER BY status",
        )
        .fetch_all(pool)
        .await?;
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), started.elapsed(), counts.clone()));
        Ok(counts)
    }
}

/// A page of orders as ListOrders answers `request` (which [`super::Filter::parse`] checked),
/// and the page size it used.
pub async fn orders(
    pool: &PgPool,
    request: &ListOrdersRequest,
) -> Result<(Vec<Order>, u32), super::Problem> {
    let q = crate::validate::list_orders(request)?;
    let orders = crate::store::list(pool, q.customer_id, q.status, q.before, q.size).await?;
    Ok((orders, q.size))
}

/// What the explorer shows of one saga: the stored saga's fields minus the payment token it
/// may still hold, which no page (and no `Debug` of this) should carry.
#[derive(Debug, Clone)]
pub struct SagaState {
    pub phase: Phase,
    pub current_step: Option<&'static str>,
    pub deadline: DateTime<Utc>,
    pub attempts: i32,
    pub failure_reason: String,
    pub definition_version: i32,
    pub version: i64,
}

/// One order with its saga, for the order page.
#[derive(Debug, Clone)]
pub struct OrderDetail {
    pub order: Order,
    pub saga: SagaState,
    pub steps: Vec<SagaStep>,
    /// The W3C trace id of the request that placed the order, if it carried one.
    pub trace_id: Option<String>,
    pub dead_letter: Option<DeadLetter>,
}

impl OrderDetail {
    /// Changes whenever the page would: the view's version, or a saga entry (a retry changes
    /// the saga, not the order).
    pub fn version(&self) -> (i64, i64) {
        (self.order.version, self.saga.version)
    }

    /// Nothing more will happen to this order without an operator: the saga is done, or its
    /// compensation parked (FAILED). A parked forward step still moves at its deadline.
    pub fn settled(&self) -> bool {
        match self.saga.phase {
            Phase::Done => true,
            Phase::Parked => self.order.status() == OrderStatus::Failed,
            Phase::Forward | Phase::Compensating => false,
        }
    }
}

/// A saga's dead letter as it waits in the dead-letter stream.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub sequence: u64,
    pub last_error: String,
    pub deliveries: String,
}

pub async fn order(deps: &Deps, order_id: Uuid) -> Result<Option<OrderDetail>, Error> {
    let Some(seen) = deps.journal.load(order_id).await? else {
        return Ok(None);
    };
    let steps = journal::timeline(&deps.pool, order_id).await?;
    let dead_letter = if seen.saga.phase == Phase::Parked {
        dead_letters(deps, &[order_id]).await.pop().flatten()
    } else {
        None
    };
    let trace_id = seen
        .context
        .get("traceparent")
        .and_then(|t| t.split('-').nth(1))
        .map(str::to_string);
    let saga = seen.saga;
    Ok(Some(OrderDetail {
        order: seen.order.into(),
        saga: SagaState {
            phase: saga.phase,
            current_step: saga.current.map(|s| s.name()),
            deadline: saga.deadline,
            attempts: saga.attempts,
            failure_reason: saga.failure_reason,
            definition_version: saga.definition_version,
            version: saga.version,
        },
        steps,
        trace_id,
        dead_letter,
    }))
}

/// The dead letters of these orders' sagas, in the same order: the last message on each
/// order's subject, if still there (a redrive removes it). `None` too when the stream cannot
/// be read: the page then says to look with `ordermesh dlq list`. The stream is opened once
/// for all of them.
pub async fn dead_letters(deps: &Deps, order_ids: &[Uuid]) -> Vec<Option<DeadLetter>> {
    let names = &deps.journal.names;
    let Ok(stream) = deps.jetstream.get_stream(names.dead_letter_stream()).await else {
        return vec![None; order_ids.len()];
    };
    let last = |order_id: Uuid| {
        let stream = &stream;
        async move {
            let message = stream
                .get_last_raw_message_by_subject(&names.dead_letter_subject(order_id))
                .await
                .ok()?;
            let header = |name: &str| {
                message
                    .headers
                    .get(name)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            Some(DeadLetter {
                sequence: message.sequence,
                last_error: header(LAST_ERROR),
                deliveries: header(DELIVERY_COUNT),
            })
        }
    };
    futures::future::join_all(order_ids.iter().map(|id| last(*id))).await
}

/// Why a saga is on the Attention page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concern {
    /// A step ran out of retries: an operator must redrive its dead letter.
    Parked,
    /// Its current step's deadline passed and nobody recorded it yet: is a runner alive?
    PastDeadline,
    /// Its current step failed and is being retried: a callee is failing or hanging.
    Retrying,
}

/// One saga on the Attention page.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stuck {
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: String,
    pub phase: String,
    pub current_step: Option<String>,
    pub deadline_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    /// The current step's last error, else the saga's failure reason.
    pub last_error: String,
    pub updated_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub dead_letter: Option<DeadLetter>,
}

impl Stuck {
    pub fn concern(&self, now: DateTime<Utc>) -> Concern {
        if self.phase == Phase::Parked.as_str() {
            Concern::Parked
        } else if self.deadline_at.is_some_and(|d| d < now) {
            Concern::PastDeadline
        } else {
            Concern::Retrying
        }
    }
}

/// Unfinished sagas that are parked, past their deadline or retrying, oldest first, after
/// `after` (the page token: an order id). Reads only unfinished sagas (a partial index).
pub async fn attention(deps: &Deps, after: Option<Uuid>) -> Result<Vec<Stuck>, Error> {
    let mut stuck: Vec<Stuck> = sqlx::query_as(
        "SELECT s.order_id, v.customer_id, v.status, s.phase, s.current_step, s.deadline_at,
                s.attempts, CASE WHEN coalesce(t.error, '') <> '' THEN t.error
                                 ELSE s.failure_reason END AS last_error,
                s.updated_at
         FROM sagas s
         JOIN order_view v USING (order_id)
         LEFT JOIN saga_steps t ON t.order_id = s.order_id AND t.step = s.current_step
         WHERE s.phase <> 'done'
           AND (s.phase = 'parked' OR s.deadline_at < now() OR s.attempts > 0)
           AND ($1::uuid IS NULL OR s.order_id > $1)
         ORDER BY s.order_id
         LIMIT $2",
    )
    .bind(after)
    .bind(ATTENTION_PAGE)
    .fetch_all(&deps.pool)
    .await?;
    let parked: Vec<Uuid> = stuck
        .iter()
        .filter(|s| s.phase == Phase::Parked.as_str())
        .map(|s| s.order_id)
        .collect();
    // In the same order as `parked`.
    let mut letters = dead_letters(deps, &parked).await.into_iter();
    for s in stuck
        .iter_mut()
        .filter(|s| s.phase == Phase::Parked.as_str())
    {
        s.dead_letter = letters.next().flatten();
    }
    Ok(stuck)
}
