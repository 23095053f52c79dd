//! The gRPC surface of the order service.

use std::pin::Pin;

use futures::Stream;
use ordermesh::{
    limits::bounded_reason,
    proto::{
        common::PageResponse,
        order::{order_service_server::OrderService, *},
    },
    ready::Ready,
    validation,
};
use tonic::{Request, Response, Status};

use crate::{
    Deps, read_model,
    saga::{
        decide::{Input, Phase},
        journal::{self, Recorded},
    },
    store, validate,
};

/// Reads and compare-and-set writes a cancel tries before giving up (see `cancel_order`).
const CANCEL_ATTEMPTS: usize = 5;

#[derive(Clone)]
pub struct Orders {
    deps: Ready<Deps>,
    /// `ORDERMESH_SERVER__MAX_REQUEST_DURATION`: the server's timeout ends unary calls; a watch
    /// stream ends itself with DEADLINE_EXCEEDED at this point (or the client's deadline).
    max_watch: std::time::Duration,
}

impl Orders {
    pub(crate) fn new(deps: Ready<Deps>, max_watch: std::time::Duration) -> Orders {
        Orders { deps, max_watch }
    }
}

#[tonic::async_trait]
impl OrderService for Orders {
    #[tracing::instrument(skip_all, fields(order_id))]
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        let r = request.get_ref();
        let order = validate::create_order(r)?;
        let deps = self.deps.get()?;
        let response = store::create(&deps.journal, r, order).await?;
        if let Some(order) = &response.order {
            tracing::Span::current().record("order_id", order.order_id.as_str());
            if response.created {
                tracing::info!(order_id = %order.order_id, "order accepted");
            }
        }
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let order_id = validate::order_id(&request.get_ref().order_id)?;
        match read_model::get(self.deps.get()?, order_id).await? {
            Some(order) => Ok(Response::new(GetOrderResponse { order: Some(order) })),
            None => Err(Status::not_found(format!("no order {order_id}"))),
        }
    }

    #[tracing::instrument(skip_all)]
    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let q = validate::list_orders(request.get_ref())?;
        let size = q.size;
        let orders = store::list(
            &self.deps.get()?.pool,
            q.customer_id,
            q.status,
            q.before,
            size,
        )
        .await?;
        let next_page_token = match orders.last() {
            Some(last) if orders.len() == size as usize => last.order_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListOrdersResponse {
            orders,
            page: Some(PageResponse { next_page_token }),
        }))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<CancelOrderResponse>, Status> {
        let r = request.get_ref();
        let order_id = validate::cancel_order(r)?;
        let deps = self.deps.get()?;
        let not_found = || Status::not_found(format!("no order {order_id}"));
        let reason = bounded_reason(&format!("cancelled by request: {}", r.reason));
        // The saga may move between the read and the write (its runner records a step); then
        // look again (a few times: each miss means the saga moved on, and it has few steps).
        // Whether a cancel applies is the saga's transition function's call: before
        // ConfirmOrder, and not once compensating.
        for _ in 0..CANCEL_ATTEMPTS {
            let seen = deps.journal.load(order_id).await?.ok_or_else(not_found)?;
            match deps
                .journal
                .record(&seen, Input::Cancelled(reason.clone()))
                .await?
            {
                Recorded::Moved(..) | Recorded::Unchanged => break,
                Recorded::Conflict => continue,
            }
        }
        let order = store::get(&deps.pool, order_id)
            .await?
            .ok_or_else(not_found)?;
        match order.status() {
            // Being undone or undone: what the caller asked for (also when a failure got there first).
            OrderStatus::Compensating | OrderStatus::Cancelled => {
                Ok(Response::new(CancelOrderResponse { order: Some(order) }))
            }
            status => Err(validation::precondition_failed(
                "ORDER_STATUS",
                &order.order_id,
                format!(
                    "order {order_id} is {} and can no longer be cancelled",
                    status.as_str_name().trim_start_matches("ORDER_STATUS_")
                ),
            )),
        }
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn get_saga_timeline(
        &self,
        request: Request<GetSagaTimelineRequest>,
    ) -> Result<Response<GetSagaTimelineResponse>, Status> {
        let order_id = validate::order_id(&request.get_ref().order_id)?;
        let deps = self.deps.get()?;
        let order = store::get(&deps.pool, order_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no order {order_id}")))?;
        let Some(seen) = deps.journal.load(order_id).await? else {
            return Err(Status::not_found(format!("order {order_id} has no saga")));
        };
        let saga = seen.saga;
        let steps = journal::timeline(&deps.pool, order_id).await?;
        let failure_reason = if saga.failure_reason.is_empty() {
            order.failure_reason.clone()
        } else {
            saga.failure_reason
        };
        Ok(Response::new(GetSagaTimelineResponse {
            order: Some(order),
            steps,
            definition_version: u32::try_from(saga.definition_version).unwrap_or(0),
            failure_reason,
            parked: saga.phase == Phase::Parked,
        }))
    }

    type WatchOrderStream = Pin<Box<dyn Stream<Item = Result<WatchOrderResponse, Status>> + Send>>;

    /// Sends the order now and after every change, until it is terminal.
    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn watch_order(
        &self,
        request: Request<WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let order_id = validate::order_id(&request.get_ref().order_id)?;
        let deps = self.deps.get()?;
        // Subscribe before reading, so a change between the read and the subscription is seen.
        let signals = deps.journal.changes.subscribe(order_id).await?;
        let first = store::get(&deps.pool, order_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no order {order_id}")))?;
        let allowed = ordermesh::context::CallContext::current()
            .and_then(|c| c.remaining())
            .map_or(self.max_watch, |left| left.min(self.max_watch));
        let watch = Watch {
            deadline: tokio::time::Instant::now() + allowed,
            allowed,
            pool: deps.pool.clone(),
            signals,
            order_id,
            pending: Some(first),
            last_version: 0,
            done: false,
        };
        let stream = futures::stream::unfold(watch, |mut w| async move {
            if w.done {
                return None;
            }
            loop {
                if let Some(order) = w.pending.take().filter(|o| o.version > w.last_version) {
                    w.last_version = order.version;
                    w.done = order.status().is_terminal();
                    return Some((Ok(WatchOrderResponse { order: Some(order) }), w));
                }
                tokio::select! {
                    signal = w.signals.next() => {
                        if let Some(order) = signal {
                            w.pending = Some(order);
                            continue;
                        }
                    }
                    _ = tokio::time::sleep(WATCH_FALLBACK) => {}
                    _ = tokio::time::sleep_until(w.deadline) => {
                        w.done = true;
                        let status = Status::deadline_exceeded(format!(
                            "the watch reached its time limit of {:?} (the server's maximum or \
                             your deadline) before the order was final; watch again to continue",
                            w.allowed
                        ));
                        return Some((Err(status), w));
                    }
                }
                match store::get(&w.pool, w.order_id).await {
                    Ok(found) => w.pending = found,
                    Err(error) => {
                        w.done = true;
                        return Some((Err(error.into()), w));
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One WatchOrder stream: sends what the order's change signals carry, re-reading the view
/// only when a signal carries nothing readable or none came for [`WATCH_FALLBACK`].
struct Watch {
    /// When the stream ends with DEADLINE_EXCEEDED if the order is not final by then.
    deadline: tokio::time::Instant,
    allowed: std::time::Duration,
    pool: sqlx::PgPool,
    signals: crate::changes::Watch,
    order_id: uuid::Uuid,
    pending: Option<Order>,
    last_version: i64,
    done: bool,
}

/// Re-read even without a signal this often (signals are best-effort).
const WATCH_FALLBACK: std::time::Duration = std::time::Duration::from_secs(2);
