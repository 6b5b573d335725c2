-- An asymmetric order's passphrase waits for the order worker sealed in the HSM, in a column of
-- its own, never in the order's meta. Orders stored before keep no plaintext either: a pending
-- one that had a passphrase fails, as it could no longer be protected, and every meta loses it.
ALTER TABLE orders ADD COLUMN sealed_passphrase TEXT;

UPDATE orders
SET status = 'ERROR', error_status_code = '500',
    error_reason = 'Process TypeOrder failure seen - please contact site administrator.',
    lease_owner = NULL, lease_until = NULL,
    updated = (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT
WHERE status = 'PENDING' AND type = 'asymmetric'
    AND jsonb_typeof(meta::jsonb -> 'passphrase') <> 'null'
    AND meta::jsonb ->> 'passphrase' <> '';

UPDATE orders SET meta = (meta::jsonb - 'passphrase')::TEXT
WHERE meta::jsonb -> 'passphrase' IS NOT NULL;
