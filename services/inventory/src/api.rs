//! The gRPC surface: validates each request completely (every bad field reported at once,
//! before any write), then calls the store.

use ordermesh::{
    domain::{Sku, parse_required_text, parse_text, parse_uuid},
    limits::{self, MAX_REASON_LEN, MAX_STOCK},
    proto::common::PageResponse,
    proto::inventory::{inventory_service_server::InventoryService, *},
    ready::Ready,
    validation::{self, Violations},
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::store;

pub struct Inventory {
    pool: Ready<PgPool>,
}

impl Inventory {
    pub fn new(pool: Ready<PgPool>) -> Inventory {
        Inventory { pool }
    }
}

#[tonic::async_trait]
impl InventoryService for Inventory {
    #[tracing::instrument(skip_all, fields(sku = %request.get_ref().sku))]
    async fn upsert_item(
        &self,
        request: Request<UpsertItemRequest>,
    ) -> Result<Response<UpsertItemResponse>, Status> {
        let r = request.get_ref();
        let mut v = Violations::new();
        let sku = v.parse("sku", Sku::parse(&r.sku));
        let name = v.parse("name", parse_required_text(&r.name, 200));
        v.check(
            (0..=MAX_STOCK).contains(&r.available),
            "available",
            format!("must be between 0 and {MAX_STOCK}, got {}", r.available),
        );
        let (sku, name) = v.finish(sku.zip(name))?;
        let item = store::upsert_item(self.pool.get()?, &sku, &name, r.available).await?;
        Ok(Response::new(UpsertItemResponse { item: Some(item) }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_item(
        &self,
        request: Request<GetItemRequest>,
    ) -> Result<Response<GetItemResponse>, Status> {
        let mut v = Violations::new();
        let sku = v.parse("sku", Sku::parse(&request.get_ref().sku));
        let sku = v.finish(sku)?;
        match store::get_item(self.pool.get()?, &sku).await? {
            Some(item) => Ok(Response::new(GetItemResponse { item: Some(item) })),
            None => Err(Status::not_found(format!("no item with SKU {sku}"))),
        }
    }

    #[tracing::instrument(skip_all)]
    async fn list_items(
        &self,
        request: Request<ListItemsRequest>,
    ) -> Result<Response<ListItemsResponse>, Status> {
        let page = request.into_inner().page.unwrap_or_default();
        let mut v = Violations::new();
        let size = v.parse("page.page_size", limits::page_size(page.page_size));
        let after = if page.page_token.is_empty() {
            None
        } else {
            v.parse(
                "page.page_token",
                Sku::parse(&page.page_token).map_err(|_| "is not a token from this API"),
            )
        };
        v.into_result()?;
        let size = size.unwrap_or(limits::DEFAULT_PAGE_SIZE);
        let items = store::list_items(self.pool.get()?, after.as_ref(), size).await?;
        let next_page_token = if items.len() == size as usize {
            items.last().map(|i| i.sku.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListItemsResponse {
            items,
            page: Some(PageResponse { next_page_token }),
        }))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        let r = request.get_ref();
        let mut v = Violations::new();
        let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
        let lines = validation::lines(
            &mut v,
            "lines",
            r.lines.iter().map(|l| (l.sku.as_str(), l.quantity)),
        );
        let (key, order_id) = v.finish(keyed)?;
        let response = store::reserve(self.pool.get()?, &key, r, order_id, &lines).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let r = request.get_ref();
        let mut v = Violations::new();
        let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
        v.parse("reason", parse_text(&r.reason, MAX_REASON_LEN));
        let (key, order_id) = v.finish(keyed)?;
        Ok(Response::new(
            store::release(self.pool.get()?, &key, r, order_id).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn commit(
        &self,
        request: Request<CommitRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        let r = request.get_ref();
        let mut v = Violations::new();
        let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
        let (key, order_id) = v.finish(keyed)?;
        Ok(Response::new(
            store::commit(self.pool.get()?, &key, r, order_id).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn get_reservation(
        &self,
        request: Request<GetReservationRequest>,
    ) -> Result<Response<GetReservationResponse>, Status> {
        let mut v = Violations::new();
        let order_id = v.parse("order_id", parse_uuid(&request.get_ref().order_id));
        let order_id = v.finish(order_id)?;
        match store::get_reservation(self.pool.get()?, order_id).await? {
            Some(reservation) => Ok(Response::new(GetReservationResponse {
                reservation: Some(reservation),
            })),
            None => Err(Status::not_found(format!(
                "order {order_id} has no reservation"
            ))),
        }
    }
}
