-- Saga engine v2: one durable run per order. The saga row carries what a resume needs:
-- the compare-and-set counter every journal entry moves, the current step's deadline (set by
-- the entry that makes the step current, enforced on every resume), its transient attempts so
-- far, the propagation context the saga runs in (request id, trace, baggage, canary version),
-- and whether the order's outcome was announced (a saga redriven out of FAILED ends without a
-- second notification). Sagas started by the per-step engine get a deadline from their last
-- move and a ticket from the sweeper.
ALTER TABLE sagas
    ADD COLUMN version     bigint NOT NULL DEFAULT 0,
    ADD COLUMN deadline_at timestamptz,
    ADD COLUMN attempts    integer NOT NULL DEFAULT 0,
    ADD COLUMN context     jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN announced   boolean NOT NULL DEFAULT false;
