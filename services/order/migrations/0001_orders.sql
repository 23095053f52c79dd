-- The source of truth: each order's events, append-only. (order_id, version) is the optimistic
-- concurrency check: two writers appending the same version cannot both commit.
CREATE TABLE order_events (
    order_id    uuid NOT NULL,
    version     bigint NOT NULL CHECK (version > 0),
    event_id    uuid NOT NULL UNIQUE,
    event_type  text NOT NULL,
    payload     jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, version)
);

-- The read model, projected from order_events (rebuildable from them at any time).
CREATE TABLE order_view (
    order_id            uuid PRIMARY KEY,
    customer_id         text NOT NULL,
    status              text NOT NULL,
    currency            text NOT NULL,
    total_minor         bigint NOT NULL,
    lines               jsonb NOT NULL,
    shipping_address    jsonb NOT NULL,
    shipping_method     text NOT NULL,
    confirmation_number text NOT NULL DEFAULT '',
    tracking_number     text NOT NULL DEFAULT '',
    failure_reason      text NOT NULL DEFAULT '',
    request_id          text NOT NULL DEFAULT '',
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    version             bigint NOT NULL
);
CREATE INDEX order_view_customer ON order_view (customer_id, order_id DESC);
CREATE INDEX order_view_status ON order_view (status, order_id DESC);

-- Idempotency key -> stored response (see ordermesh::idempotency); CreateOrder's request_id.
CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    request_hash bytea NOT NULL,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now()
);
