//! The gRPC surface of the payment service. Every response carries `x-payment-version`.

use ordermesh::{
    domain::{Money, parse_required_text, parse_text, parse_uuid},
    limits::MAX_REASON_LEN,
    proto::payment::{payment_service_server::PaymentService, *},
    ready::Ready,
    validation::{self, Violations},
};
use sqlx::PgPool;
use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::{processor::Version, store};

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
        let mut v = Violations::new();
        let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
        let amount = v.parse("amount", Money::parse(r.amount.as_ref()));
        if let Some(a) = amount {
            v.check(a.minor > 0, "amount.amount_minor", "must be greater than 0");
        }
        v.parse("payment_token", parse_required_text(&r.payment_token, 256));
        v.parse("customer_id", parse_text(&r.customer_id, 128));
        let ((key, order_id), amount) = v.finish(keyed.zip(amount))?;
        let charge = store::Charge {
            order_id,
            currency: amount.currency.as_str(),
            amount_minor: amount.minor,
            token: &r.payment_token,
        };
        let response = store::charge(self.pool.get()?, &key, r, charge, self.version)
            .await
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
        let mut v = Violations::new();
        let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
        let amount = match &r.amount {
            None => Some(None),
            Some(m) => v
                .parse("amount", Money::parse(Some(m)))
                .map(|m| Some(m.minor)),
        };
        v.parse("reason", parse_text(&r.reason, MAX_REASON_LEN));
        let ((key, order_id), amount) = v.finish(keyed.zip(amount))?;
        let response =
            store::refund(self.pool.get()?, &key, r, order_id, amount, &r.reason).await?;
        Ok(self.respond(response))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn get_payment(
        &self,
        request: Request<GetPaymentRequest>,
    ) -> Result<Response<GetPaymentResponse>, Status> {
        let mut v = Violations::new();
        let order_id = v.parse("order_id", parse_uuid(&request.get_ref().order_id));
        let order_id = v.finish(order_id)?;
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
