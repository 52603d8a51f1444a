-- The hash state over a session's durable bytes, written with its offset, so that any
-- instance continues the upload without re-reading the spool.
ALTER TABLE uploads ADD COLUMN hash_state BLOB;
