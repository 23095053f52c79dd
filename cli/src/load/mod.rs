//! `ordermesh load`: an open-loop load generator. Orders are sent on a fixed schedule
//! (`--rate`), whatever the responses do, and every latency is measured from the moment the order
//! was *scheduled*, so a slow system cannot hide its latency by slowing the sender (no
//! coordinated omission). For each order it records the CreateOrder latency and the end-to-end
//! time to a terminal status, followed through WatchOrder or the order's outcome event on NATS
//! (`--follow`; never polling), in HDR histograms.

mod outcomes;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use tonic::{Code, metadata::MetadataValue};

use super::{Endpoints, NatsTarget};
use ordermesh::{
    events::OutcomeKind,
    limits::MAX_STOCK,
    proto::{
        common::{Address, Money},
        inventory::UpsertItemRequest,
        order::{
            CreateOrderRequest, OrderLine, OrderStatus, WatchOrderRequest,
            order_service_client::OrderServiceClient,
        },
    },
};

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Orders per second, sent on schedule whatever the responses do.
    #[arg(long, default_value_t = 50.0, value_parser = parse_rate)]
    rate: f64,
    /// How long to send after the warm-up, e.g. 30s or 2m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Sent first at the same rate and left out of the statistics.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Stop after this many measured orders, even before --duration has passed.
    #[arg(long)]
    count: Option<u64>,
    /// Most orders in flight (sent, not yet terminal). An order due beyond it is not sent and is
    /// counted as `refused_in_flight`: overload shows up in the results instead of in a queue.
    #[arg(long, default_value_t = 5_000)]
    max_in_flight: usize,
    /// Shares of normal : insufficient-stock : declined-card orders, e.g. 90:5:5.
    #[arg(long, default_value = "90:5:5", value_parser = parse_mix)]
    mix: Mix,
    /// Distinct SKUs the normal orders spread over (each seeded with ample stock).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    skus: u32,
    /// Distinct customer ids.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    customers: u32,
    /// Share of orders sent with `x-version: v2` (the payment canary), 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    v2_share: f64,
    /// How long to wait for orders still in flight once sending stopped.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    drain: Duration,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Do not set the SKUs' stock before the run.
    #[arg(long)]
    no_seed: bool,
    /// How to learn that an order finished: `watch` (a WatchOrder stream per order, the way a
    /// client would follow it) or `events` (its OrderConfirmed / OrderCancelled event on NATS,
    /// which costs the mesh nothing per order beyond the saga; a FAILED order counts as
    /// cancelled, as its event says).
    #[arg(long, value_enum, default_value_t = Follow::Watch)]
    follow: Follow,
    /// The mesh's NATS, for `--follow events`.
    #[command(flatten)]
    nats: NatsTarget,
    #[command(flatten)]
    endpoints: Endpoints,
}

/// How the generator learns that an order reached a terminal status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Follow {
    Watch,
    Events,
}

/// Relative shares of the three kinds of order.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    normal: u32,
    insufficient: u32,
    declined: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Insufficient,
    Declined,
}

impl Mix {
    /// The kind of order number `i`: a deterministic interleaving that honours the shares.
    fn kind(&self, i: u64) -> Kind {
        let total = u64::from(self.normal + self.insufficient + self.declined);
        let slot = (i.wrapping_mul(2_654_435_761)) % total;
        if slot < u64::from(self.normal) {
            Kind::Normal
        } else if slot < u64::from(self.normal + self.insufficient) {
            Kind::Insufficient
        } else {
            Kind::Declined
        }
    }
}

fn parse_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 100_000.0 => Ok(r),
        _ => Err(format!(
            "{raw:?} is not a rate in orders per second between 0 and 100000 (e.g. 200)"
        )),
    }
}

fn parse_share(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(s) if (0.0..=1.0).contains(&s) => Ok(s),
        _ => Err(format!("{raw:?} is not a share between 0 and 1 (e.g. 0.1)")),
    }
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(raw)
        .map_err(|e| format!("{raw:?} is not a duration ({e}); write e.g. 30s, 2m, 500ms"))
}

fn parse_mix(raw: &str) -> Result<Mix, String> {
    let parts: Vec<Result<u32, _>> = raw.split(':').map(str::parse::<u32>).collect();
    match parts.as_slice() {
        [Ok(normal), Ok(insufficient), Ok(declined)] if normal + insufficient + declined > 0 => {
            Ok(Mix {
                normal: *normal,
                insufficient: *insufficient,
                declined: *declined,
            })
        }
        _ => Err(format!(
            "{raw:?} is not NORMAL:INSUFFICIENT:DECLINED shares such as 90:5:5"
        )),
    }
}

/// What the run saw. Latencies in microseconds.
struct Stats {
    create: Histogram<u64>,
    end_to_end: Histogram<u64>,
    sent: u64,
    created: u64,
    confirmed: u64,
    cancelled: u64,
    failed: u64,
    expected_outcome: u64,
    refused_in_flight: u64,
    unfinished: u64,
    errors: BTreeMap<String, u64>,
    in_flight: usize,
}

impl Stats {
    fn new() -> anyhow::Result<Stats> {
        let histogram =
            || Histogram::new_with_bounds(1, 3_600_000_000, 3).context("histogram bounds");
        Ok(Stats {
            create: histogram()?,
            end_to_end: histogram()?,
            sent: 0,
            created: 0,
            confirmed: 0,
            cancelled: 0,
            failed: 0,
            expected_outcome: 0,
            refused_in_flight: 0,
            unfinished: 0,
            errors: BTreeMap::new(),
            in_flight: 0,
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    if !args.no_seed {
        let mut inventory = args.endpoints.inventory()?;
        for i in 0..args.skus {
            let sku = format!("LOAD-{i}");
            inventory
                .upsert_item(UpsertItemRequest {
                    sku: sku.clone(),
                    name: sku,
                    available: MAX_STOCK,
                })
                .await
                .map_err(|s| {
                    super::output::call_error("inventory", &args.endpoints.inventory_endpoint, s)
                })?;
        }
        inventory
            .upsert_item(UpsertItemRequest {
                sku: "LOAD-SCARCE".into(),
                name: "never in stock".into(),
                available: 0,
            })
            .await
            .map_err(|s| {
                super::output::call_error("inventory", &args.endpoints.inventory_endpoint, s)
            })?;
    }
    let outcomes = match args.follow {
        Follow::Events => Some(Arc::new(
            outcomes::Outcomes::subscribe(&args.nats.nats_url, &args.nats.namespace).await?,
        )),
        Follow::Watch => None,
    };
    // A few HTTP/2 connections, so one connection's stream limit is not the bottleneck.
    let clients: Vec<_> = (0..4)
        .map(|_| args.endpoints.order())
        .collect::<Result<_, _>>()?;
    let stats = Arc::new(Mutex::new(Stats::new()?));
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    let measured_from = start + args.warmup;
    let stop_at = measured_from + args.duration;
    let progress = progress_bar(args.json);
    let tasks = tokio_util::task::TaskTracker::new();
    let ticker = {
        let stats = stats.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Ok(s) = stats.lock() {
                    let elapsed = start.elapsed().as_secs_f64().max(0.001);
                    let p99 = s.end_to_end.value_at_quantile(0.99) as f64 / 1000.0;
                    progress.set_message(format!(
                        "sent {} ({:.0}/s) | in flight {} | confirmed {} | cancelled {} | errors {} | p99 e2e {p99:.0} ms",
                        s.sent,
                        s.sent as f64 / elapsed,
                        s.in_flight,
                        s.confirmed,
                        s.cancelled,
                        s.errors.values().sum::<u64>() + s.refused_in_flight,
                    ));
                }
            }
        })
    };

    let mut measured_sent = 0u64;
    for i in 0u64.. {
        let scheduled = start + interval.mul_f64(i as f64);
        if scheduled >= stop_at || args.count.is_some_and(|c| measured_sent >= c) {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let measured = scheduled >= measured_from;
        measured_sent += u64::from(measured);
        {
            let mut s = stats
                .lock()
                .map_err(|_| anyhow::anyhow!("stats lock poisoned"))?;
            if s.in_flight >= args.max_in_flight {
                if measured {
                    s.refused_in_flight += 1;
                }
                continue;
            }
            s.in_flight += 1;
            if measured {
                s.sent += 1;
            }
        }
        let kind = args.mix.kind(i);
        let request = order_request(i, kind, &args);
        let v2 = (i as f64 * 0.618_033_988_7).fract() < args.v2_share;
        let mut client = clients[(i % clients.len() as u64) as usize].clone();
        let stats = stats.clone();
        let outcomes = outcomes.clone();
        tasks.spawn(async move {
            let mut request = tonic::Request::new(request);
            if v2 {
                request
                    .metadata_mut()
                    .insert("x-version", MetadataValue::from_static("v2"));
            }
            let outcome = async {
                let created = client
                    .create_order(request)
                    .await?
                    .into_inner()
                    .order
                    .unwrap_or_default();
                let create_latency = scheduled.elapsed();
                if measured && let Ok(mut s) = stats.lock() {
                    s.created += 1;
                    let _ = s.create.record(micros(create_latency));
                }
                let last = OrderStatus::try_from(created.status).unwrap_or_default();
                match &outcomes {
                    _ if last.is_terminal() => Ok(last),
                    Some(outcomes) => outcome_of(outcomes, &created.order_id).await,
                    None => watch_until_terminal(&mut client, created.order_id, last).await,
                }
            }
            .await;
            let Ok(mut s) = stats.lock() else { return };
            s.in_flight -= 1;
            if !measured {
                return;
            }
            match outcome {
                Ok(status) => {
                    let _ = s.end_to_end.record(micros(scheduled.elapsed()));
                    match status {
                        OrderStatus::Confirmed => s.confirmed += 1,
                        OrderStatus::Cancelled => s.cancelled += 1,
                        _ => s.failed += 1,
                    }
                    let expected = match kind {
                        Kind::Normal => OrderStatus::Confirmed,
                        Kind::Insufficient | Kind::Declined => OrderStatus::Cancelled,
                    };
                    if status == expected {
                        s.expected_outcome += 1;
                    }
                }
                Err(status) => *s.errors.entry(code_name(status.code())).or_default() += 1,
            }
        });
    }
    let sending_took = start.elapsed().saturating_sub(args.warmup);
    tasks.close();
    if tokio::time::timeout(args.drain, tasks.wait())
        .await
        .is_err()
    {
        let mut s = stats
            .lock()
            .map_err(|_| anyhow::anyhow!("stats lock poisoned"))?;
        s.unfinished = s.in_flight as u64;
    }
    ticker.abort();
    progress.finish_and_clear();
    let s = stats
        .lock()
        .map_err(|_| anyhow::anyhow!("stats lock poisoned"))?;
    report(&args, &s, sending_took);
    Ok(())
}

/// Follows the order through WatchOrder until it is terminal. A watch ends at the server's
/// maximum request duration with DEADLINE_EXCEEDED when the order is not final yet: watch again
/// (bounded by --drain).
async fn watch_until_terminal(
    client: &mut OrderServiceClient<super::Traced>,
    order_id: String,
    mut last: OrderStatus,
) -> Result<OrderStatus, tonic::Status> {
    while !last.is_terminal() {
        let mut watch = client
            .watch_order(WatchOrderRequest {
                order_id: order_id.clone(),
            })
            .await?
            .into_inner();
        loop {
            match watch.message().await {
                Ok(Some(update)) => {
                    if let Some(o) = update.order {
                        last = o.status();
                    }
                }
                Ok(None) => break,
                Err(status) if status.code() == Code::DeadlineExceeded => break,
                Err(status) => return Err(status),
            }
        }
    }
    Ok(last)
}

/// Waits for the order's outcome event.
async fn outcome_of(
    outcomes: &outcomes::Outcomes,
    order_id: &str,
) -> Result<OrderStatus, tonic::Status> {
    let id = uuid::Uuid::parse_str(order_id).map_err(|_| {
        tonic::Status::internal(format!(
            "CreateOrder answered an order id {order_id:?} that is not a UUID"
        ))
    })?;
    match outcomes.wait(id).await {
        Some(OutcomeKind::Confirmed) => Ok(OrderStatus::Confirmed),
        Some(OutcomeKind::Cancelled) => Ok(OrderStatus::Cancelled),
        None => Err(tonic::Status::unavailable(
            "the subscription to the outcome events ended",
        )),
    }
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}

fn progress_bar(quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn order_request(i: u64, kind: Kind, args: &LoadArgs) -> CreateOrderRequest {
    let sku = match kind {
        Kind::Insufficient => "LOAD-SCARCE".to_string(),
        _ => format!("LOAD-{}", i % u64::from(args.skus)),
    };
    CreateOrderRequest {
        request_id: String::new(),
        customer_id: format!("load-customer-{}", i % u64::from(args.customers)),
        lines: vec![OrderLine {
            sku,
            quantity: 1,
            unit_price: Some(Money {
                currency_code: "USD".into(),
                amount_minor: 1_999,
            }),
        }],
        shipping_address: Some(Address {
            recipient_name: "Load Test".into(),
            line1: "1 Benchmark Way".into(),
            city: "Loadville".into(),
            postal_code: "00000".into(),
            country_code: "US".into(),
            ..Default::default()
        }),
        shipping_method: 0,
        payment_token: if kind == Kind::Declined {
            "declined_token".into()
        } else {
            "tok_visa".into()
        },
    }
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(0.50), "p90_ms": ms(0.90), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
        "max_ms": h.max() as f64 / 1000.0,
    })
}

fn report(args: &LoadArgs, s: &Stats, sending_took: Duration) {
    let seconds = sending_took.as_secs_f64().max(0.001);
    let finished = s.confirmed + s.cancelled + s.failed;
    let attempted = s.sent + s.refused_in_flight;
    let success = if attempted == 0 {
        0.0
    } else {
        s.expected_outcome as f64 / attempted as f64
    };
    let result = json!({
        "offered_rate": args.rate,
        "follow": clap::ValueEnum::to_possible_value(&args.follow).map(|v| v.get_name().to_string()),
        "duration_s": seconds,
        "sent": s.sent,
        "created": s.created,
        "throughput_per_s": finished as f64 / seconds,
        "confirmed": s.confirmed,
        "cancelled": s.cancelled,
        "failed": s.failed,
        "expected_outcome": s.expected_outcome,
        "success_ratio": success,
        "refused_in_flight": s.refused_in_flight,
        "unfinished": s.unfinished,
        "errors": s.errors,
        "create_latency": percentiles(&s.create),
        "end_to_end_latency": percentiles(&s.end_to_end),
    });
    if args.json {
        println!("{result}");
        return;
    }
    println!(
        "offered      {:.1} orders/s for {seconds:.1} s (open loop)",
        args.rate
    );
    println!(
        "sent         {}   created {}   refused (in-flight cap) {}",
        s.sent, s.created, s.refused_in_flight
    );
    println!(
        "finished     {finished} ({:.1}/s): confirmed {}, cancelled {}, failed {}, unfinished {}",
        finished as f64 / seconds,
        s.confirmed,
        s.cancelled,
        s.failed,
        s.unfinished
    );
    println!(
        "success      {:.2}% ended as their kind expects (normal → CONFIRMED, others → CANCELLED)",
        success * 100.0
    );
    println!(
        "\n  {:<16} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, h) in [("CreateOrder", &s.create), ("end to end", &s.end_to_end)] {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "  {:<16} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            name,
            h.len(),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0
        );
    }
    if !s.errors.is_empty() {
        println!("\nerrors by gRPC code:");
        for (code, n) in &s.errors {
            println!("  {code:<20} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_honours_its_shares() {
        let mix = parse_mix("90:5:5").expect("mix");
        let kinds: Vec<Kind> = (0..1000).map(|i| mix.kind(i)).collect();
        let count = |k| kinds.iter().filter(|x| **x == k).count();
        assert_eq!(
            (
                count(Kind::Normal),
                count(Kind::Insufficient),
                count(Kind::Declined)
            ),
            (900, 50, 50)
        );
    }

    #[test]
    fn bad_arguments_say_what_to_write() {
        assert!(parse_mix("90:5").is_err());
        assert!(parse_mix("0:0:0").is_err());
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_share("1.5").is_err());
        assert!(parse_duration("soon").expect_err("bad").contains("30s"));
    }
}
