-- One label per order. A CancelLabel that finds no label stores a cancelled one without a
-- tracking number, so a CreateLabel arriving late cannot print a label for a cancelled order.
CREATE TABLE labels (
    label_id        uuid PRIMARY KEY,
    order_id        uuid NOT NULL UNIQUE,
    tracking_number text NOT NULL,
    carrier         text NOT NULL,
    service_level   text NOT NULL,
    status          text NOT NULL CHECK (status IN ('LABEL_STATUS_CREATED', 'LABEL_STATUS_CANCELLED')),
    units           bigint NOT NULL,
    country_code    text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Idempotency key -> stored response (see ordermesh::idempotency).
CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    request_hash bytea NOT NULL,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now()
);
