-- The census behind `order_sagas_active` counts forward, compensating and parked sagas every few
-- seconds; an index over exactly the unfinished ones keeps that independent of finished history.
CREATE INDEX sagas_unfinished ON sagas (phase, current_step, updated_at) WHERE phase <> 'done';
DROP INDEX sagas_active;
