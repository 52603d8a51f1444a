-- A team may mirror a directory (LDAP / Active Directory) group: its members then follow
-- the group at each member's sign-in. NULL: an ordinary team, managed by hand only.
ALTER TABLE teams ADD COLUMN directory_group TEXT;
-- Each directory sign-in looks up the teams mirroring groups.
CREATE INDEX teams_by_directory_group ON teams (directory_group);
