//! The error boundary between a service's domain and gRPC. Stores, the idempotency store and
//! the saga's persistence return [`Error`], named in the domain's words; the one
//! `From<Error> for Status` below is the only place a gRPC code is chosen for them, so a
//! caller's retry policy (Istio retries `unavailable` and the saga retries `aborted`, see
//! DESIGN rule 5) depends on one table, not on two dozen call sites.
//!
//! Input validation stays at the API edge (`validation`), where a `Status` with field details
//! is the product; this type is for what happens after the input was accepted.

use tonic::Status;

/// What went wrong after a request was accepted. Every variant says whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thing asked for does not exist (an unknown order, reservation or payment). Retrying
    /// the same request gives the same answer.
    #[error("{0}")]
    NotFound(String),
    /// The state of what the request acts on refuses it: the order already has a label, its
    /// payment is blocked. Retrying gives the same answer; a different request may not.
    #[error("{0}")]
    Conflict(String),
    /// As [`Error::Conflict`], naming the state that refused (`kind`, e.g. `PAYMENT_CURRENCY`)
    /// and what it belongs to, for a `google.rpc.PreconditionFailure` a client can act on.
    #[error("{description}")]
    Refused {
        kind: &'static str,
        subject: String,
        description: String,
    },
    /// An idempotency key came back with a different request: a client bug, never a retry.
    #[error("idempotency key {0:?} was already used for a different request")]
    KeyReused(String),
    /// A concurrent change got there first and nothing happened here: retrying is safe and
    /// sees how the other one ended.
    #[error("{0}")]
    Contended(&'static str),
    /// A dependency (NATS, a peer service) cannot be reached now; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// PostgreSQL said no. Lost connections become UNAVAILABLE, serialisation failures,
    /// deadlocks and unique violations from a concurrent insert ABORTED, anything else
    /// INTERNAL; the database's words go to the log, never to the caller.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Something this service wrote cannot be read back as it was written: a bug or a
    /// corrupted row. Details are logged; the caller gets INTERNAL.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound(what.into())
    }

    pub fn conflict(what: impl Into<String>) -> Self {
        Error::Conflict(what.into())
    }

    pub fn internal(what: impl Into<String>) -> Self {
        Error::Internal(what.into())
    }
}

/// The message a caller sees for [`Error::Contended`] unless the store says more.
pub const CONTENDED: &str = "concurrent update conflict, retry";

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        match error {
            Error::NotFound(what) => Status::not_found(what),
            Error::Conflict(what) => Status::failed_precondition(what),
            // FAILED_PRECONDITION, not ALREADY_EXISTS: the call must not be retried as is, and
            // no retry policy in istio/ or the saga retries this code.
            Error::Refused {
                kind,
                subject,
                description,
            } => crate::validation::precondition_failed(kind, &subject, description),
            e @ Error::KeyReused(_) => Status::failed_precondition(e.to_string()),
            Error::Contended(what) => Status::aborted(what),
            Error::Unavailable(what) => Status::unavailable(what),
            Error::Database(e) => crate::db::status(e),
            Error::Internal(what) => {
                tracing::error!(error = %what, "internal error");
                Status::internal(what)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn each_error_has_the_code_its_retry_policy_expects() {
        let cases = [
            (Error::not_found("order x"), Code::NotFound),
            (Error::conflict("has a label"), Code::FailedPrecondition),
            (
                Error::Refused {
                    kind: "PAYMENT_CURRENCY",
                    subject: "o".into(),
                    description: "ask in EUR".into(),
                },
                Code::FailedPrecondition,
            ),
            (Error::KeyReused("k".into()), Code::FailedPrecondition),
            (Error::Contended(CONTENDED), Code::Aborted),
            (Error::Unavailable("nats".into()), Code::Unavailable),
            (
                Error::Database(sqlx::Error::PoolTimedOut),
                Code::Unavailable,
            ),
            (Error::Database(sqlx::Error::RowNotFound), Code::Internal),
            (Error::internal("unreadable"), Code::Internal),
        ];
        for (error, code) in cases {
            let shown = error.to_string();
            assert_eq!(Status::from(error).code(), code, "{shown}");
        }
    }

    #[test]
    fn a_database_error_shows_the_caller_nothing_of_the_database() {
        let status = Status::from(Error::Database(sqlx::Error::ColumnNotFound(
            "secret_column".into(),
        )));
        assert!(!status.message().contains("secret_column"), "{status:?}");
    }
}
