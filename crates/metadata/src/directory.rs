//! Teams that mirror directory (LDAP / Active Directory) groups. A mirrored team's
//! members follow the directory: each time a member signs in against the directory,
//! their memberships of mirrored teams are set to the groups the directory reports.
//! Teams that mirror no group are left alone.

use crate::audit::{Actor, Record};
use crate::store::{MetadataStore, Result};
use sqlx::Row;

impl MetadataStore {
    /// Makes `team` mirror the directory group `group` (`None`: mirror nothing, keeping
    /// its members); false if there is no such team. Members change only at sign-ins.
    pub async fn set_team_group(&self, team: &str, group: Option<&str>, actor: &Actor) -> Result<bool> {
        let q = sqlx::query("UPDATE teams SET directory_group = $2 WHERE name = $1").bind(team).bind(group);
        let detail = serde_json::json!({ "group": group }).to_string();
        self.change_one(q, actor, Record::ok("team.group", team).with(detail)).await
    }

    /// Puts `user` in every team mirroring one of `groups` and takes them out of every
    /// other mirrored team, in one transaction, so that nobody sees half a sync. Audit
    /// events are written for the memberships that changed, and only for those: a
    /// concurrent sync that made the same change first leaves nothing to record.
    pub async fn sync_directory_teams(&self, user: &str, groups: &[String], actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let mirrored = sqlx::query(
            "SELECT t.name, t.directory_group, CAST(CASE WHEN EXISTS (SELECT 1 FROM team_members m \
               WHERE m.team = t.name AND m.member = $1) THEN 1 ELSE 0 END AS BIGINT) \
             FROM teams t WHERE t.directory_group IS NOT NULL ORDER BY t.name",
        )
        .bind(user)
        .fetch_all(tx.conn())
        .await?;
        let detail = serde_json::json!({ "member": user }).to_string();
        let mut changed = false;
        for row in &mirrored {
            let team: String = row.try_get(0)?;
            let group: String = row.try_get(1)?;
            let member = row.try_get::<i64, _>(2)? != 0;
            let (sql, action) = match (groups.contains(&group), member) {
                (true, false) => (
                    "INSERT INTO team_members (team, member) VALUES ($1, $2) ON CONFLICT (team, member) DO NOTHING",
                    "team.member.add",
                ),
                (false, true) => ("DELETE FROM team_members WHERE team = $1 AND member = $2", "team.member.remove"),
                _ => continue,
            };
            if sqlx::query(sql).bind(&team).bind(user).execute(tx.conn()).await?.rows_affected() > 0 {
                tx.audit(actor, Record::ok(action, &team).with(detail.clone())).await?;
                changed = true;
            }
        }
        if changed {
            tx.commit().await
        } else {
            tx.rollback().await
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Actor, AuditQuery, MetadataStore};

    /// A fresh database on the PostgreSQL server `BERTH_TEST_POSTGRES` names, if any.
    async fn postgres() -> Option<MetadataStore> {
        use sqlx::{Connection, Executor};
        let admin = std::env::var("BERTH_TEST_POSTGRES").ok()?;
        let name = format!("directory_{}_{}", std::process::id(), crate::now_millis());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        conn.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
        Some(MetadataStore::open(&format!("{}/{name}", admin.rsplit_once('/').unwrap().0)).await.unwrap())
    }

    /// Actions and targets of the audit events of `action`'s kind, oldest first.
    async fn events(meta: &MetadataStore, action: &str) -> Vec<(String, String)> {
        let query = AuditQuery { action: Some(action.into()), limit: 100, ..AuditQuery::default() };
        let mut found: Vec<_> =
            meta.audit_events(&query).await.unwrap().into_iter().map(|e| (e.target, e.detail.unwrap())).collect();
        found.reverse();
        found
    }

    /// On SQLite, and on PostgreSQL too when `BERTH_TEST_POSTGRES` names a server.
    #[tokio::test]
    async fn a_sync_adds_and_removes_only_in_mirrored_teams() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = MetadataStore::open(&format!("sqlite://{}", dir.path().join("m.db").display())).await.unwrap();
        syncs_only_mirrored_teams(sqlite).await;
        match postgres().await {
            Some(meta) => syncs_only_mirrored_teams(meta).await,
            None => eprintln!(
                "a_sync_adds_and_removes_only_in_mirrored_teams: PostgreSQL skipped, BERTH_TEST_POSTGRES is not set"
            ),
        }
    }

    async fn syncs_only_mirrored_teams(meta: MetadataStore) {
        let admin = Actor::system();
        for team in ["devs", "auditors", "ops", "handmade"] {
            assert!(meta.create_team(team, &admin).await.unwrap());
        }
        for (team, group) in [("devs", "developers"), ("auditors", "auditors"), ("ops", "ops")] {
            assert!(meta.set_team_group(team, Some(group), &admin).await.unwrap());
        }
        assert!(!meta.set_team_group("nobody", Some("x"), &admin).await.unwrap(), "no such team");
        // alice is already in ops (stays), in auditors (leaves), and in a team that
        // mirrors nothing (untouched, though no group of hers names it).
        for team in ["ops", "auditors", "handmade"] {
            assert!(meta.add_team_member(team, "alice", &admin).await.unwrap());
        }
        assert!(meta.add_team_member("auditors", "bob", &admin).await.unwrap());

        let sync = Actor::new("ldap", "192.0.2.1");
        let groups = ["developers".to_owned(), "ops".to_owned(), "unmirrored".to_owned()];
        meta.sync_directory_teams("alice", &groups, &sync).await.unwrap();
        assert_eq!(meta.team_members("devs").await.unwrap(), ["alice"]);
        assert_eq!(meta.team_members("ops").await.unwrap(), ["alice"]);
        assert_eq!(meta.team_members("auditors").await.unwrap(), ["bob"], "alice left, bob untouched");
        assert_eq!(meta.team_members("handmade").await.unwrap(), ["alice"]);
        let alice = r#"{"member":"alice"}"#.to_owned();
        assert_eq!(events(&meta, "team.member.add").await.last(), Some(&("devs".to_owned(), alice.clone())));
        assert_eq!(events(&meta, "team.member.remove").await, [("auditors".to_owned(), alice.clone())]);

        // The same groups again change nothing and record nothing.
        let before = meta.audit_events(&AuditQuery { limit: 100, ..AuditQuery::default() }).await.unwrap().len();
        meta.sync_directory_teams("alice", &groups, &sync).await.unwrap();
        let after = meta.audit_events(&AuditQuery { limit: 100, ..AuditQuery::default() }).await.unwrap().len();
        assert_eq!(before, after);

        // A team that stops mirroring keeps its members and is no longer synced.
        assert!(meta.set_team_group("devs", None, &admin).await.unwrap());
        meta.sync_directory_teams("alice", &[], &sync).await.unwrap();
        assert_eq!(meta.team_members("devs").await.unwrap(), ["alice"]);
        assert!(meta.team_members("ops").await.unwrap().is_empty());
        let groups_set = events(&meta, "team.group").await;
        assert_eq!(groups_set.first(), Some(&("devs".to_owned(), r#"{"group":"developers"}"#.to_owned())));
        assert_eq!(groups_set.last(), Some(&("devs".to_owned(), r#"{"group":null}"#.to_owned())));
    }
}
