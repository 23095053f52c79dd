//! The saga's calls, one file per callee: how each step's request is built from the order and
//! how its answer is classified. Every call carries the idempotency key `<order_id>:<step>`, so
//! a repeat (a retry, a resume after a crash) gets the stored answer instead of a second effect.

mod inventory;
mod payment;
mod shipping;

use ordermesh::{
    client::Propagate,
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        payment::payment_service_client::PaymentServiceClient,
        shipping::shipping_service_client::ShippingServiceClient,
    },
    resilience::Policy,
};
use tonic::{Code, Status, service::interceptor::InterceptedService, transport::Channel};

use super::{definition::Step, journal::Snapshot};
use crate::model::OrderEvent;

type Traced = InterceptedService<Channel, Propagate>;

/// How a call ended, as the saga sees it.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per call
pub enum Answer {
    /// Done; the event it produced, if any.
    Done(Option<OrderEvent>),
    /// A definitive no to a forward step (out of stock, declined): nothing happened.
    Refused(String),
    /// Anything that may go better later: unavailable, timed out, overloaded — and for a
    /// compensation, every error (see [`undone`]).
    Failed(String),
}

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
    /// Calls `step` for the saga in `seen` (in the call context the runner set up).
    pub async fn call(&self, step: Step, seen: &Snapshot) -> Answer {
        let key = format!("{}:{}", seen.saga.order_id, step.name());
        let reason = seen.saga.failure_reason.as_str();
        match step {
            Step::ReserveInventory => inventory::reserve(self, key, &seen.order).await,
            Step::ProcessPayment => {
                payment::charge(self, key, &seen.order, seen.saga.payment_token.as_deref()).await
            }
            Step::CreateShippingLabel => shipping::create_label(self, key, &seen.order).await,
            Step::ConfirmOrder => inventory::commit(self, key, &seen.order).await,
            Step::ReleaseInventory => inventory::release(self, key, &seen.order, reason).await,
            Step::RefundPayment => payment::refund(self, key, &seen.order, reason).await,
            Step::CancelLabel => shipping::cancel_label(self, key, &seen.order, reason).await,
        }
    }

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
pub(crate) use call;

/// Why a forward step's call did not return a response.
#[derive(Debug, PartialEq)]
enum NoResponse {
    Refused(String),
    Failed(String),
}

impl From<NoResponse> for Answer {
    fn from(no: NoResponse) -> Answer {
        match no {
            NoResponse::Refused(reason) => Answer::Refused(reason),
            NoResponse::Failed(error) => Answer::Failed(error),
        }
    }
}

/// A forward step's answer: `Ok(response)`, or how its error counts. Codes that say the request
/// itself cannot succeed (invalid, refused, not found, ...) are a definitive no; everything else
/// may succeed later.
fn forward<T>(result: Result<tonic::Response<T>, Status>) -> Result<T, NoResponse> {
    match result {
        Ok(response) => Ok(response.into_inner()),
        Err(status) => Err(match status.code() {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::OutOfRange
            | Code::Unimplemented => NoResponse::Refused(status.message().to_string()),
            _ => NoResponse::Failed(describe(&status)),
        }),
    }
}

/// A compensation's answer. Compensations are idempotent and always possible (undoing what never
/// happened leaves a tombstone that refuses a late effect), so no error means "nothing to undo":
/// INVALID_ARGUMENT, PERMISSION_DENIED, UNIMPLEMENTED (an RBAC or routing glitch in a mesh) or a
/// key reused for another request are faults like any other — retried until the compensation's
/// deadline, then the saga ends FAILED with a dead letter for `ordermesh dlq redrive`.
fn undone<T>(result: Result<tonic::Response<T>, Status>) -> Answer {
    match result {
        Ok(_) => Answer::Done(None),
        Err(status) => failed(&status),
    }
}

fn failed(status: &Status) -> Answer {
    Answer::Failed(describe(status))
}

fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compensation_never_takes_an_error_for_nothing_to_undo() {
        for code in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::FailedPrecondition,
            Code::Unavailable,
        ] {
            let answer = undone::<()>(Err(Status::new(code, "no")));
            assert!(matches!(answer, Answer::Failed(_)), "{code:?}: {answer:?}");
        }
    }

    #[test]
    fn a_forward_step_is_refused_only_by_codes_that_retrying_cannot_change() {
        let refused = forward::<()>(Err(Status::failed_precondition("declined")));
        assert_eq!(refused, Err(NoResponse::Refused("declined".into())));
        let transient = forward::<()>(Err(Status::unavailable("down")));
        assert!(matches!(transient, Err(NoResponse::Failed(_))));
    }
}
