//! The explorer's HTML, rendered on the server with maud: every value is escaped by the
//! template language itself (a customer id `<script>…` is text, never markup), and a page is
//! complete without JavaScript; the small script only swaps in the fragments the live streams
//! send (rendered by the same functions).

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use ordermesh::{
    display::{enum_name, money, timestamp},
    proto::order::{Order, OrderStatus, SagaStep},
};
use uuid::Uuid;

use super::{
    Filter,
    diagram::{self, Path},
    query::{ATTENTION_PAGE, Concern, Counts, DeadLetter, OrderDetail, Stuck},
};

/// Every order status a filter may name, in the enum's order (the values are dense from 1).
pub fn statuses() -> impl Iterator<Item = OrderStatus> {
    (1..).map_while(|n| OrderStatus::try_from(n).ok())
}

pub fn status_name(status: OrderStatus) -> &'static str {
    enum_name(status.as_str_name(), "ORDER_STATUS_")
}

fn badge(status: &str) -> Markup {
    html! { span class={"badge " (status.to_lowercase())} { (status) } }
}

/// A whole page: navigation, the body, and (with `live`) the stream its fragments come from.
pub fn layout(title: &str, live: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · ordermesh explorer" }
                link rel="stylesheet" href="/ui/assets/explorer.css";
            }
            body data-live=[live] {
                header {
                    a class="brand" href="/ui" { "ordermesh" span { " explorer" } }
                    nav {
                        a href="/ui" { "Orders" }
                        a href="/ui/attention" { "Attention" }
                    }
                    @if live.is_some() {
                        span id="connection" class="connection" { "connecting…" }
                    }
                }
                main { (body) }
                script src="/ui/assets/explorer.js" {}
            }
        }
    }
}

/// The orders page: filters, live counts, the newest orders.
pub fn orders(filter: &Filter, counts: &Counts, orders: &[Order], size: u32) -> Markup {
    let first_page = filter.before.is_none();
    let next = (orders.len() == size as usize)
        .then(|| orders.last().map(|o| o.order_id.clone()))
        .flatten();
    html! {
        h1 { "Orders" }
        form class="filters" method="get" action="/ui" {
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in statuses() {
                        option value=(status_name(s)) selected[filter.status == Some(s)] { (status_name(s)) }
                    }
                }
            }
            label { "Customer "
                input type="text" name="customer" maxlength="128" value=[filter.customer.as_deref()];
            }
            button type="submit" { "Filter" }
            @if filter.status.is_some() || filter.customer.is_some() {
                a href="/ui" { "clear" }
            }
        }
        section id="counts" data-live-target { (counts_bar(filter, counts)) }
        section id="orders" data-live-target[first_page] { (order_table(orders)) }
        nav class="pages" {
            @if !first_page { a href=(filter.with_before(None).href()) { "← newest" } }
            @if let Some(last) = next { a href=(filter.with_before(Some(&last)).href()) { "older →" } }
        }
    }
}

/// Orders per status; each count links to the list filtered by it.
pub fn counts_bar(filter: &Filter, counts: &Counts) -> Markup {
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    html! {
        ul class="counts" {
            li { a href=(filter.with_status(None).href()) { "all " strong { (total) } } }
            @for s in statuses() {
                @let stored = s.as_str_name();
                @let n = counts.iter().find(|(name, _)| name == stored).map_or(0, |(_, n)| *n);
                li class=(status_name(s).to_lowercase()) data-status=(status_name(s)) {
                    a href=(filter.with_status(Some(s)).href()) {
                        (status_name(s)) " " strong { (n) }
                    }
                }
            }
        }
    }
}

pub fn order_table(orders: &[Order]) -> Markup {
    html! {
        @if orders.is_empty() {
            p class="empty" { "No orders match." }
        } @else {
            table class="orders" {
                thead { tr { th { "Order" } th { "Placed" } th { "Customer" } th { "Status" } th class="num" { "Total" } th { "Confirmation" } } }
                tbody {
                    @for o in orders {
                        tr id={"order-" (o.order_id)} {
                            td { a class="id" href={"/ui/orders/" (o.order_id)} { (o.order_id) } }
                            td { (timestamp(o.created_at.as_ref())) }
                            td class="customer" { (o.customer_id) }
                            td { (badge(status_name(o.status()))) }
                            td class="num" { (money(o.total.as_ref())) }
                            td class="id" { (o.confirmation_number) }
                        }
                    }
                }
            }
        }
    }
}

/// The order page's body, sent again whole by its live stream on every change.
pub fn order(d: &OrderDetail, namespace: &str, now: DateTime<Utc>) -> Markup {
    let o = &d.order;
    let status = status_name(o.status());
    html! {
        h1 { "Order " span class="id" { (o.order_id) } " " (badge(status)) }
        div class="columns" {
            section class="facts" {
                h2 { "Order" }
                dl {
                    dt { "Customer" } dd class="customer" { (o.customer_id) }
                    dt { "Total" } dd { (money(o.total.as_ref())) }
                    dt { "Placed" } dd { (timestamp(o.created_at.as_ref())) }
                    dt { "Updated" } dd { (timestamp(o.updated_at.as_ref())) " (version " (o.version) ")" }
                    dt { "Confirmation" } dd class="id" { (or_dash(&o.confirmation_number)) }
                    dt { "Tracking" } dd class="id" { (or_dash(&o.tracking_number)) }
                    dt { "Request id" } dd class="id" { (or_dash(&o.request_id)) }
                    dt { "Trace id" } dd class="id" { (or_dash(d.trace_id.as_deref().unwrap_or(""))) }
                    @if !o.failure_reason.is_empty() {
                        dt { "Reason" } dd class="error" { (o.failure_reason) }
                    }
                }
                table class="lines" {
                    thead { tr { th { "SKU" } th class="num" { "Qty" } th class="num" { "Unit price" } } }
                    tbody {
                        @for l in &o.lines {
                            tr { td { (l.sku) } td class="num" { (l.quantity) } td class="num" { (money(l.unit_price.as_ref())) } }
                        }
                    }
                }
            }
            section class="saga" {
                h2 { "Saga" }
                dl {
                    dt { "Phase" } dd { (d.saga.phase.as_str()) }
                    dt { "Current step" } dd { (d.saga.current_step.unwrap_or("-")) }
                    @if d.saga.current_step.is_some() {
                        dt { "Deadline" } dd { (deadline(d.saga.deadline, now)) }
                        dt { "Failed attempts" } dd { (d.saga.attempts) }
                    }
                    @if !d.saga.failure_reason.is_empty() {
                        dt { "Failure" } dd class="error" { (d.saga.failure_reason) }
                    }
                    dt { "Definition" } dd { "v" (d.saga.definition_version) }
                }
                @if d.saga.phase.as_str() == "parked" {
                    (dead_letter(o.order_id.as_str(), d.dead_letter.as_ref(), namespace))
                }
            }
        }
        section {
            h2 { "State diagram" }
            (diagram::render(&Path { status, steps: &d.steps }))
        }
        section {
            h2 { "Timeline" }
            (timeline(&d.steps))
        }
    }
}

fn or_dash(value: &str) -> &str {
    if value.is_empty() { "-" } else { value }
}

/// "2026-12-06 10:00:00 UTC (in 4s)" or "(overdue by 12s)".
fn deadline(at: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! { (full(at)) " (" (until(at, now)) ")" }
}

fn full(at: DateTime<Utc>) -> String {
    timestamp(Some(&ordermesh::time::to_proto(at)))
}

/// "in 4s" or "overdue by 12s", the full time as its tooltip (for tables).
fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    let left = at - now;
    let seconds = left.num_seconds().unsigned_abs();
    html! {
        @if left.num_milliseconds() < 0 {
            span class="error" title=(full(at)) { "overdue by " (seconds) "s" }
        } @else {
            span title=(full(at)) { "in " (seconds) "s" }
        }
    }
}

/// "10:00:00 UTC", the full time as its tooltip (for tables).
fn clock(at: DateTime<Utc>) -> Markup {
    html! { span title=(full(at)) { (at.format("%H:%M:%S UTC")) } }
}

pub fn timeline(steps: &[SagaStep]) -> Markup {
    html! {
        table class="timeline" {
            thead { tr { th { "Step" } th { "Kind" } th { "Status" } th class="num" { "Attempts" } th { "Started" } th class="num" { "Took" } th { "Error" } } }
            tbody {
                @for s in steps {
                    tr class=(if s.compensation { "compensation" } else { "forward" }) data-step=(s.name) {
                        td { (s.name) }
                        td { (if s.compensation { "compensation" } else { "forward" }) }
                        td { (badge(enum_name(s.status().as_str_name(), "STEP_STATUS_"))) }
                        td class="num" { (s.attempts) }
                        td { (timestamp(s.started_at.as_ref())) }
                        td class="num" { (s.duration.as_ref().map(|d| format!("{:.3}s", d.seconds as f64 + f64::from(d.nanos) / 1e9)).unwrap_or_else(|| "-".into())) }
                        td class="error" { (s.error) }
                    }
                }
            }
        }
    }
}

/// The command that resumes a parked saga, with a button that copies it.
fn redrive(letter: &DeadLetter, namespace: &str) -> Markup {
    let command = format!(
        "ordermesh dlq redrive --namespace {namespace} {}",
        letter.sequence
    );
    html! {
        div class="command" {
            code { (command) }
            button type="button" data-copy=(command) { "copy" }
        }
    }
}

fn dead_letter(order_id: &str, letter: Option<&DeadLetter>, namespace: &str) -> Markup {
    html! {
        div class="dead-letter" {
            @match letter {
                Some(l) => {
                    p { "Dead letter " strong { "#" (l.sequence) } " after " (l.deliveries) " deliveries: " span class="error" { (l.last_error) } }
                    (redrive(l, namespace))
                }
                None => {
                    p { "Parked; its dead letter was not found (redriven already?). "
                        code { "ordermesh dlq list --namespace " (namespace) } " lists them; order " span class="id" { (order_id) } "." }
                }
            }
        }
    }
}

/// The Attention page: sagas that need a look, oldest first; the table is kept current.
pub fn attention(
    stuck: &[Stuck],
    after: Option<Uuid>,
    namespace: &str,
    now: DateTime<Utc>,
) -> Markup {
    html! {
        h1 { "Attention" }
        p class="hint" { "Unfinished sagas that are parked (out of retries, with a dead letter), past their step's deadline, or retrying a failing step; oldest first." }
        section id="attention" data-live-target { (attention_table(stuck, after, namespace, now)) }
    }
}

/// One page of the Attention list and the links to the pages beside it.
pub fn attention_table(
    stuck: &[Stuck],
    after: Option<Uuid>,
    namespace: &str,
    now: DateTime<Utc>,
) -> Markup {
    let next = (stuck.len() == ATTENTION_PAGE as usize)
        .then(|| stuck.last().map(|s| s.order_id))
        .flatten();
    html! {
        @if stuck.is_empty() {
            p class="empty" { "Nothing needs attention." }
        } @else {
            table class="attention" {
                thead { tr { th { "Order" } th { "Why" } th { "Status" } th { "Step" } th { "Last moved" } th { "Deadline" } th class="num" { "Failed attempts" } th { "Last error" } th { "Dead letter" } } }
                tbody {
                    @for s in stuck {
                        tr id={"stuck-" (s.order_id)} {
                            td { a class="id" href={"/ui/orders/" (s.order_id)} { (s.order_id) } div class="customer" { (s.customer_id) } }
                            td { (concern(s.concern(now))) }
                            td { (badge(enum_name(&s.status, "ORDER_STATUS_"))) }
                            td { (s.current_step.as_deref().unwrap_or("-")) }
                            td class="when" { (clock(s.updated_at)) }
                            td class="when" { @if let Some(d) = s.deadline_at { (until(d, now)) } }
                            td class="num" { (s.attempts) }
                            td class="error" { (s.last_error) }
                            td {
                                @if let Some(l) = &s.dead_letter {
                                    (redrive(l, namespace))
                                } @else if s.concern(now) == Concern::Parked {
                                    "not found"
                                }
                            }
                        }
                    }
                }
            }
        }
        nav class="pages" {
            @if after.is_some() { a href="/ui/attention" { "← oldest" } }
            @if let Some(next) = next { a href={"/ui/attention?after=" (next)} { "newer →" } }
        }
    }
}

fn concern(c: Concern) -> Markup {
    let (class, text) = match c {
        Concern::Parked => ("parked", "parked"),
        Concern::PastDeadline => ("overdue", "past deadline"),
        Concern::Retrying => ("retrying", "retrying"),
    };
    html! { span class={"badge " (class)} { (text) } }
}

/// A page for a request the explorer cannot answer: what was wrong, field by field.
pub fn problem(title: &str, message: &str, fields: &[(String, String)]) -> Markup {
    layout(
        title,
        None,
        html! {
            h1 { (title) }
            p { (message) }
            @if !fields.is_empty() {
                ul class="violations" {
                    @for (field, description) in fields {
                        li { code { (field) } ": " (description) }
                    }
                }
            }
            p { a href="/ui" { "Back to the orders" } }
        },
    )
}
