-- Charge in one round trip. The service used to run a transaction of four (BEGIN; take the
-- order's lock and claim the key; write the payment unless the order is blocked or paid;
-- COMMIT). This function does the same under the same advisory lock, so binaries from before
-- and after this migration can charge and refund side by side during a rollout.
--
-- Why a function and not one statement: a statement's snapshot is taken before it could wait
-- for the lock, so it would miss a block committed by the Refund it waited for. A VOLATILE
-- function takes a fresh snapshot for each statement, so everything after the lock sees what
-- the lock's previous holder committed.
--
-- Nothing is written unless the payment is: a repeat of an answered call returns 'replay' (the
-- caller reads the stored response), a blocked order 'blocked' with the block's reason, an
-- order with another key's payment 'paid'. The same key racing for a different order (a
-- client bug) fails on the key's uniqueness and the caller retries into a replay.
CREATE FUNCTION charge_payment(
    p_key text,
    p_request_hash bytea,
    p_response bytea,
    p_payment_id uuid,
    p_order_id uuid,
    p_status text,
    p_currency text,
    p_amount_minor bigint,
    p_decline_reason text,
    p_card_last4 text,
    p_card_fingerprint text,
    p_processor_version text,
    p_at timestamptz,
    OUT outcome text,
    OUT blocked_reason text
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_order_id::text, 0));
    IF EXISTS (SELECT 1 FROM idempotency_keys WHERE key = p_key) THEN
        outcome := 'replay';
        RETURN;
    END IF;
    SELECT reason INTO blocked_reason FROM payment_blocks WHERE order_id = p_order_id;
    IF FOUND THEN
        outcome := 'blocked';
        RETURN;
    END IF;
    INSERT INTO payments (payment_id, order_id, status, currency, amount_minor, decline_reason,
                          card_last4, card_fingerprint, processor_version, created_at, updated_at)
    VALUES (p_payment_id, p_order_id, p_status, p_currency, p_amount_minor, p_decline_reason,
            p_card_last4, p_card_fingerprint, p_processor_version, p_at, p_at)
    ON CONFLICT (order_id) DO NOTHING;
    IF NOT FOUND THEN
        outcome := 'paid';
        RETURN;
    END IF;
    INSERT INTO idempotency_keys (key, request_hash, response)
    VALUES (p_key, p_request_hash, p_response);
    outcome := 'charged';
END
$$;
