//! Human-readable rendering of gRPC results and errors for the CLI.

use ordermesh::validation::field_violations;

pub use ordermesh::display::{money, timestamp};

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
