-- Shared by both modes: a wake-up for the service on channel etcd_changes.
-- Payloads that would reach the 8000-byte NOTIFY limit omit the value.
CREATE OR REPLACE FUNCTION "notify_etcd_change"() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    j jsonb := to_jsonb(NEW);
    op text;
    payload text;
BEGIN
    IF NEW."value" IS NULL OR coalesce((j->>'tombstone')::boolean, false) THEN
        op := 'DELETE';
    ELSIF NEW."revision" IS NULL THEN
        op := 'CREATE';
    ELSE
        op := 'UPDATE';
    END IF;
    payload := json_build_object('key', NEW."key", 'ts', NEW."ts", 'value', NEW."value",
        'revision', NEW."revision", 'operation', op, 'id', j->'id')::text;
    IF octet_length(payload) >= 7900 THEN
        payload := json_build_object('key', NEW."key", 'ts', NEW."ts", 'value', NULL,
            'revision', NEW."revision", 'operation', op, 'id', j->'id',
            'value_omitted', true)::text;
    END IF;
    PERFORM pg_notify('etcd_changes', payload);
    RETURN NEW;
END
$fn$;
