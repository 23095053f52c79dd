-- One payment per order. The card token itself is never stored: only its last four characters
-- and a SHA-256 fingerprint.
CREATE TABLE payments (
    payment_id        uuid PRIMARY KEY,
    order_id          uuid NOT NULL UNIQUE,
    status            text NOT NULL CHECK (status IN ('PAYMENT_STATUS_CAPTURED', 'PAYMENT_STATUS_DECLINED',
                                                      'PAYMENT_STATUS_PARTIALLY_REFUNDED', 'PAYMENT_STATUS_REFUNDED')),
    currency          text NOT NULL,
    amount_minor      bigint NOT NULL CHECK (amount_minor >= 0),
    refunded_minor    bigint NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0 AND refunded_minor <= amount_minor),
    decline_reason    text NOT NULL DEFAULT '',
    card_last4        text NOT NULL,
    card_fingerprint  text NOT NULL,
    processor_version text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE refunds (
    refund_id    uuid PRIMARY KEY,
    payment_id   uuid NOT NULL REFERENCES payments,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    reason       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- A Refund that finds no payment blocks the order, so a Charge arriving late (after the saga
-- compensated) is refused instead of taking money nobody will refund.
CREATE TABLE payment_blocks (
    order_id   uuid PRIMARY KEY,
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Idempotency key -> stored response (see ordermesh::idempotency).
CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    request_hash bytea NOT NULL,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now()
);
