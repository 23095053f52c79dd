//! The gRPC surface of the shipping service.

use ordermesh::{
    domain::{parse_required_text, parse_text, parse_uuid},
    limits::MAX_REASON_LEN,
    proto::shipping::{shipping_service_server::ShippingService, *},
    ready::Ready,
    validation::{self, Violations},
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::store;

pub struct Shipping {
    pool: Ready<PgPool>,
}

impl Shipping {
    pub fn new(pool: Ready<PgPool>) -> Shipping {
        Shipping { pool }
    }
}

const SERVICE_LEVELS: [&str; 3] = ["standard", "express", "overnight"];

#[tonic::async_trait]
impl ShippingService for Shipping {
    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn create_label(
        &self,
        request: Request<CreateLabelRequest>,
    ) -> Result<Response<CreateLabelResponse>, Status> {
        let r = request.get_ref();
        let mut v = Violations::new();
        let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
        v.check(
            SERVICE_LEVELS.contains(&r.service_level.as_str()),
            "service_level",
            "must be one of standard, express, overnight",
        );
        v.check(
            (1..=1_000_000).contains(&r.units),
            "units",
            format!("must be between 1 and 1000000, got {}", r.units),
        );
        let country = match &r.address {
            None => {
                v.add("address", "is required");
                None
            }
            Some(a) => {
                v.parse("address.line1", parse_required_text(&a.line1, 200));
                v.parse("address.city", parse_required_text(&a.city, 200));
                let ok = a.country_code.len() == 2
                    && a.country_code.chars().all(|c| c.is_ascii_uppercase());
                v.check(
                    ok,
                    "address.country_code",
                    "must be an ISO 3166-1 alpha-2 code such as US or DE",
                );
                Some(a.country_code.as_str())
            }
        };
        let ((key, order_id), country) = v.finish(keyed.zip(country))?;
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
        let mut v = Violations::new();
        let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
        v.parse("reason", parse_text(&r.reason, MAX_REASON_LEN));
        let (key, order_id) = v.finish(keyed)?;
        Ok(Response::new(
            store::cancel(self.pool.get()?, &key, r, order_id).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn get_label(
        &self,
        request: Request<GetLabelRequest>,
    ) -> Result<Response<GetLabelResponse>, Status> {
        let mut v = Violations::new();
        let order_id = v.parse("order_id", parse_uuid(&request.get_ref().order_id));
        let order_id = v.finish(order_id)?;
        match store::get(self.pool.get()?, order_id).await? {
            Some(label) => Ok(Response::new(GetLabelResponse { label: Some(label) })),
            None => Err(Status::not_found(format!("order {order_id} has no label"))),
        }
    }
}
