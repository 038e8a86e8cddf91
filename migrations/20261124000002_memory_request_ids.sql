-- migrate:up
-- Idempotency keys of Memory's creating RPCs (request_id), kept for a while so a
-- retried create replays its first response instead of writing twice.
CREATE TABLE IF NOT EXISTS memory.request_ids (
    tenant      text        NOT NULL,
    method      text        NOT NULL,
    request_id  text        NOT NULL,
    claim       uuid        NOT NULL DEFAULT gen_random_uuid(),
    response    bytea,
    expire_time timestamptz NOT NULL,
    PRIMARY KEY (tenant, method, request_id)
);
CREATE INDEX IF NOT EXISTS request_ids_expire_time ON memory.request_ids (expire_time);

-- migrate:down
DROP TABLE IF EXISTS memory.request_ids;
