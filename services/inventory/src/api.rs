//! The gRPC surface: validates each request completely (every bad field reported at once,
//! before any write), then calls the store.

use ordermesh::{
    proto::common::PageResponse,
    proto::inventory::{inventory_service_server::InventoryService, *},
    ready::Ready,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::{store, unsettled::Unsettled, validate};

pub struct Inventory {
    pool: Ready<PgPool>,
    /// Reserve's reservations for the Commit or Release that follows (a hint; see the module).
    unsettled: Unsettled,
}

impl Inventory {
    pub fn new(pool: Ready<PgPool>) -> Inventory {
        Inventory {
            pool,
            unsettled: Unsettled::default(),
        }
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
        let (sku, name) = validate::upsert_item(r)?;
        let item = store::upsert_item(self.pool.get()?, &sku, &name, r.available).await?;
        Ok(Response::new(UpsertItemResponse { item: Some(item) }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_item(
        &self,
        request: Request<GetItemRequest>,
    ) -> Result<Response<GetItemResponse>, Status> {
        let sku = validate::get_item(request.get_ref())?;
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
        let (size, after) = validate::list_items(request.get_ref())?;
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
        let ((key, order_id), lines) = validate::reserve(r)?;
        let response =
            store::reserve(self.pool.get()?, &self.unsettled, &key, r, order_id, &lines).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let r = request.get_ref();
        let (key, order_id) = validate::release(r)?;
        Ok(Response::new(
            store::release(self.pool.get()?, &self.unsettled, &key, r, order_id).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn commit(
        &self,
        request: Request<CommitRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        let r = request.get_ref();
        let (key, order_id) = validate::commit(r)?;
        Ok(Response::new(
            store::commit(self.pool.get()?, &self.unsettled, &key, r, order_id).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn get_reservation(
        &self,
        request: Request<GetReservationRequest>,
    ) -> Result<Response<GetReservationResponse>, Status> {
        let order_id = validate::get_reservation(request.get_ref())?;
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
