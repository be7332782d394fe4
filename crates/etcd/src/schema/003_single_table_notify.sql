-- Single-table mode: pending writes are (key, -1) rows, coalesced per key.
CREATE TABLE IF NOT EXISTS "pg_etcd_conflicts" (
    "key" text,
    "value" text,
    "tombstone" boolean,
    "ts" timestamptz,
    "base_revision" bigint,
    "etcd_revision" bigint,
    "detected_at" timestamptz DEFAULT now()
);

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

CREATE OR REPLACE FUNCTION "etcd_put"(p_key text, p_value text) RETURNS timestamptz
LANGUAGE sql AS $fn$
    INSERT INTO "etcd" ("key", "value", "revision", "tombstone", "ts")
    VALUES (p_key, p_value, -1, false, clock_timestamp())
    ON CONFLICT ("key", "revision") DO UPDATE
        SET "value" = EXCLUDED."value", "tombstone" = false, "ts" = EXCLUDED."ts"
    RETURNING "ts"
$fn$;

CREATE OR REPLACE FUNCTION "etcd_delete"(p_key text) RETURNS timestamptz
LANGUAGE sql AS $fn$
    INSERT INTO "etcd" ("key", "value", "revision", "tombstone", "ts")
    VALUES (p_key, '', -1, true, clock_timestamp())
    ON CONFLICT ("key", "revision") DO UPDATE
        SET "value" = '', "tombstone" = true, "ts" = EXCLUDED."ts"
    RETURNING "ts"
$fn$;

CREATE OR REPLACE FUNCTION "etcd_get_pending"()
RETURNS TABLE("key" text, "value" text, "ts" timestamptz, "tombstone" boolean)
LANGUAGE sql STABLE AS $fn$
    SELECT e."key", e."value", e."ts", e."tombstone" FROM "etcd" e
    WHERE e."revision" = -1 ORDER BY e."ts"
$fn$;

CREATE OR REPLACE FUNCTION "etcd_update_revision"(p_key text, p_timestamp timestamptz, p_revision bigint)
RETURNS boolean LANGUAGE plpgsql AS $fn$
BEGIN
    UPDATE "etcd" SET "revision" = p_revision
    WHERE "key" = p_key AND "ts" = p_timestamp AND "revision" = -1;
    RETURN FOUND;
END
$fn$;

DROP TRIGGER IF EXISTS "etcd_pending_notify" ON "etcd";
CREATE TRIGGER "etcd_pending_notify" AFTER INSERT OR UPDATE ON "etcd"
    FOR EACH ROW WHEN (NEW."revision" = -1) EXECUTE FUNCTION "notify_etcd_change"();
