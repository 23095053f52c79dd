//! Human-readable rendering of gRPC results and errors for the CLI.

use ordermesh::{proto::common::Money, validation::field_violations};

/// "USD 19.99" for an amount, "-" when absent.
pub fn money(m: Option<&Money>) -> String {
    match m {
        Some(m) => format!(
            "{} {}.{:02}",
            m.currency_code,
            m.amount_minor / 100,
            m.amount_minor % 100
        ),
        None => "-".into(),
    }
}

/// "2026-11-29 07:50:00 UTC" for a timestamp, "-" when absent.
pub fn timestamp(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// An error for a failed call to `service` at `endpoint` that says what to fix.
pub fn call_error(service: &str, endpoint: &str, status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let violations = field_violations(&status);
    let message = match status.code() {
        Code::Unavailable => format!(
            "cannot reach the {service} service at {endpoint} ({}); is `ordermesh up` running, or is --{service}-endpoint right?",
            status.message()
        ),
        Code::InvalidArgument if !violations.is_empty() => {
            let lines: Vec<String> = violations
                .iter()
                .map(|(f, d)| format!("  {f}: {d}"))
                .collect();
            format!(
                "the {service} service rejected the request:\n{}",
                lines.join("\n")
            )
        }
        code => format!(
            "the {service} service answered {code:?}: {}",
            status.message()
        ),
    };
    anyhow::anyhow!(message)
}
