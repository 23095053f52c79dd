//! Payment persistence. Charge and Refund of one order serialise on a transaction-scoped
//! advisory lock of the order id, so a refund racing a late charge cannot leave money taken
//! (Charge takes it inside the `charge_payment` function, Refund in its transaction).

use chrono::{DateTime, SubsecRound, Utc};
use ordermesh::Error;
use ordermesh::{
    idempotency,
    proto::{
        common::Money,
        payment::{ChargeResponse, Payment, PaymentStatus, RefundResponse},
    },
    time::to_proto,
};
use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    metrics::{CHARGES, REFUNDS},
    processor::{self, Version},
};

#[derive(sqlx::FromRow, Clone)]
struct PaymentRow {
    payment_id: Uuid,
    order_id: Uuid,
    status: String,
    currency: String,
    amount_minor: i64,
    refunded_minor: i64,
    decline_reason: String,
    card_last4: String,
    card_fingerprint: String,
    processor_version: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "payment_id, order_id, status, currency, amount_minor, refunded_minor, decline_reason, \
                       card_last4, card_fingerprint, processor_version, created_at, updated_at";

impl From<PaymentRow> for Payment {
    fn from(r: PaymentRow) -> Payment {
        let money = |amount_minor| {
            Some(Money {
                currency_code: r.currency.clone(),
                amount_minor,
            })
        };
        Payment {
            payment_id: r.payment_id.to_string(),
            order_id: r.order_id.to_string(),
            status: PaymentStatus::from_str_name(&r.status).unwrap_or_default() as i32,
            amount: money(r.amount_minor),
            refunded: money(r.refunded_minor),
            decline_reason: r.decline_reason,
            card_last4: r.card_last4,
            card_fingerprint: r.card_fingerprint,
            processor_version: r.processor_version,
            created_at: Some(to_proto(r.created_at)),
            updated_at: Some(to_proto(r.updated_at)),
        }
    }
}

async fn lock_order(conn: &mut PgConnection, order_id: Uuid) -> Result<(), Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))")
        .bind(order_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn load(conn: &mut PgConnection, order_id: Uuid) -> Result<Option<PaymentRow>, Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::from)
}

#[tracing::instrument(level = "debug", skip_all, fields(%order_id))]
pub async fn get(pool: &PgPool, order_id: Uuid) -> Result<Option<Payment>, Error> {
    let mut conn = pool.acquire().await?;
    Ok(load(&mut conn, order_id).await?.map(Into::into))
}

/// What a Charge carries once validated.
pub struct Charge<'a> {
    pub order_id: Uuid,
    pub currency: &'a str,
    pub amount_minor: i64,
    pub token: &'a str,
}

/// Charges the order in one round trip: the `charge_payment` function (migration 0002) takes
/// the order's lock, then writes the payment and its stored response unless the key was
/// answered before (replayed from here), the order is blocked or it is already paid. The
/// response (timestamps included) is built before the write, so row and answer agree.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn charge(
    pool: &PgPool,
    key: &str,
    request: &impl prost::Message,
    charge: Charge<'_>,
    version: Version,
) -> Result<ChargeResponse, Error> {
    #[derive(sqlx::FromRow)]
    struct Verdict {
        outcome: String,
        blocked_reason: Option<String>,
    }
    let hash = idempotency::request_hash(request);
    let (status, decline_reason) =
        match processor::authorize(version, charge.token, charge.amount_minor) {
            Ok(()) => (PaymentStatus::Captured, String::new()),
            Err(reason) => (PaymentStatus::Declined, reason),
        };
    let last4: String = {
        let chars: Vec<char> = charge.token.chars().collect();
        chars[chars.len().saturating_sub(4)..].iter().collect()
    };
    let now = Utc::now().trunc_subsecs(6);
    let row = PaymentRow {
        payment_id: Uuid::now_v7(),
        order_id: charge.order_id,
        status: status.as_str_name().into(),
        currency: charge.currency.into(),
        amount_minor: charge.amount_minor,
        refunded_minor: 0,
        decline_reason,
        card_last4: last4,
        card_fingerprint: format!("{:x}", Sha256::digest(charge.token.as_bytes())),
        processor_version: version.as_str().into(),
        created_at: now,
        updated_at: now,
    };
    let response = ChargeResponse {
        payment: Some(row.clone().into()),
    };
    let mut conn = pool.acquire().await?;
    let verdict: Verdict = sqlx::query_as(
        "SELECT outcome, blocked_reason
         FROM charge_payment($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(key)
    .bind(&hash)
    .bind(response.encode_to_vec())
    .bind(row.payment_id)
    .bind(row.order_id)
    .bind(&row.status)
    .bind(&row.currency)
    .bind(row.amount_minor)
    .bind(&row.decline_reason)
    .bind(&row.card_last4)
    .bind(&row.card_fingerprint)
    .bind(&row.processor_version)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    match verdict.outcome.as_str() {
        "charged" => {}
        "replay" => return idempotency::stored(&mut conn, key, &hash).await,
        "blocked" => {
            return Err(Error::conflict(format!(
                "order {} was cancelled before it was charged ({}); nothing was charged",
                charge.order_id,
                verdict.blocked_reason.unwrap_or_default()
            )));
        }
        "paid" => {
            return Err(Error::conflict(format!(
                "order {} already has a payment; retry with its original idempotency key",
                charge.order_id
            )));
        }
        other => {
            tracing::error!(outcome = other, "charge_payment answered something unknown");
            return Err(Error::internal("internal database error"));
        }
    }
    let outcome = if status == PaymentStatus::Captured {
        "captured"
    } else {
        "declined"
    };
    CHARGES
        .with_label_values(&[version.as_str(), outcome])
        .inc();
    Ok(response)
}

/// Refunds `amount` (or everything left, when `None`) of the order's charge. Never refunds more
/// than was charged, nor in another currency; with no charge, blocks the order against a late one.
#[tracing::instrument(level = "debug", skip_all, fields(%order_id))]
pub async fn refund(
    pool: &PgPool,
    key: &str,
    request: &impl prost::Message,
    order_id: Uuid,
    amount: Option<ordermesh::domain::Money>,
    reason: &str,
) -> Result<RefundResponse, Error> {
    let mut tx = pool.begin().await?;
    if let Some(replay) = idempotency::claim(&mut tx, key, request).await? {
        return Ok(replay);
    }
    lock_order(&mut tx, order_id).await?;
    let Some(payment) = load(&mut tx, order_id).await? else {
        sqlx::query(
            "INSERT INTO payment_blocks (order_id, reason) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(order_id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        let response = RefundResponse {
            payment: None,
            refunded_now: None,
        };
        idempotency::record(&mut tx, key, &response).await?;
        tx.commit().await?;
        return Ok(response);
    };
    if let Some(asked) = amount
        && asked.currency.as_str() != payment.currency
    {
        // Returning drops the transaction: the key is not claimed, nothing changes.
        return Err(Error::Refused {
            kind: "PAYMENT_CURRENCY",
            subject: order_id.to_string(),
            description: format!(
                "refund in {} of a charge made in {}; ask in {}",
                asked.currency.as_str(),
                payment.currency,
                payment.currency
            ),
        });
    }
    let amount_minor = amount.map(|m| m.minor);
    let charged = payment.status != PaymentStatus::Declined.as_str_name();
    let left = if charged {
        payment.amount_minor - payment.refunded_minor
    } else {
        0
    };
    let now = match amount_minor {
        None => left,
        Some(asked) if asked <= left => asked,
        Some(asked) => {
            return Err(Error::conflict(format!(
                "refund of {asked} exceeds the {left} minor units left of the charge"
            )));
        }
    };
    let row = if now > 0 {
        sqlx::query("INSERT INTO refunds (refund_id, payment_id, amount_minor, reason) VALUES ($1, $2, $3, $4)")
            .bind(Uuid::now_v7())
            .bind(payment.payment_id)
            .bind(now)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        let status = if now == left {
            PaymentStatus::Refunded
        } else {
            PaymentStatus::PartiallyRefunded
        };
        sqlx::query_as(&format!(
            "UPDATE payments SET refunded_minor = refunded_minor + $2, status = $3, updated_at = now()
             WHERE payment_id = $1 RETURNING {COLUMNS}"
        ))
        .bind(payment.payment_id)
        .bind(now)
        .bind(status.as_str_name())
        .fetch_one(&mut *tx)
        .await?
    } else {
        payment
    };
    let currency = row.currency.clone();
    let response = RefundResponse {
        payment: Some(row.into()),
        refunded_now: Some(Money {
            currency_code: currency,
            amount_minor: now,
        }),
    };
    idempotency::record(&mut tx, key, &response).await?;
    tx.commit().await?;
    if now > 0 {
        REFUNDS.inc();
    }
    Ok(response)
}
