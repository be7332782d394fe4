-- Per-prefix checkpoint and the events that text columns cannot hold.
CREATE TABLE IF NOT EXISTS "pg_etcd_state" (
    "prefix" text PRIMARY KEY,
    "revision" bigint NOT NULL,
    "cluster_id" text NOT NULL,
    "last_resync_revision" bigint,
    "last_resync_at" timestamptz,
    "last_resync_reason" text,
    "updated_at" timestamptz
);
CREATE TABLE IF NOT EXISTS "pg_etcd_rejects" (
    "id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "key" bytea NOT NULL,
    "value" bytea,
    "revision" bigint NOT NULL,
    "tombstone" boolean NOT NULL,
    "reason" text NOT NULL,
    "ts" timestamptz DEFAULT now(),
    UNIQUE ("key", "revision")
);
