-- Two-table mode: etcd_wal is the PG-side write queue with captured bases.
CREATE TABLE IF NOT EXISTS "etcd_wal" (
    "ts" timestamptz NOT NULL DEFAULT now(),
    "key" text NOT NULL,
    "value" text,
    "revision" bigint,
    "id" bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    "base_revision" bigint,
    "status" text NOT NULL DEFAULT 'pending'
        CHECK ("status" IN ('pending', 'success', 'conflict', 'failed', 'noop')),
    "retry_count" int NOT NULL DEFAULT 0,
    "error_message" text,
    "applied_at" timestamptz,
    PRIMARY KEY ("key", "ts")
);
CREATE INDEX IF NOT EXISTS "idx_etcd_wal_key" ON "etcd_wal" ("key");
CREATE INDEX IF NOT EXISTS "idx_etcd_wal_ts" ON "etcd_wal" ("ts");
CREATE INDEX IF NOT EXISTS "idx_etcd_wal_pending" ON "etcd_wal" ("id") WHERE "status" = 'pending';

CREATE OR REPLACE FUNCTION "etcd_wal_capture_base"() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW."base_revision" := coalesce(NEW."base_revision", NEW."revision",
        (SELECT e."revision" FROM "etcd" e WHERE e."key" = NEW."key" AND e."revision" > 0
         ORDER BY e."revision" DESC LIMIT 1));
    NEW."revision" := NEW."base_revision";
    -- Two writes to one key in one transaction must not collide on (key, ts).
    IF NEW."ts" = now() THEN
        NEW."ts" := clock_timestamp();
    END IF;
    RETURN NEW;
END
$fn$;

DROP TRIGGER IF EXISTS "etcd_wal_capture_base" ON "etcd_wal";
CREATE TRIGGER "etcd_wal_capture_base" BEFORE INSERT ON "etcd_wal"
    FOR EACH ROW EXECUTE FUNCTION "etcd_wal_capture_base"();
DROP TRIGGER IF EXISTS "etcd_wal_notify" ON "etcd_wal";
CREATE TRIGGER "etcd_wal_notify" AFTER INSERT ON "etcd_wal"
    FOR EACH ROW EXECUTE FUNCTION "notify_etcd_change"();

CREATE OR REPLACE FUNCTION "etcd_get"(p_key text)
RETURNS TABLE("key" text, "value" text, "revision" bigint, "tombstone" boolean, "ts" timestamptz)
LANGUAGE sql STABLE AS $fn$
    SELECT e."key", e."value", e."revision", e."tombstone", e."ts" FROM "etcd" e
    WHERE e."key" = p_key ORDER BY e."revision" = -1, e."revision" DESC LIMIT 1
$fn$;

CREATE OR REPLACE FUNCTION "etcd_get_all"(p_key text, p_min_revision bigint DEFAULT 0)
RETURNS TABLE("key" text, "value" text, "revision" bigint, "tombstone" boolean, "ts" timestamptz)
LANGUAGE sql STABLE AS $fn$
    SELECT e."key", e."value", e."revision", e."tombstone", e."ts" FROM "etcd" e
    WHERE e."key" = p_key AND e."revision" > p_min_revision ORDER BY e."revision"
$fn$;

CREATE OR REPLACE FUNCTION "etcd_set"(p_key text, p_value text) RETURNS timestamptz
LANGUAGE plpgsql AS $fn$
DECLARE
    v_base bigint;
    v_ts timestamptz := clock_timestamp();
BEGIN
    SELECT g."revision" INTO v_base FROM "etcd_get"(p_key) g WHERE g."revision" > 0;
    INSERT INTO "etcd_wal" ("ts", "key", "value", "revision", "base_revision")
    VALUES (v_ts, p_key, p_value, v_base, v_base);
    RETURN v_ts;
END
$fn$;

CREATE OR REPLACE FUNCTION "etcd_put"(p_key text, p_value text) RETURNS timestamptz
LANGUAGE sql AS $fn$ SELECT "etcd_set"(p_key, p_value) $fn$;

CREATE OR REPLACE FUNCTION "etcd_delete"(p_key text) RETURNS timestamptz
LANGUAGE sql AS $fn$ SELECT "etcd_set"(p_key, NULL) $fn$;

CREATE OR REPLACE FUNCTION "etcd_get_pending"()
RETURNS TABLE("key" text, "value" text, "ts" timestamptz, "tombstone" boolean)
LANGUAGE sql STABLE AS $fn$
    SELECT w."key", w."value", w."ts", w."value" IS NULL FROM "etcd_wal" w
    WHERE w."status" = 'pending' ORDER BY w."id"
$fn$;

-- Pending single-table rows move into the queue, in ts order, with the latest
-- synced revision written no later than each row as its base.
DROP TRIGGER IF EXISTS "etcd_pending_notify" ON "etcd";
INSERT INTO "etcd_wal" ("ts", "key", "value", "revision", "base_revision")
SELECT p."ts", p."key", CASE WHEN p."tombstone" THEN NULL ELSE p."value" END, b.rev, b.rev
FROM "etcd" p
LEFT JOIN LATERAL (SELECT max(s."revision") AS rev FROM "etcd" s
                   WHERE s."key" = p."key" AND s."revision" > 0 AND s."ts" <= p."ts") b ON true
WHERE p."revision" = -1
ORDER BY p."ts";
DELETE FROM "etcd" WHERE "revision" = -1;
