//! The saga's transition table: the one place that says which steps exist, in which order,
//! what each does to the order's status, what undoes it and which timeout guards it. The
//! executor, the timeline and `ordermesh saga graph` all read [`TABLE`]; nothing else encodes
//! the flow.
//!
//! Adding a step safely: append a new [`Step`] variant (never renumber or rename one: names are
//! stored in saga rows and messages), add its row to [`TABLE`], bump [`DEFINITION_VERSION`], and
//! keep the old rows working — sagas started under an older version finish under the new code.

use std::time::Duration;

use ordermesh::proto::order::OrderStatus;
use serde::{Deserialize, Serialize};

/// Version of the table; recorded on every saga when it starts.
pub const DEFINITION_VERSION: u32 = 1;

/// Every step and compensation. The serialized names are stored; they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    ReserveInventory,
    ProcessPayment,
    CreateShippingLabel,
    ConfirmOrder,
    ReleaseInventory,
    RefundPayment,
    CancelLabel,
}

/// Which deadline guards a step (configured in [`Timeouts`]). Every step has one: a forward
/// step past it fails and the saga compensates; a compensation past it ends the saga FAILED
/// with a dead letter for `ordermesh dlq redrive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    Inventory,
    Payment,
    Shipping,
    Confirm,
    Compensation,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct StepSpec {
    pub step: Step,
    /// A compensation undoes an earlier step; it never fails the saga forward.
    pub compensation: bool,
    /// The order's status once this step succeeded (forward steps).
    pub status_after: Option<OrderStatus>,
    /// The forward step that follows; `None` ends the saga.
    pub next: Option<Step>,
    /// What undoes this step when a later one fails (or this one timed out).
    pub undo: Option<Step>,
    /// How long the step may take from the moment it becomes current, retries included.
    pub deadline: Deadline,
}

/// The order saga: ReserveInventory → ProcessPayment → CreateShippingLabel → ConfirmOrder,
/// compensated in reverse by CancelLabel, RefundPayment, ReleaseInventory.
pub const TABLE: &[StepSpec] = &[
    StepSpec {
        step: Step::ReserveInventory,
        compensation: false,
        status_after: Some(OrderStatus::InventoryReserved),
        next: Some(Step::ProcessPayment),
        undo: Some(Step::ReleaseInventory),
        deadline: Deadline::Inventory,
    },
    StepSpec {
        step: Step::ProcessPayment,
        compensation: false,
        status_after: Some(OrderStatus::PaymentProcessed),
        next: Some(Step::CreateShippingLabel),
        undo: Some(Step::RefundPayment),
        deadline: Deadline::Payment,
    },
    StepSpec {
        step: Step::CreateShippingLabel,
        compensation: false,
        status_after: None,
        next: Some(Step::ConfirmOrder),
        undo: Some(Step::CancelLabel),
        deadline: Deadline::Shipping,
    },
    StepSpec {
        step: Step::ConfirmOrder,
        compensation: false,
        status_after: Some(OrderStatus::Confirmed),
        next: None,
        undo: None,
        deadline: Deadline::Confirm,
    },
    StepSpec {
        step: Step::ReleaseInventory,
        compensation: true,
        status_after: None,
        next: None,
        undo: None,
        deadline: Deadline::Compensation,
    },
    StepSpec {
        step: Step::RefundPayment,
        compensation: true,
        status_after: None,
        next: None,
        undo: None,
        deadline: Deadline::Compensation,
    },
    StepSpec {
        step: Step::CancelLabel,
        compensation: true,
        status_after: None,
        next: None,
        undo: None,
        deadline: Deadline::Compensation,
    },
];

/// The first step of every saga.
pub const FIRST: Step = Step::ReserveInventory;

impl Step {
    /// The step's row in [`TABLE`].
    pub fn spec(self) -> &'static StepSpec {
        TABLE.iter().find(|s| s.step == self).unwrap_or(&TABLE[0])
    }

    /// Stored and wire name, e.g. `reserve-inventory`.
    pub fn name(self) -> &'static str {
        match self {
            Step::ReserveInventory => "reserve-inventory",
            Step::ProcessPayment => "process-payment",
            Step::CreateShippingLabel => "create-shipping-label",
            Step::ConfirmOrder => "confirm-order",
            Step::ReleaseInventory => "release-inventory",
            Step::RefundPayment => "refund-payment",
            Step::CancelLabel => "cancel-label",
        }
    }

    pub fn from_name(name: &str) -> Option<Step> {
        TABLE.iter().map(|s| s.step).find(|s| s.name() == name)
    }
}

/// Compensations to run, in order, when forward step `failed` fails. Steps before it succeeded
/// and are undone in reverse. The failed step itself is undone too when its effect is unknown
/// (it timed out or gave up on transient errors): compensations are idempotent and block late
/// effects, so undoing something that never happened is safe, and leaving a late effect is not.
pub fn compensations(failed: Step, effect_unknown: bool) -> Vec<Step> {
    let forward: Vec<&StepSpec> = TABLE.iter().filter(|s| !s.compensation).collect();
    let position = forward.iter().position(|s| s.step == failed).unwrap_or(0);
    let mut undo: Vec<Step> = forward[..position].iter().filter_map(|s| s.undo).collect();
    if effect_unknown && let Some(u) = forward[position].undo {
        undo.push(u);
    }
    undo.reverse();
    undo
}

/// Per-step deadlines and the retry backoff for transient failures (`ORDERMESH_SAGA__*`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Timeouts {
    /// Deadline of the reserve-inventory step; past it the order is compensated.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub inventory_timeout: Duration,
    /// Deadline of the process-payment step.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub payment_timeout: Duration,
    /// Deadline of the create-shipping-label step.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shipping_timeout: Duration,
    /// Deadline of the confirm-order step (the inventory commit); past it the order is
    /// compensated.
    #[serde(with = "humantime_serde", default = "default_confirm_timeout")]
    #[schemars(with = "String")]
    pub confirm_timeout: Duration,
    /// Deadline of each compensation; past it the saga ends FAILED with an event, a
    /// notification, a metric and a dead letter.
    #[serde(with = "humantime_serde", default = "default_compensation_timeout")]
    #[schemars(with = "String")]
    pub compensation_timeout: Duration,
    /// Delays before retrying a step after a transient failure, separated by spaces; the last
    /// one repeats, never past the step's deadline.
    #[serde(with = "humantime_list")]
    #[schemars(with = "String")]
    pub retry_backoff: Vec<Duration>,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            inventory_timeout: Duration::from_secs(120),
            payment_timeout: Duration::from_secs(180),
            shipping_timeout: Duration::from_secs(300),
            confirm_timeout: default_confirm_timeout(),
            compensation_timeout: default_compensation_timeout(),
            retry_backoff: vec![
                Duration::from_secs(5),
                Duration::from_secs(10),
                Duration::from_secs(30),
            ],
        }
    }
}

fn default_confirm_timeout() -> Duration {
    Duration::from_secs(120)
}

fn default_compensation_timeout() -> Duration {
    Duration::from_secs(600)
}

impl Timeouts {
    pub fn of(&self, deadline: Deadline) -> Duration {
        match deadline {
            Deadline::Inventory => self.inventory_timeout,
            Deadline::Payment => self.payment_timeout,
            Deadline::Shipping => self.shipping_timeout,
            Deadline::Confirm => self.confirm_timeout,
            Deadline::Compensation => self.compensation_timeout,
        }
    }

    /// How long `step` may take once it is current.
    pub fn for_step(&self, step: Step) -> Duration {
        self.of(step.spec().deadline)
    }

    /// Delay before retrying a step after its `attempts`-th transient failure.
    pub fn backoff(&self, attempts: i64) -> Duration {
        let index = usize::try_from(attempts.saturating_sub(1)).unwrap_or(0);
        self.retry_backoff
            .get(index)
            .or(self.retry_backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(5))
    }
}

/// Durations as one space-separated string ("5s 10s 30s"), the way an environment variable holds them.
mod humantime_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let parts: Vec<String> = value
            .iter()
            .map(|d| humantime_serde::re::humantime::format_duration(*d).to_string())
            .collect();
        s.serialize_str(&parts.join(" "))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let raw = String::deserialize(d)?;
        let parsed: Result<Vec<Duration>, _> = raw
            .split_whitespace()
            .map(humantime_serde::re::humantime::parse_duration)
            .collect();
        match parsed {
            Ok(list) if !list.is_empty() => Ok(list),
            Ok(_) => Err(serde::de::Error::custom(
                "needs at least one duration, e.g. \"5s 10s 30s\"",
            )),
            Err(e) => Err(serde::de::Error::custom(format!(
                "{e}; write durations like \"5s 10s 30s\""
            ))),
        }
    }
}

/// One transition of the state machine as [`graph`] draws it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Order status before, or `[*]` (the start).
    pub from: String,
    /// Order status after, or `[*]` (the end).
    pub to: String,
    /// What moves the saga along it, e.g. `reserve-inventory ok`.
    pub label: String,
    pub cause: Cause,
}

/// What takes a saga along a [`Transition`]: how a path through the diagram is told from the
/// saga's timeline (the explorer highlights the transitions an order took).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// An order is placed.
    Placed,
    /// The forward step succeeded.
    Succeeded(Step),
    /// The forward step failed, timed out or was cancelled while current: compensate.
    Failed(Step),
    /// Every compensation finished: the order is CANCELLED.
    Compensated,
    /// A compensation could not finish by its deadline: the order is FAILED.
    Stuck,
    /// The order reached a final status.
    Ended,
}

/// Name of the start and end pseudo-states.
pub const TERMINAL_MARK: &str = "[*]";

/// The state machine over order statuses, generated from [`TABLE`]: each forward step moves
/// the order on (or keeps its status, like create-shipping-label) or sends it to COMPENSATING
/// with the compensations listed; compensation ends CANCELLED, or FAILED when one gets stuck.
/// `ordermesh saga graph` prints it as Mermaid ([`mermaid`]); the explorer draws it as SVG.
pub fn graph() -> Vec<Transition> {
    let status = |s: OrderStatus| {
        ordermesh::display::enum_name(s.as_str_name(), "ORDER_STATUS_").to_string()
    };
    let edge = |from: &str, to: &str, label: String, cause: Cause| Transition {
        from: from.to_string(),
        to: to.to_string(),
        label,
        cause,
    };
    let compensating = status(OrderStatus::Compensating);
    let mut current = status(OrderStatus::Pending);
    let mut out = vec![edge(TERMINAL_MARK, &current, String::new(), Cause::Placed)];
    let mut step = Some(FIRST);
    while let Some(s) = step {
        let spec = s.spec();
        let after = spec
            .status_after
            .map(status)
            .unwrap_or_else(|| current.clone());
        out.push(edge(
            &current,
            &after,
            format!("{} ok", s.name()),
            Cause::Succeeded(s),
        ));
        if !spec.compensation {
            let undo: Vec<&str> = compensations(s, true).iter().map(|c| c.name()).collect();
            out.push(edge(
                &current,
                &compensating,
                format!("{} failed or timed out / {}", s.name(), undo.join(", ")),
                Cause::Failed(s),
            ));
        }
        current = after;
        step = spec.next;
    }
    let cancelled = status(OrderStatus::Cancelled);
    let failed = status(OrderStatus::Failed);
    out.push(edge(
        &compensating,
        &cancelled,
        "compensations done".into(),
        Cause::Compensated,
    ));
    out.push(edge(
        &compensating,
        &failed,
        "a compensation could not finish by its deadline (dead-lettered)".into(),
        Cause::Stuck,
    ));
    for end in [current, cancelled, failed] {
        out.push(edge(&end, TERMINAL_MARK, String::new(), Cause::Ended));
    }
    out
}

/// The state machine as a Mermaid diagram (`ordermesh saga graph`).
pub fn mermaid() -> String {
    let mut out = String::from("stateDiagram-v2\n");
    for t in graph() {
        if t.label.is_empty() {
            out.push_str(&format!("    {} --> {}\n", t.from, t.to));
        } else {
            out.push_str(&format!("    {} --> {}: {}\n", t.from, t.to, t.label));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_has_exactly_one_row_and_a_unique_name() {
        let all = [
            Step::ReserveInventory,
            Step::ProcessPayment,
            Step::CreateShippingLabel,
            Step::ConfirmOrder,
            Step::ReleaseInventory,
            Step::RefundPayment,
            Step::CancelLabel,
        ];
        for step in all {
            assert_eq!(
                TABLE.iter().filter(|s| s.step == step).count(),
                1,
                "{step:?}"
            );
            assert_eq!(Step::from_name(step.name()), Some(step));
        }
        assert_eq!(TABLE.len(), all.len());
    }

    #[test]
    fn failures_compensate_completed_steps_in_reverse() {
        assert_eq!(compensations(Step::ReserveInventory, false), vec![]);
        assert_eq!(
            compensations(Step::ProcessPayment, false),
            vec![Step::ReleaseInventory]
        );
        assert_eq!(
            compensations(Step::CreateShippingLabel, false),
            vec![Step::RefundPayment, Step::ReleaseInventory]
        );
    }

    #[test]
    fn a_timed_out_step_is_compensated_too() {
        assert_eq!(
            compensations(Step::ReserveInventory, true),
            vec![Step::ReleaseInventory]
        );
        assert_eq!(
            compensations(Step::ProcessPayment, true),
            vec![Step::RefundPayment, Step::ReleaseInventory]
        );
    }

    #[test]
    fn backoff_follows_the_configured_intervals_then_repeats_the_last() {
        let t = Timeouts::default();
        let secs: Vec<u64> = (1..=5).map(|d| t.backoff(d).as_secs()).collect();
        assert_eq!(secs, vec![5, 10, 30, 30, 30]);
    }

    #[test]
    fn the_graph_has_one_success_and_one_failure_per_forward_step() {
        let g = graph();
        for spec in TABLE.iter().filter(|s| !s.compensation) {
            for cause in [Cause::Succeeded(spec.step), Cause::Failed(spec.step)] {
                assert_eq!(
                    g.iter().filter(|t| t.cause == cause).count(),
                    1,
                    "{cause:?}"
                );
            }
        }
    }

    #[test]
    fn the_diagram_walks_the_forward_path_to_confirmed() {
        let diagram = mermaid();
        assert!(diagram.contains("PENDING --> INVENTORY_RESERVED: reserve-inventory ok"));
        assert!(diagram.contains("PAYMENT_PROCESSED --> CONFIRMED: confirm-order ok"));
        assert!(
            diagram.contains(
                "process-payment failed or timed out / refund-payment, release-inventory"
            )
        );
    }
}
