//! The mesh's call policy, in-process. What `istio/` declares for the sidecars — retries on
//! idempotency-safe codes within a retry budget, a per-try timeout, and the connection-pool
//! circuit breaker (a cap on calls in flight, refused at once beyond it) — applied by the caller
//! when no sidecar does it. With `ORDERMESH_MESH=istio` every call is a single attempt with no
//! local limits, so retries never stack with Envoy's (3 × 3 = 9 attempts on a bad day). The
//! overall deadline is [`crate::client::Propagate`]'s either way.
//!
//! Outlier detection (ejecting one failing instance) is not imitated: it needs to know which
//! instance answered, which a balanced tonic channel does not tell, and ejecting the whole
//! upstream would refuse every call — where Envoy, with all hosts ejected, falls back to "panic
//! mode" and keeps sending. A dead upstream is handled by the saga's own backoff instead.
//!
//! The numbers below are the ones in `istio/base/*.yaml`; a test keeps the two in step.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::Semaphore;
use tonic::{Code, Status};
use tower::retry::budget::{Budget, TpsBudget};

use crate::config::MeshMode;

/// VirtualService `retries.attempts`: tries per call, the first included.
pub const ATTEMPTS: u32 = 3;
/// VirtualService `retries.perTryTimeout`.
pub const PER_TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// DestinationRule `connectionPool.http.http2MaxRequests`: calls in flight to one upstream.
pub const MAX_CONCURRENT: usize = 1000;
/// Retries may add at most this share of the calls of the last 10 s (plus [`MIN_RETRIES_PER_SEC`]),
/// so a struggling upstream is not buried under retries: the retry budget.
pub const RETRY_PERCENT: f32 = 0.2;
pub const MIN_RETRIES_PER_SEC: u32 = 10;
/// First backoff before a retry (Envoy's default base interval), doubled per retry, jittered.
const BACKOFF: Duration = Duration::from_millis(25);

/// The codes `retryOn` lists (`unavailable`, `resource-exhausted`; connect failures and refused
/// streams surface as UNAVAILABLE in tonic). Safe because every callee is idempotent by key.
pub fn is_retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted)
}

/// A call that failed because its connection broke (`reset` in `retryOn`): tonic reports it as
/// UNKNOWN with the transport error as source. The request may have run, so this is retried
/// only because every callee is idempotent by key.
pub fn is_reset(status: &Status) -> bool {
    std::error::Error::source(status)
        .is_some_and(|source| source.downcast_ref::<tonic::transport::Error>().is_some())
}

/// The policy for calls to one upstream (`callee` names it in errors and metrics).
#[derive(Clone)]
pub struct Policy {
    callee: &'static str,
    local: Option<Arc<Local>>,
}

/// State that exists only when the policy is applied in-process.
struct Local {
    budget: TpsBudget,
    limit: Semaphore,
}

impl Policy {
    pub fn new(callee: &'static str, mesh: MeshMode) -> Policy {
        let local = (mesh == MeshMode::Local).then(|| {
            Arc::new(Local {
                budget: TpsBudget::new(Duration::from_secs(10), MIN_RETRIES_PER_SEC, RETRY_PERCENT),
                limit: Semaphore::new(MAX_CONCURRENT),
            })
        });
        for reason in ["retry", "concurrency", "budget_exhausted"] {
            crate::metrics::CLIENT_EVENTS.with_label_values(&[callee, reason]);
        }
        Policy { callee, local }
    }

    /// Runs `attempt` under the policy: each try bounded by the per-try timeout, retryable
    /// failures retried with backoff while attempts and the budget last, refused at once while
    /// too many calls are in flight.
    pub async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let Some(local) = &self.local else {
            return attempt().await;
        };
        let event = |reason: &str| {
            crate::metrics::CLIENT_EVENTS
                .with_label_values(&[self.callee, reason])
                .inc()
        };
        let Ok(_permit) = local.limit.try_acquire() else {
            event("concurrency");
            return Err(Status::resource_exhausted(format!(
                "{MAX_CONCURRENT} calls to {} already in flight",
                self.callee
            )));
        };
        local.budget.deposit();
        let mut tries = 0;
        loop {
            tries += 1;
            let result = match tokio::time::timeout(PER_TRY_TIMEOUT, attempt()).await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "{} did not answer within the per-try timeout of {PER_TRY_TIMEOUT:?}",
                    self.callee
                ))),
            };
            let retry = match &result {
                Err(status)
                    if (is_retryable(status.code()) || is_reset(status)) && tries < ATTEMPTS =>
                {
                    if local.budget.withdraw() {
                        true
                    } else {
                        event("budget_exhausted");
                        false
                    }
                }
                _ => false,
            };
            if !retry {
                return result;
            }
            event("retry");
            let backoff = BACKOFF * 2u32.pow(tries - 1);
            tokio::time::sleep(backoff / 2 + backoff.mul_f64(fastrand::f64() / 2.0)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    async fn counted(policy: &Policy, codes: &[Code]) -> (Result<(), Status>, usize) {
        let calls = AtomicUsize::new(0);
        let result = policy
            .run(|| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let code = codes.get(n).copied().unwrap_or(Code::Ok);
                async move {
                    match code {
                        Code::Ok => Ok(()),
                        code => Err(Status::new(code, "injected")),
                    }
                }
            })
            .await;
        (result, calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn unavailable_is_retried_up_to_the_attempt_limit_and_other_codes_are_not() {
        let policy = Policy::new("test-retry", MeshMode::Local);
        let (result, calls) = counted(&policy, &[Code::Unavailable, Code::Ok]).await;
        assert!(result.is_ok());
        assert_eq!(calls, 2);
        let (result, calls) = counted(&policy, &[Code::Unavailable; 5]).await;
        assert_eq!(result.map_err(|s| s.code()), Err(Code::Unavailable));
        assert_eq!(calls, ATTEMPTS as usize);
        let (result, calls) = counted(&policy, &[Code::Internal]).await;
        assert_eq!(result.map_err(|s| s.code()), Err(Code::Internal));
        assert_eq!(calls, 1, "INTERNAL may not be transient: not retried");
        let (_, calls) = counted(&policy, &[Code::FailedPrecondition]).await;
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn behind_istio_every_call_is_a_single_attempt() {
        let policy = Policy::new("test-istio", MeshMode::Istio);
        let (result, calls) = counted(&policy, &[Code::Unavailable; 5]).await;
        assert_eq!(result.map_err(|s| s.code()), Err(Code::Unavailable));
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn beyond_the_concurrency_limit_calls_are_refused_at_once() {
        let policy = Policy::new("test-limit", MeshMode::Local);
        let held: Vec<_> = (0..MAX_CONCURRENT)
            .map(|_| {
                policy
                    .local
                    .as_ref()
                    .and_then(|l| l.limit.try_acquire().ok())
                    .expect("permit")
            })
            .collect();
        let (result, calls) = counted(&policy, &[]).await;
        assert_eq!(calls, 0, "refused without calling");
        assert_eq!(result.map_err(|s| s.code()), Err(Code::ResourceExhausted));
        drop(held);
        let (result, calls) = counted(&policy, &[]).await;
        assert!(result.is_ok());
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn the_retry_budget_caps_retries_when_everything_fails() {
        let policy = Policy::new("test-budget", MeshMode::Local);
        let mut retries = 0;
        // 200 calls that each fail with RESOURCE_EXHAUSTED: without a budget that would be 400 retries; the budget allows ~20% plus 10/s for 10 s.
        for _ in 0..200 {
            let (_, calls) = counted(&policy, &[Code::ResourceExhausted; 3]).await;
            retries += calls - 1;
        }
        assert!(retries < 200, "{retries} retries");
        assert!(retries >= 40, "the budget still allows some: {retries}");
    }
}
