//! The saga as data and its transition function, without I/O: what the runner should do next
//! with a saga ([`next`]), and what one input does to it ([`decide`]). Both are pure, so a
//! property test drives them through any sequence of inputs; the journal stores what they
//! return, the runner performs it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ordermesh::{events::OutcomeKind, limits::bounded_reason};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::definition::{self, Step, Timeouts};
use crate::model::OrderEvent;

/// Where a saga is. Stored as its lower-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Running forward steps.
    Forward,
    /// Undoing what the forward steps may have done.
    Compensating,
    /// Finished: CONFIRMED or CANCELLED.
    Done,
    /// Stopped by a step that ran out of retries, with a dead letter for an operator. A forward
    /// step still meets its deadline (the saga then compensates); a parked compensation is the
    /// order's FAILED end until `ordermesh dlq redrive` resumes it.
    Parked,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Compensating => "compensating",
            Phase::Done => "done",
            Phase::Parked => "parked",
        }
    }

    pub fn parse(stored: &str) -> Phase {
        match stored {
            "forward" => Phase::Forward,
            "compensating" => Phase::Compensating,
            "parked" => Phase::Parked,
            _ => Phase::Done,
        }
    }
}

/// A saga as stored (one `sagas` row).
#[derive(Debug, Clone, PartialEq)]
pub struct Saga {
    pub order_id: Uuid,
    pub definition_version: i32,
    pub phase: Phase,
    /// The step to run now; `None` once done.
    pub current: Option<Step>,
    /// Compensations still to run after `current`, in order.
    pub pending: Vec<Step>,
    pub failure_reason: String,
    /// Held only until the charge is made (or the saga gives up); never logged.
    pub payment_token: Option<String>,
    /// The compare-and-set counter: every journal entry moves it by one.
    pub version: i64,
    /// When `current` must be done by, retries included.
    pub deadline: DateTime<Utc>,
    /// Transient failures of `current` so far.
    pub attempts: i32,
    /// Whether the order's outcome was announced (OrderConfirmed / OrderCancelled): a saga
    /// redriven out of FAILED ends CANCELLED without a second notification.
    pub announced: bool,
}

/// What happened, as the runner (or CancelOrder, or an operator) reports it.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // a handful per saga
pub enum Input {
    /// `step` did what it does; the event it produced, if any.
    Succeeded(Step, Option<OrderEvent>),
    /// The callee said no to a forward step (out of stock, declined): nothing happened.
    Refused(Step, String),
    /// A transient failure of `step`; it is tried again after a backoff.
    Retrying(Step, String),
    /// `step` failed transiently as often as it may.
    GaveUp(Step, String),
    /// `step` is past its deadline; whether it happened is unknown.
    TimedOut(Step),
    /// CancelOrder, with the reason to store.
    Cancelled(String),
    /// `ordermesh dlq redrive` of the saga's dead letter.
    Redriven,
}

/// How one timeline row changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepChange {
    /// `step` became current: its row starts (again) as running.
    Start(Step),
    /// A transient failure: attempts and the last error, still running.
    Attempt(Step, String),
    /// `step` ended; `Some(error)` when it failed.
    Finish(Step, Option<String>),
}

/// What one input does: the saga afterwards, and what to write with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub saga: Saga,
    pub steps: Vec<StepChange>,
    /// Order events to append, in order.
    pub events: Vec<OrderEvent>,
    /// The outcome to announce to the notification service, at most once per saga.
    pub announce: Option<OutcomeKind>,
    /// Why the saga parked: a dead letter goes out with this as its last error.
    pub dead_letter: Option<String>,
}

/// What the runner should do with a saga now.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Nothing left: the ticket is done.
    Finished,
    /// Call `step`'s service.
    Call(Step),
    /// Record that `step` is past its deadline first.
    TimedOut(Step),
    /// Nothing to do until then (a parked forward step waiting for its deadline).
    WaitUntil(DateTime<Utc>),
}

/// What the runner should do with `saga` at `now`.
pub fn next(saga: &Saga, now: DateTime<Utc>) -> Next {
    let Some(step) = saga.current else {
        return Next::Finished;
    };
    match saga.phase {
        Phase::Done => Next::Finished,
        Phase::Parked if step.spec().compensation => Next::Finished,
        _ if now >= saga.deadline => Next::TimedOut(step),
        Phase::Parked => Next::WaitUntil(saga.deadline),
        Phase::Forward | Phase::Compensating => Next::Call(step),
    }
}

/// The delay before the next try after a transient failure: the backoff for the attempts so
/// far, but never past the deadline, where the saga moves on anyway.
pub fn retry_delay(saga: &Saga, now: DateTime<Utc>, timeouts: &Timeouts) -> Duration {
    let left = (saga.deadline - now).to_std().unwrap_or_default();
    timeouts.backoff(i64::from(saga.attempts)).min(left)
}

/// What `input` does to `saga` at `now`; `None` when it changes nothing: an input about a step
/// that is not current (a late answer, a duplicate), a cancel or redrive that does not apply.
pub fn decide(
    saga: &Saga,
    input: Input,
    now: DateTime<Utc>,
    timeouts: &Timeouts,
) -> Option<Decision> {
    let current = saga.current?;
    if saga.phase == Phase::Done {
        return None;
    }
    let compensating = current.spec().compensation;
    let mut d = Decision {
        saga: saga.clone(),
        steps: Vec::new(),
        events: Vec::new(),
        announce: None,
        dead_letter: None,
    };
    d.saga.version += 1;
    let about = |step: Step| step == current;
    match input {
        Input::Succeeded(step, event) if about(step) && saga.phase != Phase::Parked => {
            d.steps.push(StepChange::Finish(step, None));
            if compensating {
                d.events.push(OrderEvent::Compensated {
                    step: step.name().into(),
                });
                if d.saga.pending.is_empty() {
                    let reason = d.saga.failure_reason.clone();
                    finish(
                        &mut d,
                        OrderEvent::Cancelled { reason },
                        OutcomeKind::Cancelled,
                    );
                } else {
                    let following = d.saga.pending.remove(0);
                    start(&mut d, following, now, timeouts);
                }
            } else {
                if step == Step::ProcessPayment {
                    d.saga.payment_token = None;
                }
                d.events.extend(event);
                match step.spec().next {
                    Some(following) => start(&mut d, following, now, timeouts),
                    None => {
                        // The Confirmed event itself (with its number) is the journal's to add.
                        d.saga.phase = Phase::Done;
                        d.saga.current = None;
                        d.announce = (!d.saga.announced).then_some(OutcomeKind::Confirmed);
                        d.saga.announced = true;
                    }
                }
            }
        }
        Input::Refused(step, reason) if about(step) && !compensating => {
            fail_forward(&mut d, step, reason, false, now, timeouts);
        }
        Input::Retrying(step, error) if about(step) && saga.phase != Phase::Parked => {
            d.saga.attempts += 1;
            d.steps
                .push(StepChange::Attempt(step, bounded_reason(&error)));
        }
        Input::GaveUp(step, error) if about(step) && saga.phase != Phase::Parked => {
            let reason = bounded_reason(&format!(
                "{} dead-lettered after {} attempts: {error}",
                step.name(),
                saga.attempts + 1
            ));
            d.saga.attempts += 1;
            park(&mut d, step, reason);
        }
        Input::TimedOut(step) if about(step) && now >= saga.deadline => {
            let limit = humantime_serde::re::humantime::format_duration(timeouts.for_step(step));
            let reason = format!("{} timed out after {limit}", step.name());
            if compensating {
                park(&mut d, step, reason);
            } else {
                fail_forward(&mut d, step, reason, true, now, timeouts);
            }
        }
        Input::Cancelled(reason)
            if !compensating
                && current != Step::ConfirmOrder
                && saga.phase != Phase::Compensating =>
        {
            fail_forward(&mut d, current, reason, true, now, timeouts);
        }
        Input::Redriven if saga.phase == Phase::Parked => {
            d.saga.attempts = 0;
            if compensating {
                // A fresh deadline: the one it ran out of is why it parked.
                d.saga.phase = Phase::Compensating;
                d.saga.deadline = now + chrono_duration(timeouts.for_step(current));
            } else {
                // The forward deadline stands: a redrive does not buy the order more time.
                d.saga.phase = Phase::Forward;
                d.saga.failure_reason.clear();
            }
            d.steps.push(StepChange::Start(current));
        }
        _ => return None,
    }
    Some(d)
}

/// `step` becomes current, with a fresh deadline and no attempts yet.
fn start(d: &mut Decision, step: Step, now: DateTime<Utc>, timeouts: &Timeouts) {
    d.saga.current = Some(step);
    d.saga.attempts = 0;
    d.saga.deadline = now + chrono_duration(timeouts.for_step(step));
    d.steps.push(StepChange::Start(step));
}

/// The saga ends with `event`, announcing `kind` unless an outcome was announced already.
fn finish(d: &mut Decision, event: OrderEvent, kind: OutcomeKind) {
    d.events.push(event);
    d.saga.phase = Phase::Done;
    d.saga.current = None;
    d.saga.pending.clear();
    d.announce = (!d.saga.announced).then_some(kind);
    d.saga.announced = true;
}

/// Forward step `step` failed: undo what may have happened, most recent first. With
/// `effect_unknown` (a timeout, a cancel while its call may be in flight) `step` itself is
/// undone too: compensations are idempotent and block late effects.
fn fail_forward(
    d: &mut Decision,
    step: Step,
    reason: String,
    effect_unknown: bool,
    now: DateTime<Utc>,
    timeouts: &Timeouts,
) {
    // Stored, shown and sent with every compensation: it must fit every callee's limit.
    let reason = bounded_reason(&reason);
    d.steps.push(StepChange::Finish(step, Some(reason.clone())));
    d.events.push(OrderEvent::CompensationStarted {
        failed_step: step.name().into(),
        reason: reason.clone(),
    });
    d.saga.payment_token = None;
    d.saga.failure_reason = reason.clone();
    let mut undo = definition::compensations(step, effect_unknown);
    if undo.is_empty() {
        finish(d, OrderEvent::Cancelled { reason }, OutcomeKind::Cancelled);
    } else {
        d.saga.phase = Phase::Compensating;
        let first = undo.remove(0);
        d.saga.pending = undo;
        start(d, first, now, timeouts);
    }
}

/// `step` cannot go on without an operator: the saga parks with a dead letter. A forward step
/// keeps its deadline (and compensates at it); a compensation is the order's FAILED end.
fn park(d: &mut Decision, step: Step, reason: String) {
    let reason = bounded_reason(&reason);
    d.steps.push(StepChange::Finish(step, Some(reason.clone())));
    d.saga.phase = Phase::Parked;
    d.dead_letter = Some(reason.clone());
    if step.spec().compensation {
        let failed = bounded_reason(&format!(
            "compensation {} could not finish: {reason}",
            step.name()
        ));
        d.saga.failure_reason = failed.clone();
        d.events.push(OrderEvent::Failed { reason: failed });
        d.announce = (!d.saga.announced).then_some(OutcomeKind::Cancelled);
        d.saga.announced = true;
    } else {
        d.saga.failure_reason = reason;
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::saga::definition::{FIRST, TABLE};

    fn timeouts() -> Timeouts {
        Timeouts::default()
    }

    fn fresh(now: DateTime<Utc>) -> Saga {
        Saga {
            order_id: Uuid::nil(),
            definition_version: 1,
            phase: Phase::Forward,
            current: Some(FIRST),
            pending: Vec::new(),
            failure_reason: String::new(),
            payment_token: Some("tok".into()),
            version: 0,
            deadline: now + chrono_duration(timeouts().for_step(FIRST)),
            attempts: 0,
            announced: false,
        }
    }

    /// One thing that can happen: an input about the current step (or, sometimes, another),
    /// some seconds after the previous one.
    #[derive(Debug, Clone)]
    struct Happening {
        stale_step: Option<usize>,
        kind: u8,
        seconds_later: u16,
    }

    fn input(kind: u8, step: Step) -> Input {
        match kind % 9 {
            0..=2 => Input::Succeeded(step, None),
            3 => Input::Refused(step, "no".into()),
            4 => Input::Retrying(step, "unavailable".into()),
            5 => Input::GaveUp(step, "unavailable".into()),
            6 => Input::TimedOut(step),
            7 => Input::Cancelled("changed my mind".into()),
            _ => Input::Redriven,
        }
    }

    fn happenings() -> impl Strategy<Value = Vec<Happening>> {
        proptest::collection::vec(
            (
                proptest::option::weighted(0.15, 0..TABLE.len()),
                any::<u8>(),
                0u16..400,
            )
                .prop_map(|(stale_step, kind, seconds_later)| Happening {
                    stale_step,
                    kind,
                    seconds_later,
                }),
            0..60,
        )
    }

    proptest! {
        /// Whatever happens in whatever order, and however long the world stays broken, a saga
        /// whose callees heal ends in exactly one terminal state — CONFIRMED, CANCELLED, or
        /// FAILED (a parked compensation) — announced exactly once, having compensated exactly
        /// the steps that may have happened, each once, most recent first. A parked forward
        /// step never stays parked past its deadline, and nothing moves a finished saga.
        #[test]
        fn any_history_ends_in_one_announced_terminal_state(script in happenings()) {
            let t = timeouts();
            let mut now = DateTime::parse_from_rfc3339("2026-12-05T10:00:00Z").expect("time").with_timezone(&Utc);
            let mut saga = fresh(now);
            let mut events: Vec<OrderEvent> = Vec::new();
            let mut announced = Vec::new();
            let mut maybe_done: Vec<Step> = Vec::new();
            let mut compensated: Vec<Step> = Vec::new();
            // After the script the world heals: the runner's own loop, every call succeeding.
            let heal = std::iter::repeat_n(Happening { stale_step: None, kind: 0, seconds_later: 1 }, 40);
            for h in script.into_iter().chain(heal) {
                now += chrono::Duration::seconds(i64::from(h.seconds_later));
                let step = match (h.stale_step, saga.current) {
                    (Some(i), _) => TABLE[i].step,
                    (None, Some(current)) => current,
                    (None, None) => break,
                };
                let mut input = input(h.kind, step);
                if h.kind == 0 && h.stale_step.is_none() {
                    // The healed runner does what `next` says.
                    match next(&saga, now) {
                        Next::Finished => break,
                        Next::TimedOut(step) => input = Input::TimedOut(step),
                        Next::WaitUntil(until) => { now = until; continue; }
                        Next::Call(_) => {}
                    }
                }
                let before = saga.clone();
                let Some(d) = decide(&saga, input.clone(), now, &t) else { continue };
                prop_assert_eq!(d.saga.version, before.version + 1);
                if let Some(kind) = d.announce { announced.push(kind); }
                // The step the input was about (a cancel or redrive is about the current one).
                let step = match input {
                    Input::Cancelled(_) | Input::Redriven => before.current.unwrap_or(step),
                    _ => step,
                };
                // Forward steps whose effect may exist: succeeded, or ended with effect unknown.
                // (A transient failure or giving up alone is not one: the callee is idempotent, so a later
                // definitive answer tells what happened.)
                if !step.spec().compensation && before.current == Some(step) {
                    match &input {
                        Input::Succeeded(..) | Input::TimedOut(_) | Input::Cancelled(_) => maybe_done.push(step),
                        _ => {}
                    }
                }
                if step.spec().compensation && matches!(input, Input::Succeeded(..)) {
                    compensated.push(step);
                }
                events.extend(d.events);
                saga = d.saga;
            }
            let terminal = events.iter().filter(|e| matches!(e, OrderEvent::Cancelled { .. } | OrderEvent::Failed { .. })).count();
            let confirmed = saga.phase == Phase::Done && saga.failure_reason.is_empty();
            let failed = saga.phase == Phase::Parked && saga.current.is_some_and(|s| s.spec().compensation);
            prop_assert!(saga.phase == Phase::Done || failed, "ended {saga:?}");
            prop_assert_eq!(announced.len(), 1, "announced {:?}: {:?}", announced, events);
            prop_assert!(terminal + usize::from(confirmed) >= 1);
            let started = events.iter().filter(|e| matches!(e, OrderEvent::CompensationStarted { .. })).count();
            prop_assert!(started <= 1, "compensation started twice: {:?}", events);
            if confirmed {
                prop_assert!(compensated.is_empty());
                prop_assert_eq!(saga.payment_token.as_deref(), None);
            }
            if saga.phase == Phase::Done && !confirmed {
                // Exactly the undo steps of what may have happened, most recent first, once each.
                let mut expected: Vec<Step> = Vec::new();
                for s in maybe_done.iter().rev() {
                    if let Some(u) = s.spec().undo && !expected.contains(&u) { expected.push(u); }
                }
                prop_assert_eq!(&compensated, &expected);
                let mut counts: HashMap<Step, usize> = HashMap::new();
                for step in &compensated { *counts.entry(*step).or_default() += 1; }
                prop_assert!(counts.values().all(|n| *n == 1));
                prop_assert_eq!(saga.payment_token.as_deref(), None);
            }
            if saga.phase == Phase::Done {
                for step in TABLE.iter().map(|s| s.step) {
                    prop_assert!(decide(&saga, Input::Succeeded(step, None), now, &t).is_none());
                }
                prop_assert!(decide(&saga, Input::Cancelled("late".into()), now, &t).is_none());
            }
        }
    }

    #[test]
    fn a_parked_forward_step_waits_for_its_deadline_then_compensates() {
        let t = timeouts();
        let now = Utc::now();
        let saga = fresh(now);
        let d = decide(&saga, Input::GaveUp(FIRST, "down".into()), now, &t).expect("parks");
        assert_eq!(d.saga.phase, Phase::Parked);
        assert!(d.dead_letter.is_some());
        assert_eq!(next(&d.saga, now), Next::WaitUntil(saga.deadline));
        let later = saga.deadline;
        assert_eq!(next(&d.saga, later), Next::TimedOut(FIRST));
        let c = decide(&d.saga, Input::TimedOut(FIRST), later, &t).expect("compensates");
        assert_eq!(c.saga.phase, Phase::Compensating);
        assert_eq!(c.saga.current, Some(Step::ReleaseInventory));
    }

    #[test]
    fn a_compensation_past_its_deadline_fails_the_order_once_and_a_redrive_finishes_it_quietly() {
        let t = timeouts();
        let now = Utc::now();
        let saga = fresh(now);
        let c = decide(&saga, Input::Cancelled("stop".into()), now, &t).expect("cancel");
        let late = c.saga.deadline;
        let failed =
            decide(&c.saga, Input::TimedOut(Step::ReleaseInventory), late, &t).expect("fails");
        assert_eq!(failed.announce, Some(OutcomeKind::Cancelled));
        assert!(matches!(
            failed.events.as_slice(),
            [OrderEvent::Failed { .. }]
        ));
        assert_eq!(next(&failed.saga, late), Next::Finished);
        let redriven = decide(&failed.saga, Input::Redriven, late, &t).expect("redrive");
        assert_eq!(
            next(&redriven.saga, late),
            Next::Call(Step::ReleaseInventory)
        );
        let done = decide(
            &redriven.saga,
            Input::Succeeded(Step::ReleaseInventory, None),
            late,
            &t,
        )
        .expect("done");
        assert_eq!(done.saga.phase, Phase::Done);
        assert_eq!(done.announce, None, "the customer was told once");
    }

    #[test]
    fn retry_delays_follow_the_backoff_but_never_pass_the_deadline() {
        let t = timeouts();
        let now = Utc::now();
        let mut saga = fresh(now);
        saga.attempts = 1;
        assert_eq!(retry_delay(&saga, now, &t), Duration::from_secs(5));
        saga.deadline = now + chrono::Duration::seconds(2);
        assert_eq!(retry_delay(&saga, now, &t), Duration::from_secs(2));
    }
}
