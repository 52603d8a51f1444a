-- The parts that hold a session's bytes where the blob store keeps each chunk as an
-- object of its own (object stores), one name per line, in order; empty on a filesystem.
ALTER TABLE uploads ADD COLUMN parts TEXT NOT NULL DEFAULT '';
