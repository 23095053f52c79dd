-- Stock per SKU. Conservation between UpsertItem calls: available + reserved + committed is constant.
CREATE TABLE items (
    sku        text PRIMARY KEY,
    name       text NOT NULL,
    available  bigint NOT NULL CHECK (available >= 0),
    reserved   bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    committed  bigint NOT NULL DEFAULT 0 CHECK (committed >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One reservation per order. A Release that finds no reservation stores a 'released' one
-- without lines, so a Reserve arriving late (after the saga gave up) cannot hold stock.
CREATE TABLE reservations (
    reservation_id uuid PRIMARY KEY,
    order_id       uuid NOT NULL UNIQUE,
    status         text NOT NULL CHECK (status IN ('reserved', 'released', 'committed')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reservation_lines (
    reservation_id uuid NOT NULL REFERENCES reservations ON DELETE CASCADE,
    sku            text NOT NULL,
    quantity       bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku)
);

-- Idempotency key -> stored response (see ordermesh::idempotency).
CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    request_hash bytea NOT NULL,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now()
);
