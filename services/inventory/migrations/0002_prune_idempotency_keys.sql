-- Idempotency keys expire after ORDERMESH_RETENTION__KEEP (see ordermesh::retention). Keys are
-- inserted in time order, so a BRIN index finds the expired ones in a few pages, and keeping it
-- up costs an insert next to nothing (a B-tree would add an index entry to every call).
CREATE INDEX idempotency_keys_created_at ON idempotency_keys USING brin (created_at);
