-- Exactly one notification per event: event_id is unique, so a redelivered event inserts nothing.
CREATE TABLE notifications (
    notification_id uuid PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,
    order_id        uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('NOTIFICATION_KIND_ORDER_CONFIRMED', 'NOTIFICATION_KIND_ORDER_CANCELLED')),
    channel         text NOT NULL,
    message         text NOT NULL,
    sent_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_order ON notifications (order_id, notification_id DESC);
