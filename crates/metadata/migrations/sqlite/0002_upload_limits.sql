-- Session limits count the open sessions of a repository at every upload start.
CREATE INDEX uploads_by_repository ON uploads (repository);
