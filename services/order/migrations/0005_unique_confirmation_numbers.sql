-- Confirmation numbers are unique. Until this migration they were the first eight hex digits
-- of the order id (a UUIDv7), i.e. its timestamp's top bits, which every order of the same
-- minute or so shared. Such a number identified nothing, so each duplicate except the earliest
-- order's is re-issued once here, in the view and in the order's Confirmed event alike (the
-- only time an event is corrected in place: the rebuild must reproduce the view). New numbers
-- are random (see model::confirmation_number) and this index refuses a collision, which the
-- saga answers by drawing again.
DO $$
DECLARE
    dup record;
    fresh text;
BEGIN
    FOR dup IN
        SELECT order_id, confirmation_number FROM (
            SELECT order_id, confirmation_number,
                   row_number() OVER (PARTITION BY confirmation_number ORDER BY created_at, order_id) AS n
            FROM order_view WHERE confirmation_number <> ''
        ) numbered
        WHERE n > 1
    LOOP
        LOOP
            fresh := left(dup.confirmation_number, 13) || (
                SELECT string_agg(substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', 1 + floor(random() * 32)::int, 1), '')
                FROM generate_series(1, 8));
            EXIT WHEN NOT EXISTS (SELECT 1 FROM order_view WHERE confirmation_number = fresh);
        END LOOP;
        UPDATE order_view SET confirmation_number = fresh WHERE order_id = dup.order_id;
        UPDATE order_events SET payload = jsonb_set(payload, '{confirmation_number}', to_jsonb(fresh))
        WHERE order_id = dup.order_id AND event_type = 'confirmed';
    END LOOP;
END $$;

CREATE UNIQUE INDEX order_view_confirmation_number ON order_view (confirmation_number)
    WHERE confirmation_number <> '';
