-- The reference pg_etcd schema: one history table keyed by (key, revision).
CREATE TABLE IF NOT EXISTS "etcd" (
    "ts" timestamptz NOT NULL DEFAULT now(),
    "key" text NOT NULL,
    "value" text,
    "revision" bigint NOT NULL,
    "tombstone" boolean NOT NULL DEFAULT false,
    CONSTRAINT "etcd_pkey" PRIMARY KEY ("key", "revision")
);
CREATE INDEX IF NOT EXISTS "idx_etcd_ts" ON "etcd" ("ts");
CREATE INDEX IF NOT EXISTS "idx_etcd_pending" ON "etcd" ("key") WHERE "revision" = -1;
