//! Runs saga steps from JetStream: a durable pull consumer with explicit acks, at most
//! `concurrency` steps in flight per instance. Each step calls its service with the idempotency
//! key `<order_id>:<step>`, then records the outcome (and queues the next step) in one
//! transaction, then acks. Transient failures are retried with the configured backoff (a delayed
//! NAK); a message that cannot be decoded or keeps failing goes to the dead-letter stream.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use ordermesh::{
    client::Propagate,
    events::dead_letter,
    limits::bounded_reason,
    proto::{
        common::Address,
        inventory::{
            CommitRequest, ReleaseRequest, ReservationLine, ReserveOutcome, ReserveRequest,
            inventory_service_client::InventoryServiceClient,
        },
        order::ShippingMethod,
        payment::{
            ChargeRequest, PaymentStatus, RefundRequest,
            payment_service_client::PaymentServiceClient,
        },
        shipping::{
            CancelLabelRequest, CreateLabelRequest, shipping_service_client::ShippingServiceClient,
        },
    },
    resilience::Policy,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, service::interceptor::InterceptedService, transport::Channel};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    definition::Step,
    finished::Finished,
    messages::{STEP_ACK_WAIT, StepMessage},
    state::{self, Outcome, SagaContext},
    transition,
};
use crate::{model::OrderEvent, model::OrderRow};

type Traced = InterceptedService<Channel, Propagate>;

/// gRPC clients of the services the saga calls.
#[derive(Clone)]
pub struct Callees {
    pub inventory: InventoryServiceClient<Traced>,
    pub payment: PaymentServiceClient<Traced>,
    /// The payment canary, for calls whose request carries `x-version: v2` (as the payment
    /// VirtualService routes them); `None` sends everything to `payment`.
    pub payment_canary: Option<PaymentServiceClient<Traced>>,
    pub shipping: ShippingServiceClient<Traced>,
    /// The call policy per upstream (retries, limits, ejection; a single attempt behind Istio).
    pub policy: Policies,
}

/// One [`Policy`] per upstream.
#[derive(Clone)]
pub struct Policies {
    pub inventory: Policy,
    pub payment: Policy,
    pub shipping: Policy,
}

impl Callees {
    /// The payment client for the current call: the canary for `x-version: v2`, if there is one.
    fn payment(&self) -> PaymentServiceClient<Traced> {
        let wants_canary = ordermesh::context::CallContext::current()
            .is_some_and(|c| c.version.as_deref() == Some("v2"));
        match (&self.payment_canary, wants_canary) {
            (Some(canary), true) => canary.clone(),
            _ => self.payment.clone(),
        }
    }
}

/// `$callees.$client.$method(request)` under the upstream's [`Policy`]: each attempt gets a clone
/// of the client and of the request.
macro_rules! call {
    ($callees:expr, $policy:ident, $client:expr, $method:ident, $request:expr) => {{
        let request = $request;
        let client = $client;
        $callees
            .policy
            .$policy
            .run(|| {
                let mut client = client.clone();
                let request = request.clone();
                async move { client.$method(request).await }
            })
            .await
    }};
}

/// What step handlers share.
pub struct Worker {
    pub pool: PgPool,
    pub saga: SagaContext,
    pub callees: Callees,
    pub jetstream: jetstream::Context,
    /// Deliveries before a step message is dead-lettered (the consumer's `max_deliver`).
    pub max_deliver: i64,
    /// Steps this instance saw finish lately: their timeouts are dropped without a read.
    pub finished: Finished,
}

/// First look at a not-yet-due timeout after this long, then after 2×, 3×, ... this (until
/// its deadline): most are dropped at the first look because their step has finished.
const TIMEOUT_RECHECK: Duration = Duration::from_secs(2);

/// Why a step must be tried again later.
#[derive(Debug)]
struct Retry(String);

impl From<Status> for Retry {
    fn from(s: Status) -> Retry {
        Retry(format!("{:?}: {}", s.code(), s.message()))
    }
}

/// Consumes step messages until `shutdown`, at most `concurrency` at once, then waits for the
/// steps in flight.
pub async fn run(
    worker: Arc<Worker>,
    consumer: PullConsumer,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    ordermesh::nats::consume(
        "saga_steps",
        consumer,
        concurrency,
        shutdown,
        move |message| {
            let worker = worker.clone();
            async move { worker.handle(message).await }
        },
    )
    .await;
}

impl Worker {
    async fn handle(&self, message: jetstream::Message) {
        let (delivered, published) = match message.info() {
            Ok(info) => (info.delivered, Some(info.published)),
            Err(_) => (1, None),
        };
        if delivered == 1
            && let Some(published) = published
        {
            let waited = time::OffsetDateTime::now_utc() - published;
            crate::metrics::STEP_DELIVERY_WAIT.observe(waited.as_seconds_f64().max(0.0));
        }
        let step_message: StepMessage = match serde_json::from_slice(&message.payload) {
            Ok(m) => m,
            Err(error) => {
                self.dead_letter(
                    &message,
                    delivered,
                    &format!("undecodable step message: {error}"),
                )
                .await;
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let span = tracing::info_span!(
            "saga.step",
            order_id = %step_message.order_id,
            step = step_message.step.name(),
            attempt = delivered,
            trace_id = tracing::field::Empty,
        );
        let context = ordermesh::context::adopt_message(&span, message.headers.as_ref());
        let attempt = transition::Attempt {
            delivered,
            started: Some(chrono::Utc::now()),
        };
        let work = context.scope(
            self.execute(&step_message, attempt)
                .instrument(span.clone()),
        );
        let result = with_progress(&message, work).await;
        let _enter = span.enter();
        match result {
            Ok(()) => {
                let _ = message.ack().await;
            }
            Err(Retry(reason)) if delivered < self.max_deliver => {
                let delay = self.saga.timeouts.backoff(delivered);
                tracing::info!(%reason, ?delay, "step failed transiently; will retry");
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            }
            Err(Retry(reason)) => {
                let reason = format!("dead-lettered after {delivered} attempts: {reason}");
                tracing::warn!(%reason, "step dead-lettered; saga parked until redriven");
                self.dead_letter(&message, delivered, &reason).await;
                self.saga.recent.forget(step_message.order_id);
                match state::park(
                    &self.pool,
                    step_message.order_id,
                    step_message.step,
                    &reason,
                )
                .await
                {
                    Ok(()) => {
                        let _ = message.ack_with(AckKind::Term).await;
                    }
                    // Leave it for redelivery: the saga must not silently stall.
                    Err(error) => tracing::warn!(%error, "could not park the saga"),
                }
            }
        }
    }

    async fn execute(&self, m: &StepMessage, attempt: transition::Attempt) -> Result<(), Retry> {
        // A first delivery to the instance whose transition queued the step needs no read.
        let left = (attempt.delivered <= 1)
            .then(|| self.saga.recent.take(m.order_id, m.step))
            .flatten();
        let seen = match left {
            Some(seen) => Some(seen),
            None => transition::begin_attempt(&self.pool, m.order_id, m.step, attempt).await?,
        };
        let Some(seen) = seen else {
            tracing::warn!("step for an unknown saga; dropping");
            return Ok(());
        };
        if seen.saga.current != Some(m.step) {
            self.finished.insert(m.order_id, m.step);
            return Ok(()); // a redelivery or a step the saga has moved past
        }
        let key = format!("{}:{}", m.order_id, m.step.name());
        let outcome = self
            .call(
                m.step,
                &key,
                &seen.order,
                seen.saga.payment_token.as_deref(),
                &seen.saga.failure_reason,
            )
            .await?;
        if let Outcome::Rejected(reason) = &outcome {
            tracing::info!(%reason, "step rejected; compensating");
        }
        transition::advance_from(&self.pool, &self.saga, seen, m.step, outcome, attempt).await?;
        self.finished.insert(m.order_id, m.step);
        Ok(())
    }

    /// Performs one step's call and classifies the answer.
    async fn call(
        &self,
        step: Step,
        key: &str,
        order: &OrderRow,
        token: Option<&str>,
        reason: &str,
    ) -> Result<Outcome, Retry> {
        let order_id = order.order_id.to_string();
        let c = self.callees.clone();
        match step {
            Step::ReserveInventory => {
                let lines = order
                    .lines
                    .0
                    .iter()
                    .map(|l| ReservationLine {
                        sku: l.sku.clone(),
                        quantity: l.quantity,
                    })
                    .collect();
                let request = ReserveRequest {
                    idempotency_key: key.into(),
                    order_id,
                    lines,
                };
                let r = classify(call!(c, inventory, c.inventory.clone(), reserve, request))?;
                Ok(match r {
                    Err(reason) => Outcome::Rejected(reason),
                    Ok(r) if r.outcome() == ReserveOutcome::Reserved => {
                        Outcome::Succeeded(Some(OrderEvent::InventoryReserved {
                            reservation_id: r
                                .reservation
                                .map(|r| r.reservation_id)
                                .unwrap_or_default(),
                        }))
                    }
                    Ok(r) => {
                        let short: Vec<String> = r
                            .shortages
                            .iter()
                            .map(|s| {
                                format!(
                                    "{} (requested {}, available {})",
                                    s.sku, s.requested, s.available
                                )
                            })
                            .collect();
                        Outcome::Rejected(format!("insufficient stock: {}", short.join(", ")))
                    }
                })
            }
            Step::ProcessPayment => {
                let Some(token) = token else {
                    return Ok(Outcome::Rejected(
                        "the payment token is no longer held".into(),
                    ));
                };
                let request = ChargeRequest {
                    idempotency_key: key.into(),
                    order_id,
                    amount: Some(ordermesh::proto::common::Money {
                        currency_code: order.currency.clone(),
                        amount_minor: order.total_minor,
                    }),
                    payment_token: token.into(),
                    customer_id: order.customer_id.clone(),
                };
                Ok(
                    match classify(call!(c, payment, c.payment(), charge, request))? {
                        Err(reason) => Outcome::Rejected(reason),
                        Ok(r) => match r.payment {
                            Some(p) if p.status() == PaymentStatus::Captured => {
                                Outcome::Succeeded(Some(OrderEvent::PaymentCaptured {
                                    payment_id: p.payment_id,
                                    processor_version: p.processor_version,
                                }))
                            }
                            Some(p) => {
                                Outcome::Rejected(format!("payment declined: {}", p.decline_reason))
                            }
                            None => Outcome::Rejected("payment service returned no payment".into()),
                        },
                    },
                )
            }
            Step::CreateShippingLabel => {
                let method = ShippingMethod::from_str_name(&order.shipping_method)
                    .unwrap_or(ShippingMethod::Standard);
                let service_level = match method {
                    ShippingMethod::Express => "express",
                    ShippingMethod::Overnight => "overnight",
                    _ => "standard",
                };
                let request = CreateLabelRequest {
                    idempotency_key: key.into(),
                    order_id,
                    address: Some(Address::from(order.shipping_address.0.clone())),
                    service_level: service_level.into(),
                    units: order.lines.0.iter().map(|l| l.quantity).sum(),
                };
                Ok(
                    match classify(call!(
                        c,
                        shipping,
                        c.shipping.clone(),
                        create_label,
                        request
                    ))? {
                        Err(reason) => Outcome::Rejected(reason),
                        Ok(r) => Outcome::Succeeded(Some(OrderEvent::LabelCreated {
                            tracking_number: r.label.map(|l| l.tracking_number).unwrap_or_default(),
                        })),
                    },
                )
            }
            Step::ConfirmOrder => {
                let request = CommitRequest {
                    idempotency_key: key.into(),
                    order_id,
                };
                Ok(
                    match classify(call!(c, inventory, c.inventory.clone(), commit, request))? {
                        Err(reason) => Outcome::Rejected(reason),
                        Ok(_) => Outcome::Succeeded(None),
                    },
                )
            }
            Step::ReleaseInventory => {
                let request = ReleaseRequest {
                    idempotency_key: key.into(),
                    order_id,
                    reason: bounded_reason(reason),
                };
                undone(call!(c, inventory, c.inventory.clone(), release, request))
            }
            Step::RefundPayment => {
                let request = RefundRequest {
                    idempotency_key: key.into(),
                    order_id,
                    amount: None,
                    reason: bounded_reason(reason),
                };
                undone(call!(c, payment, c.payment(), refund, request))
            }
            Step::CancelLabel => {
                let request = CancelLabelRequest {
                    idempotency_key: key.into(),
                    order_id,
                    reason: bounded_reason(reason),
                };
                undone(call!(
                    c,
                    shipping,
                    c.shipping.clone(),
                    cancel_label,
                    request
                ))
            }
        }
    }

    /// Keeps an unprocessable message with its payload, subject, headers, delivery count and error.
    async fn dead_letter(&self, message: &jetstream::Message, delivered: i64, error: &str) {
        let step = message
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .and_then(Step::from_name);
        crate::metrics::DEAD_LETTERS
            .with_label_values(&[step.map_or("unknown", Step::name)])
            .inc();
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert(dead_letter::ORIGINAL_SUBJECT, message.subject.as_str());
        headers.insert(dead_letter::DELIVERY_COUNT, delivered.to_string().as_str());
        headers.insert(
            dead_letter::LAST_ERROR,
            dead_letter::last_error(error).as_str(),
        );
        headers.insert("Nats-Msg-Id", Uuid::now_v7().to_string().as_str());
        let subject = self.saga.names.dead_letter_subject("saga");
        match self
            .jetstream
            .publish_with_headers(subject, headers, message.payload.clone())
            .await
        {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    tracing::error!(error = %e, "dead letter not stored");
                }
            }
            Err(e) => tracing::error!(error = %e, "dead letter not published"),
        }
    }
}

/// Runs `work` while telling JetStream every so often that the message is still being worked on,
/// so a slow step is not redelivered to another worker while a dead worker's step is, quickly.
async fn with_progress<T>(
    message: &jetstream::Message,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(STEP_ACK_WAIT / 3);
    ticker.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = ticker.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// A callee's answer: `Ok(Ok(response))`, `Ok(Err(reason))` for a definitive "no" (nothing
/// happened, retrying cannot help), or `Err(Retry)` for anything that may succeed later.
fn classify<T>(result: Result<tonic::Response<T>, Status>) -> Result<Result<T, String>, Retry> {
    match result {
        Ok(response) => Ok(Ok(response.into_inner())),
        Err(status) => match status.code() {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::OutOfRange
            | Code::Unimplemented => Ok(Err(status.message().to_string())),
            _ => Err(Retry::from(status)),
        },
    }
}

/// A compensation's answer. Compensations are idempotent and always possible (undoing what never
/// happened leaves a tombstone that refuses a late effect), so no error means "nothing to undo":
/// INVALID_ARGUMENT, PERMISSION_DENIED, UNIMPLEMENTED (an RBAC or routing glitch in a mesh) or a
/// key reused for another request are faults like any other — retried, then dead-lettered with
/// the saga parked at this compensation for `ordermesh dlq redrive`, never skipped.
fn undone<T>(result: Result<tonic::Response<T>, Status>) -> Result<Outcome, Retry> {
    result
        .map(|_| Outcome::Succeeded(None))
        .map_err(Retry::from)
}

/// Fires durable timeouts: each message waits (a delayed NAK) until due, then fails its step
/// if the saga is still there.
pub async fn run_timeouts(
    worker: Arc<Worker>,
    consumer: PullConsumer,
    shutdown: CancellationToken,
) {
    ordermesh::nats::consume("saga_timeouts", consumer, 16, shutdown, move |message| {
        let worker = worker.clone();
        async move { worker.fire(message).await }
    })
    .await;
}

impl Worker {
    async fn fire(&self, message: jetstream::Message) {
        let Ok(m) = serde_json::from_slice::<StepMessage>(&message.payload) else {
            self.dead_letter(&message, 1, "undecodable timeout message")
                .await;
            let _ = message.ack_with(AckKind::Term).await;
            return;
        };
        if self.finished.contains(m.order_id, m.step) {
            let _ = message.ack().await; // its step finished: nothing to time out
            return;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let due = m.due_at_ms.unwrap_or(now);
        if due > now {
            // Nearly every timeout is moot moments after it is published (its step finished).
            // Look again soon instead of only at the deadline, and drop it once its step is no
            // longer current: JetStream keeps each NAK'd message pending and its consumer
            // scans every pending message periodically, which cost 13 % of the machine's CPU at
            // 70 orders/s while minutes of timeouts piled up.
            let delivered = message.info().map_or(1, |i| i.delivered);
            if delivered > 1 {
                match state::load(&self.pool, m.order_id).await {
                    Ok(Some(saga)) if saga.current != Some(m.step) => {
                        let _ = message.ack().await;
                        return;
                    }
                    Ok(None) => {
                        let _ = message.ack().await;
                        return;
                    }
                    _ => {} // still current (or unknown for now): wait on
                }
            }
            let recheck =
                TIMEOUT_RECHECK.saturating_mul(u32::try_from(delivered).unwrap_or(u32::MAX));
            let wait = Duration::from_millis(u64::try_from(due - now).unwrap_or(0))
                .min(recheck)
                .min(Duration::from_secs(3600));
            let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
            return;
        }
        let timeout = m
            .step
            .spec()
            .deadline
            .map(|d| self.saga.timeouts.of(d))
            .unwrap_or_default();
        let reason = format!(
            "{} timed out after {}",
            m.step.name(),
            humantime_serde::re::humantime::format_duration(timeout)
        );
        match transition::advance(
            &self.pool,
            &self.saga,
            m.order_id,
            m.step,
            Outcome::TimedOut(reason.clone()),
        )
        .await
        {
            Ok(fired) => {
                if fired {
                    tracing::warn!(order_id = %m.order_id, step = m.step.name(), %reason, "step timed out; compensating");
                }
                let _ = message.ack().await;
            }
            Err(error) => {
                tracing::warn!(%error, "could not record a timeout; will retry");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }
}
