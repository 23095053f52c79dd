//! The saga explorer: read-only HTML pages on the order service's admin port, for an operator
//! who wants to *see* which orders are where and why — the list of orders with live counts,
//! one order's saga (timeline, state diagram with its path, dead letter), and the sagas that
//! need attention. Internal like `/metrics`: the admin port is never routed through the
//! ingress Gateway. Everything is compiled into the binary; nothing is fetched at run time.
//!
//! Routes (see [`routes`]): `/ui` (orders), `/ui/orders/{id}`, `/ui/attention`, and the
//! server-sent event streams under `/ui/live/` that keep each of them current (the first two
//! fed by the same change signals as WatchOrder, Attention re-read every few seconds).

mod diagram;
mod live;
mod page;
mod query;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use maud::Markup;
use ordermesh::{
    proto::{
        common::PageRequest,
        order::{ListOrdersRequest, OrderStatus},
    },
    ready::Ready,
    validation::field_violations,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Deps, validate};

/// What the explorer's handlers share.
#[derive(Clone)]
pub struct Explorer {
    deps: Ready<Deps>,
    counts: query::CountsCache,
    /// The mesh's namespace, for the `ordermesh dlq` commands the pages show.
    namespace: String,
    /// Live streams end when the service shuts down (the admin port drains after them).
    shutdown: CancellationToken,
    /// How long one live stream may stay open; the browser reconnects after it.
    max_stream: Duration,
    /// Permits for open live streams ([`live::MAX_STREAMS`]).
    streams: Arc<Semaphore>,
}

impl Explorer {
    pub fn new(
        deps: Ready<Deps>,
        namespace: &str,
        shutdown: CancellationToken,
        max_stream: Duration,
    ) -> Explorer {
        Explorer {
            deps,
            counts: query::CountsCache::default(),
            namespace: namespace.to_string(),
            shutdown,
            max_stream,
            streams: Arc::new(Semaphore::new(live::MAX_STREAMS)),
        }
    }
}

/// The pages (answered at once, under the admin port's request timeout) and the live streams
/// (open for minutes, so outside it).
pub fn routes(explorer: Explorer) -> (Router, Router) {
    let pages = Router::new()
        .route("/ui", get(orders_page))
        .route("/ui/", get(orders_page))
        .route("/ui/orders/{order_id}", get(order_page))
        .route("/ui/attention", get(attention_page))
        .route("/ui/assets/explorer.css", get(stylesheet))
        .route("/ui/assets/explorer.js", get(script))
        .route("/ui/{*rest}", get(not_found))
        .with_state(explorer.clone());
    let streams = Router::new()
        .route("/ui/live/orders", get(live::orders))
        .route("/ui/live/orders/{order_id}", get(live::order))
        .route("/ui/live/attention", get(live::attention))
        .with_state(explorer);
    let secure = axum::middleware::map_response(security_headers);
    (pages.layer(secure.clone()), streams.layer(secure))
}

/// The pages load only their own stylesheet and script: no inline script can run even if
/// something escaped the templates.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/explorer.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/explorer.js"),
    )
}

/// Why a page could not be shown; each becomes a page with its HTTP status.
#[derive(Debug)]
pub enum Problem {
    /// The request is malformed: field by field what to fix (400).
    BadRequest(Vec<(String, String)>),
    NotFound(String),
    /// The service is starting or a dependency is down (503).
    Unavailable(String),
    /// Anything else (500); the page says nothing of the cause, the log does.
    Internal,
}

impl From<ordermesh::Error> for Problem {
    fn from(error: ordermesh::Error) -> Problem {
        match error {
            ordermesh::Error::NotFound(what) => Problem::NotFound(what),
            ordermesh::Error::Unavailable(why) => Problem::Unavailable(why),
            error => {
                let status = tonic::Status::from(error);
                if status.code() == tonic::Code::Unavailable {
                    Problem::Unavailable(status.message().to_string())
                } else {
                    tracing::warn!(error = %status.message(), "explorer page failed");
                    Problem::Internal
                }
            }
        }
    }
}

impl From<tonic::Status> for Problem {
    fn from(status: tonic::Status) -> Problem {
        match status.code() {
            tonic::Code::InvalidArgument => Problem::BadRequest(field_violations(&status)),
            tonic::Code::Unavailable => Problem::Unavailable(status.message().to_string()),
            tonic::Code::NotFound => Problem::NotFound(status.message().to_string()),
            _ => {
                tracing::warn!(error = %status.message(), "explorer page failed");
                Problem::Internal
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let (code, title, message, fields) = match self {
            Problem::BadRequest(fields) => (
                StatusCode::BAD_REQUEST,
                "Bad request",
                "The address asks for something the explorer cannot show:".to_string(),
                fields,
            ),
            Problem::NotFound(what) => (StatusCode::NOT_FOUND, "Not found", what, Vec::new()),
            Problem::Unavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                format!("{why}; try again in a moment."),
                Vec::new(),
            ),
            Problem::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
                "The page could not be made; the order service's log says why.".to_string(),
                Vec::new(),
            ),
        };
        (code, page::problem(title, &message, &fields)).into_response()
    }
}

fn bad(field: &str, description: impl Into<String>) -> Problem {
    Problem::BadRequest(vec![(field.to_string(), description.into())])
}

/// The orders list's query string, as typed in the address bar (so every field is text).
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    customer: Option<String>,
    size: Option<String>,
    before: Option<String>,
}

/// A valid orders filter: what ListOrders accepts, with the same limits.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<OrderStatus>,
    pub customer: Option<String>,
    pub size: Option<u32>,
    pub before: Option<String>,
}

/// The query string of a [`Filter`]: only the fields it sets.
#[derive(Serialize)]
struct FilterQuery<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    customer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<&'a str>,
}

impl Filter {
    /// Checks `params` as ListOrders would (unknown status, size out of range, a page token
    /// that is not one) and names the fields as the address bar does.
    pub fn parse(params: ListParams) -> Result<(Filter, ListOrdersRequest), Problem> {
        let given = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        let status = match given(params.status) {
            None => None,
            Some(name) => Some(
                OrderStatus::from_str_name(&name)
                    .or_else(|| OrderStatus::from_str_name(&format!("ORDER_STATUS_{name}")))
                    .filter(|s| *s != OrderStatus::Unspecified)
                    .ok_or_else(|| {
                        let known: Vec<&str> = page::statuses().map(page::status_name).collect();
                        bad(
                            "status",
                            format!("unknown status {name:?}; use one of {}", known.join(", ")),
                        )
                    })?,
            ),
        };
        let size = match given(params.size) {
            None => None,
            Some(raw) => Some(
                raw.parse::<u32>()
                    .map_err(|_| bad("size", format!("must be a whole number, got {raw:?}")))?,
            ),
        };
        let filter = Filter {
            status,
            customer: given(params.customer),
            size,
            before: given(params.before),
        };
        let request = ListOrdersRequest {
            customer_id: filter.customer.clone().unwrap_or_default(),
            status: filter.status.map_or(0, |s| s as i32),
            page: Some(PageRequest {
                page_size: filter.size.unwrap_or(0),
                page_token: filter.before.clone().unwrap_or_default(),
            }),
        };
        if let Err(status) = validate::list_orders(&request) {
            let renamed = field_violations(&status)
                .into_iter()
                .map(|(field, description)| {
                    let field = match field.as_str() {
                        "page.page_size" => "size",
                        "page.page_token" => "before",
                        "customer_id" => "customer",
                        other => other,
                    };
                    (field.to_string(), description)
                })
                .collect();
            return Err(Problem::BadRequest(renamed));
        }
        Ok((filter, request))
    }

    fn query(&self) -> String {
        serde_urlencoded::to_string(FilterQuery {
            status: self.status.map(page::status_name),
            customer: self.customer.as_deref(),
            size: self.size,
            before: self.before.as_deref(),
        })
        .unwrap_or_default()
    }

    fn with_query(base: &str, query: String) -> String {
        if query.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{query}")
        }
    }

    /// This list's address.
    pub fn href(&self) -> String {
        Filter::with_query("/ui", self.query())
    }

    /// The stream that keeps this list current.
    pub fn live_href(&self) -> String {
        Filter::with_query("/ui/live/orders", self.query())
    }

    /// The same filter on another status, from the newest order.
    pub fn with_status(&self, status: Option<OrderStatus>) -> Filter {
        Filter {
            status,
            before: None,
            ..self.clone()
        }
    }

    pub fn with_before(&self, before: Option<&str>) -> Filter {
        Filter {
            before: before.map(str::to_string),
            ..self.clone()
        }
    }
}

async fn orders_page(
    State(explorer): State<Explorer>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Markup, Problem> {
    let Query(params) = params.map_err(|r| bad("query", r.body_text()))?;
    let (filter, request) = Filter::parse(params)?;
    let deps = explorer.deps.get()?;
    let (orders, size) = query::orders(&deps.pool, &request).await?;
    let counts = explorer.counts.get(&deps.pool).await?;
    Ok(page::layout(
        "Orders",
        Some(&filter.live_href()),
        page::orders(&filter, &counts, &orders, size),
    ))
}

/// An order id from the path: a malformed one is a bad request, not a missing order.
fn order_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| {
        bad(
            "order_id",
            "must be an order id (a UUID) from the orders list",
        )
    })
}

async fn order_page(
    State(explorer): State<Explorer>,
    Path(raw): Path<String>,
) -> Result<Markup, Problem> {
    let order_id = order_id(&raw)?;
    let deps = explorer.deps.get()?;
    let detail = query::order(deps, order_id)
        .await?
        .ok_or_else(|| Problem::NotFound(format!("There is no order {order_id}.")))?;
    let live = format!("/ui/live/orders/{order_id}");
    Ok(page::layout(
        &format!("Order {order_id}"),
        Some(&live),
        maud::html! {
            div id="order" data-live-target {
                (page::order(&detail, &explorer.namespace, chrono::Utc::now()))
            }
        },
    ))
}

/// The Attention list's query string: `after`, the last order id of the previous page.
#[derive(Debug, Default, Deserialize)]
pub struct AttentionParams {
    after: Option<String>,
}

impl AttentionParams {
    pub fn parse(
        params: Result<Query<AttentionParams>, QueryRejection>,
    ) -> Result<Option<Uuid>, Problem> {
        let Query(params) = params.map_err(|r| bad("query", r.body_text()))?;
        match params.after.filter(|a| !a.is_empty()) {
            None => Ok(None),
            Some(raw) => Uuid::parse_str(&raw).map(Some).map_err(|_| {
                bad(
                    "after",
                    "must be an order id from the previous Attention page",
                )
            }),
        }
    }

    /// The stream that keeps the page after `after` current.
    fn live_href(after: Option<Uuid>) -> String {
        match after {
            Some(after) => format!("/ui/live/attention?after={after}"),
            None => "/ui/live/attention".to_string(),
        }
    }
}

async fn attention_page(
    State(explorer): State<Explorer>,
    params: Result<Query<AttentionParams>, QueryRejection>,
) -> Result<Markup, Problem> {
    let after = AttentionParams::parse(params)?;
    let deps = explorer.deps.get()?;
    let stuck = query::attention(deps, after).await?;
    Ok(page::layout(
        "Attention",
        Some(&AttentionParams::live_href(after)),
        page::attention(&stuck, after, &explorer.namespace, chrono::Utc::now()),
    ))
}

async fn not_found(Path(rest): Path<String>) -> Problem {
    Problem::NotFound(format!(
        "The explorer has no page /ui/{rest}; it has /ui (orders), /ui/orders/<id> and \
         /ui/attention."
    ))
}
