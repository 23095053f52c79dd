//! The gRPC surface of the order service.

use std::pin::Pin;

use futures::Stream;
use ordermesh::{
    domain::parse_uuid,
    limits,
    proto::{
        common::PageResponse,
        order::{order_service_server::OrderService, *},
    },
    ready::Ready,
    validation::Violations,
};
use tonic::{Request, Response, Status};

use crate::{Deps, store, validate};

pub struct Orders {
    deps: Ready<Deps>,
}

impl Orders {
    pub(crate) fn new(deps: Ready<Deps>) -> Orders {
        Orders { deps }
    }
}

/// The saga (CancelOrder, GetSagaTimeline, WatchOrder) lands with the orchestrator; until then
/// these RPCs say so plainly instead of pretending.
fn saga_not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} needs the saga orchestrator, which this build does not include yet"
    ))
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
        let response = store::create(&deps.pool, r, order).await?;
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
        let mut v = Violations::new();
        let order_id = v.parse("order_id", parse_uuid(&request.get_ref().order_id));
        let order_id = v.finish(order_id)?;
        match store::get(&self.deps.get()?.pool, order_id).await? {
            Some(order) => Ok(Response::new(GetOrderResponse { order: Some(order) })),
            None => Err(Status::not_found(format!("no order {order_id}"))),
        }
    }

    #[tracing::instrument(skip_all)]
    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let r = request.into_inner();
        let page = r.page.unwrap_or_default();
        let mut v = Violations::new();
        let size = v.parse("page.page_size", limits::page_size(page.page_size));
        let status = match OrderStatus::try_from(r.status) {
            Ok(OrderStatus::Unspecified) => None,
            Ok(status) => Some(status),
            Err(_) => {
                v.add("status", format!("unknown order status {}", r.status));
                None
            }
        };
        let before = if page.page_token.is_empty() {
            None
        } else {
            v.parse(
                "page.page_token",
                parse_uuid(&page.page_token).map_err(|_| "is not a token from this API"),
            )
        };
        v.check(
            r.customer_id.len() <= 128,
            "customer_id",
            "must be at most 128 characters",
        );
        let size = v.finish(size)?;
        let customer = (!r.customer_id.is_empty()).then_some(r.customer_id.as_str());
        let orders = store::list(&self.deps.get()?.pool, customer, status, before, size).await?;
        let next_page_token = match orders.last() {
            Some(last) if orders.len() == size as usize => last.order_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListOrdersResponse {
            orders,
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn cancel_order(
        &self,
        _: Request<CancelOrderRequest>,
    ) -> Result<Response<CancelOrderResponse>, Status> {
        Err(saga_not_yet("CancelOrder"))
    }

    async fn get_saga_timeline(
        &self,
        _: Request<GetSagaTimelineRequest>,
    ) -> Result<Response<GetSagaTimelineResponse>, Status> {
        Err(saga_not_yet("GetSagaTimeline"))
    }

    type WatchOrderStream = Pin<Box<dyn Stream<Item = Result<WatchOrderResponse, Status>> + Send>>;

    async fn watch_order(
        &self,
        _: Request<WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        Err(saga_not_yet("WatchOrder"))
    }
}
