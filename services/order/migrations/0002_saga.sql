-- One saga per order: where it is, what is left to undo, under which table version it runs.
CREATE TABLE sagas (
    order_id           uuid PRIMARY KEY,
    definition_version integer NOT NULL,
    phase              text NOT NULL CHECK (phase IN ('forward', 'compensating', 'done', 'parked')),
    current_step       text,
    pending            jsonb NOT NULL DEFAULT '[]',
    failure_reason     text NOT NULL DEFAULT '',
    -- Held only until the charge is made (or the saga gives up), then cleared; never logged.
    payment_token      text,
    started_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sagas_active ON sagas (phase) WHERE phase IN ('forward', 'compensating');

-- The timeline: every step and compensation with attempts and timing.
CREATE TABLE saga_steps (
    order_id     uuid NOT NULL REFERENCES sagas,
    step         text NOT NULL,
    compensation boolean NOT NULL,
    status       text NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    queued_at    timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    error        text NOT NULL DEFAULT '',
    PRIMARY KEY (order_id, step)
);

-- Transactional outbox: written in the same transaction as the state change, published to
-- JetStream by the relay with Nats-Msg-Id = msg_id (JetStream de-duplicates), then deleted.
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    msg_id     uuid NOT NULL UNIQUE,
    subject    text NOT NULL,
    payload    bytea NOT NULL,
    headers    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
