-- The project KEK lifecycle: the encryptions each KEK has been charged (an upper bound, reserved
-- in blocks), when it was retired, and the rewrap job that moves its data to the project's
-- active KEK before it is destroyed: the job's lease and how many payloads it has moved.
ALTER TABLE project_keks ADD COLUMN encryptions INTEGER NOT NULL DEFAULT 0;
ALTER TABLE project_keks ADD COLUMN retired INTEGER;
ALTER TABLE project_keks ADD COLUMN rewrapped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE project_keks ADD COLUMN lease_owner TEXT;
ALTER TABLE project_keks ADD COLUMN lease_until INTEGER;
CREATE INDEX project_keks_jobs ON project_keks (active, lease_until);
CREATE INDEX secrets_kek ON secrets (kek_id, id);
