-- Outcome events (OrderConfirmed / OrderCancelled) announced but not yet known to have reached
-- the notification service. The journal entry that ends a saga writes its row with the outbox
-- row; the sweeper asks the notification service about rows older than the stall threshold,
-- forgets those it has notified and re-publishes the rest (JetStream may have lost them). The
-- primary key is a UUIDv7, so the sweeper reads the oldest rows by it, without another index.
CREATE TABLE announcements (
    event_id   uuid PRIMARY KEY,
    order_id   uuid NOT NULL,
    subject    text NOT NULL,
    payload    bytea NOT NULL,
    headers    jsonb NOT NULL DEFAULT '{}',
    retried_at timestamptz
);
