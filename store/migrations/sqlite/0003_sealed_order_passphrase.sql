-- An asymmetric order's passphrase waits for the order worker sealed in the HSM, in a column of
-- its own, never in the order's meta. Orders stored before keep no plaintext either: a pending
-- one that had a passphrase fails, as it could no longer be protected, and every meta loses it.
ALTER TABLE orders ADD COLUMN sealed_passphrase TEXT;

UPDATE orders
SET status = 'ERROR', error_status_code = '500',
    error_reason = 'Process TypeOrder failure seen - please contact site administrator.',
    lease_owner = NULL, lease_until = NULL,
    updated = CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)
WHERE status = 'PENDING' AND type = 'asymmetric'
    AND json_type(meta, '$.passphrase') <> 'null'
    AND json_extract(meta, '$.passphrase') IS NOT '';

UPDATE orders SET meta = json_remove(meta, '$.passphrase')
WHERE json_type(meta, '$.passphrase') IS NOT NULL;
