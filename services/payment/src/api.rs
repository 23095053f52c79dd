//! The gRPC surface of the payment service. Every response carries `x-payment-version`.

use ordermesh::{
    proto::payment::{payment_service_server::PaymentService, *},
    ready::Ready,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::{processor::Version, store, validate};

pub struct Payments {
    pool: Ready<PgPool>,
    version: Version,
}

impl Payments {
    pub fn new(pool: Ready<PgPool>, version: Version) -> Payments {
        Payments { pool, version }
    }

    /// Wraps a response with the header naming the processor behaviour that produced it.
    fn respond<T>(&self, body: T) -> Response<T> {
        let mut response = Response::new(body);
        response.metadata_mut().insert(
            "x-payment-version",
            MetadataValue::from_static(self.version.as_str()),
        );
        response
    }
}

#[tonic::async_trait]
impl PaymentService for Payments {
    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id, version = self.version.as_str()))]
    async fn charge(
        &self,
        request: Request<ChargeRequest>,
    ) -> Result<Response<ChargeResponse>, Status> {
        let r = request.get_ref();
        let ((key, order_id), amount) = validate::charge(r)?;
        let charge = store::Charge {
            order_id,
            currency: amount.currency.as_str(),
            amount_minor: amount.minor,
            token: &r.payment_token,
        };
        let response = store::charge(self.pool.get()?, &key, r, charge, self.version)
            .await
            .map_err(Status::from)
            .inspect_err(|status| {
                if crate::metrics::is_server_error(status) {
                    crate::metrics::CHARGES
                        .with_label_values(&[self.version.as_str(), "error"])
                        .inc();
                }
            })?;
        if let Some(p) = &response.payment {
            tracing::info!(status = p.status().as_str_name(), "charge processed");
        }
        Ok(self.respond(response))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn refund(
        &self,
        request: Request<RefundRequest>,
    ) -> Result<Response<RefundResponse>, Status> {
        let r = request.get_ref();
        let ((key, order_id), amount) = validate::refund(r)?;
        let response =
            store::refund(self.pool.get()?, &key, r, order_id, amount, &r.reason).await?;
        Ok(self.respond(response))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn get_payment(
        &self,
        request: Request<GetPaymentRequest>,
    ) -> Result<Response<GetPaymentResponse>, Status> {
        let order_id = validate::get_payment(request.get_ref())?;
        match store::get(self.pool.get()?, order_id).await? {
            Some(payment) => Ok(self.respond(GetPaymentResponse {
                payment: Some(payment),
            })),
            None => Err(Status::not_found(format!(
                "order {order_id} has no payment"
            ))),
        }
    }
}
