-- migrate:up
-- The fingerprint of the request that claimed a request_id: SHA-256 of its
-- deterministic protobuf serialization with request_id cleared. A retry whose
-- fingerprint differs is a different request reusing the key, refused instead of
-- being answered with the first request's response. NULL for keys claimed before
-- this column existed and for callers that pass no request: those replay as before.
ALTER TABLE memory.request_ids ADD COLUMN IF NOT EXISTS fingerprint bytea;

-- migrate:down
ALTER TABLE memory.request_ids DROP COLUMN IF EXISTS fingerprint;
