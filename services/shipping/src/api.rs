//! The gRPC surface of the shipping service.

use ordermesh::{
    proto::shipping::{shipping_service_server::ShippingService, *},
    ready::Ready,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::{store, validate};

pub struct Shipping {
    pool: Ready<PgPool>,
}

impl Shipping {
    pub fn new(pool: Ready<PgPool>) -> Shipping {
        Shipping { pool }
    }
}

#[tonic::async_trait]
impl ShippingService for Shipping {
    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn create_label(
        &self,
        request: Request<CreateLabelRequest>,
    ) -> Result<Response<CreateLabelResponse>, Status> {
        let r = request.get_ref();
        let ((key, order_id), country) = validate::create_label(r)?;
        let label = store::NewLabel {
            order_id,
            service_level: &r.service_level,
            units: r.units,
            country_code: country,
        };
        Ok(Response::new(
            store::create(self.pool.get()?, &key, r, label).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn cancel_label(
        &self,
        request: Request<CancelLabelRequest>,
    ) -> Result<Response<CancelLabelResponse>, Status> {
        let r = request.get_ref();
        let (key, order_id) = validate::cancel_label(r)?;
        Ok(Response::new(
            store::cancel(self.pool.get()?, &key, r, order_id).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn get_label(
        &self,
        request: Request<GetLabelRequest>,
    ) -> Result<Response<GetLabelResponse>, Status> {
        let order_id = validate::get_label(request.get_ref())?;
        match store::get(self.pool.get()?, order_id).await? {
            Some(label) => Ok(Response::new(GetLabelResponse { label: Some(label) })),
            None => Err(Status::not_found(format!("order {order_id} has no label"))),
        }
    }
}
