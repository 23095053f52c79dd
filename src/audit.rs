//! `GET /audit` on a service's admin port: the service's side of the mesh's invariants, read
//! from its own database by its own code. `ordermesh check` asks all five and joins the sides
//! (an order confirmed on the order service must hold a charge on the payment service, ...),
//! so no tool outside a service reads that service's schema.
//!
//! Internal, like `/metrics`: the admin port is not routed through the ingress Gateway.

use std::{future::Future, time::Duration};

use axum::{Json, Router, extract::Query, http::StatusCode, response::IntoResponse, routing::get};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Error, ready::Ready};

/// What one service says about the invariants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Side {
    /// `order`, `inventory`, ...
    pub service: String,
    /// Invariants this service keeps on its own, in one database.
    pub findings: Vec<Finding>,
    /// What this service holds for each order it knows.
    pub orders: Vec<OrderSide>,
}

/// One invariant's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    pub name: String,
    /// Holds at every instant (one transaction keeps it): a violation is never "not yet
    /// settled", and a caller waiting for the mesh to settle must not wait on it.
    pub always: bool,
    /// The offending ids, each with what is wrong.
    pub offenders: Vec<String>,
}

impl Finding {
    /// An invariant one transaction keeps: it holds at every instant (the `always` field).
    pub fn always(name: &str, offenders: Vec<String>) -> Finding {
        Finding::new(name, true, offenders)
    }

    /// An invariant across databases that move one after another: it may lag for a moment.
    pub fn lagging(name: &str, offenders: Vec<String>) -> Finding {
        Finding::new(name, false, offenders)
    }

    fn new(name: &str, always: bool, offenders: Vec<String>) -> Finding {
        Finding {
            name: name.to_string(),
            always,
            offenders,
        }
    }
}

/// One order as one service sees it. Fields a service has nothing for stay at their defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OrderSide {
    pub order_id: Uuid,
    /// The order's state there: its status (order), its reservation's (inventory), its
    /// payment's (payment), its label's (shipping); empty at the notification service.
    #[serde(default)]
    pub state: String,
    /// Order service: older than the `settle` the caller asked for.
    #[serde(default)]
    pub settled: bool,
    /// Payments (payment) or notifications (notification) recorded for the order.
    #[serde(default)]
    pub count: i64,
    /// Payment service: charged and refunded amounts.
    #[serde(default)]
    pub amount_minor: i64,
    #[serde(default)]
    pub refunded_minor: i64,
}

/// `?settle=600`: seconds after which an order should have finished.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    settle: u64,
}

/// The `/audit` route: `side(deps, settle)` on each request, once start-up has set `deps` (the
/// service's pool, or what its handlers share).
pub fn router<T, F, Fut>(deps: Ready<T>, side: F) -> Router
where
    T: Clone + Send + Sync + 'static,
    F: Fn(T, Duration) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Side, Error>> + Send + 'static,
{
    Router::new().route(
        "/audit",
        get(move |Query(query): Query<AuditQuery>| async move {
            let Ok(deps) = deps.get() else {
                return (StatusCode::SERVICE_UNAVAILABLE, "starting: not ready\n").into_response();
            };
            match side(deps.clone(), Duration::from_secs(query.settle)).await {
                Ok(side) => Json(side).into_response(),
                Err(error) => {
                    let status = tonic::Status::from(error);
                    let code = if status.code() == tonic::Code::Unavailable {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    };
                    (code, format!("{}\n", status.message())).into_response()
                }
            }
        }),
    )
}

/// A stored enum value as [`OrderSide::state`] carries it: the proto value name without its
/// type's prefix, upper case (`ORDER_STATUS_CONFIRMED` and `confirmed` both read `CONFIRMED`).
pub fn state(stored: &str, prefix: &str) -> String {
    stored.trim_start_matches(prefix).to_uppercase()
}
