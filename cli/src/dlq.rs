//! `ordermesh dlq list|show|redrive`: the dead-letter stream, where the saga keeps messages it
//! could not process (with payload, headers, original subject, delivery count and last error),
//! and re-injects them once the cause is fixed. Redrive is idempotent: the message leaves the
//! dead-letter stream, goes back with a `Nats-Msg-Id` derived from its sequence (JetStream drops
//! a repeat), and the saga ignores a step it has already moved past.

use anyhow::Context;
use async_nats::jetstream::{self, message::StreamMessage};
use clap::Subcommand;

use super::NatsTarget;
use ordermesh::events::dead_letter::{DELIVERY_COUNT, LAST_ERROR, ORIGINAL_SUBJECT};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter: sequence, time, order, deliveries, error.
    List {
        #[command(flatten)]
        target: NatsTarget,
    },
    /// Everything about one dead letter, payload included.
    Show {
        /// Sequence number from `dlq list`.
        sequence: u64,
        #[command(flatten)]
        target: NatsTarget,
    },
    /// Send dead letters back to their original subject (after fixing the cause).
    Redrive {
        /// Sequence numbers from `dlq list`.
        sequences: Vec<u64>,
        /// Redrive every dead letter.
        #[arg(long, conflicts_with = "sequences")]
        all: bool,
        #[command(flatten)]
        target: NatsTarget,
    },
}

pub async fn run(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { target } => {
            let (_, stream) = open(&target).await?;
            let letters = all(&stream).await?;
            if letters.is_empty() {
                println!("no dead letters in {}", stream_name(&target));
            }
            for m in letters {
                println!(
                    "{:>6}  {}  order {}  deliveries {}  {}  ({})",
                    m.sequence,
                    m.time,
                    order_id(&m).unwrap_or_else(|| "-".into()),
                    header(&m, DELIVERY_COUNT),
                    header(&m, LAST_ERROR),
                    header(&m, ORIGINAL_SUBJECT),
                );
            }
        }
        DlqCommand::Show { sequence, target } => {
            let (_, stream) = open(&target).await?;
            let m = stream.get_raw_message(sequence).await.with_context(|| {
                format!("no dead letter with sequence {sequence} (see `ordermesh dlq list`)")
            })?;
            println!(
                "sequence  {}\ntime      {}\nsubject   {}",
                m.sequence,
                m.time,
                header(&m, ORIGINAL_SUBJECT)
            );
            for (name, values) in m.headers.iter() {
                for value in values {
                    println!("header    {name}: {value}");
                }
            }
            println!("payload   {}", String::from_utf8_lossy(&m.payload));
        }
        DlqCommand::Redrive {
            sequences,
            all: every,
            target,
        } => {
            let (js, stream) = open(&target).await?;
            let letters = if every {
                all(&stream).await?
            } else {
                anyhow::ensure!(
                    !sequences.is_empty(),
                    "name the sequences to redrive (from `ordermesh dlq list`) or pass --all"
                );
                let mut found = Vec::new();
                for sequence in sequences {
                    match stream.get_raw_message(sequence).await {
                        Ok(m) => found.push(m),
                        Err(_) => println!(
                            "{sequence}: not in the dead-letter stream (already redriven?)"
                        ),
                    }
                }
                found
            };
            for m in letters {
                let subject = header(&m, ORIGINAL_SUBJECT);
                anyhow::ensure!(
                    subject != "-",
                    "dead letter {} has no {ORIGINAL_SUBJECT} header",
                    m.sequence
                );
                let mut headers = async_nats::HeaderMap::new();
                for (name, values) in m.headers.iter() {
                    let name: &str = name.as_ref();
                    if !name.starts_with("Ordermesh-") && name != "Nats-Msg-Id" {
                        for value in values {
                            headers.append(name, value.as_str());
                        }
                    }
                }
                headers.insert(
                    "Nats-Msg-Id",
                    format!("redrive-{}-{}", stream_name(&target), m.sequence).as_str(),
                );
                js.publish_with_headers(subject.clone(), headers, m.payload.clone())
                    .await
                    .with_context(|| format!("redriving {}", m.sequence))?
                    .await
                    .with_context(|| format!("redriving {}", m.sequence))?;
                stream
                    .delete_message(m.sequence)
                    .await
                    .with_context(|| format!("removing {} after redrive", m.sequence))?;
                println!("{}: redriven to {subject}", m.sequence);
            }
        }
    }
    Ok(())
}

fn stream_name(target: &NatsTarget) -> String {
    format!("{}_DEAD_LETTERS", target.namespace.to_uppercase())
}

async fn open(
    target: &NatsTarget,
) -> anyhow::Result<(jetstream::Context, jetstream::stream::Stream)> {
    let client = async_nats::connect(ordermesh::config::nats_servers(&target.nats_url)?)
        .await
        .with_context(|| {
            format!(
                "cannot reach NATS at {} (--nats-url / ORDERMESH_NATS__URL)",
                target.nats_url
            )
        })?;
    let js = jetstream::new(client);
    let name = stream_name(target);
    let stream = js.get_stream(&name).await.with_context(|| {
        format!("no stream {name}: is --namespace right, and has the order service started once?")
    })?;
    Ok((js, stream))
}

async fn all(stream: &jetstream::stream::Stream) -> anyhow::Result<Vec<StreamMessage>> {
    let mut stream = stream.clone();
    let state = stream
        .info()
        .await
        .context("reading the dead-letter stream")?
        .state
        .clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(sequence).await {
            out.push(m);
        }
    }
    Ok(out)
}

fn header(m: &StreamMessage, name: &str) -> String {
    m.headers
        .get(name)
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

/// The order a saga message is about, when its payload is readable.
fn order_id(m: &StreamMessage) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
    value.get("order_id")?.as_str().map(str::to_string)
}
