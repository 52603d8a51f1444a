//! LDAP sign-in against a real OpenLDAP server with the fixture of `scripts/slapd.sh`:
//! the directory client itself, then the authenticator signing directory users in and
//! making mirrored teams follow their groups. Skipped, with a message, unless
//! `BERTH_TEST_LDAP` names the server's plain URL (`ldap://127.0.0.1:PORT`; LDAPS listens
//! on PORT+1) and `BERTH_TEST_LDAP_CA` its CA bundle, next to which the script also
//! leaves `other-ca.pem`, an unrelated CA (`scripts/test.sh` starts the server and sets
//! both). The tests of unreachable servers need no server and always run.

use berth_auth::admin::{Acting, AdminError};
use berth_auth::{
    Actions, AuthError, AuthSettings, Authenticator, Caller, Credentials, DirectoryUser, LdapDirectory, LdapError,
    LdapSettings, Principal, TokenRequest,
};
use berth_metadata::{Actor, AuditQuery, Member, MemberKind, MetadataStore, Role, UserRecord};
use common::settings;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

mod common;

const ALICE_DN: &str = "uid=alice,ou=people,dc=example,dc=org";

struct Server {
    url: String,
    ldaps_url: String,
    ca: PathBuf,
    other_ca: PathBuf,
}

fn server(test: &str) -> Option<Server> {
    let (Ok(url), Ok(ca)) = (std::env::var("BERTH_TEST_LDAP"), std::env::var("BERTH_TEST_LDAP_CA")) else {
        eprintln!("{test}: skipped, BERTH_TEST_LDAP and BERTH_TEST_LDAP_CA are not set");
        return None;
    };
    let port: u16 = url.rsplit_once(':').expect("BERTH_TEST_LDAP has a port").1.parse().expect("a port number");
    let ca = PathBuf::from(ca);
    Some(Server {
        ldaps_url: format!("ldaps://127.0.0.1:{}", port + 1),
        url,
        other_ca: ca.with_file_name("other-ca.pem"),
        ca,
    })
}

/// Search mode: the reader finds users under ou=people, groups come from ou=groups.
fn search_settings(url: &str) -> LdapSettings {
    LdapSettings {
        url: url.to_owned(),
        bind_dn: Some("cn=reader,dc=example,dc=org".to_owned()),
        bind_password: Some("reader-secret".to_owned()),
        base_dn: "ou=people,dc=example,dc=org".to_owned(),
        group_base_dn: Some("ou=groups,dc=example,dc=org".to_owned()),
        ..LdapSettings::default()
    }
}

/// Direct-bind mode: no service account; the user reads its own groups.
fn direct_settings(url: &str) -> LdapSettings {
    LdapSettings {
        bind_dn: None,
        bind_password: None,
        user_dn: Some("uid={username},ou=people,dc=example,dc=org".to_owned()),
        ..search_settings(url)
    }
}

fn alice() -> DirectoryUser {
    DirectoryUser { name: "alice".to_owned(), dn: ALICE_DN.to_owned(), groups: vec!["developers".into(), "ops".into()] }
}

/// Every attempt is refused, none with an error.
async fn assert_refused(directory: &LdapDirectory, attempts: &[(&str, &str)]) {
    for (username, password) in attempts {
        assert_eq!(directory.verify(username, password).await.unwrap(), None, "{username} with {password}");
    }
}

async fn verify(settings: LdapSettings, username: &str, password: &str) -> Result<Option<DirectoryUser>, LdapError> {
    LdapDirectory::new(settings).unwrap().verify(username, password).await
}

#[tokio::test]
async fn search_then_bind_signs_in_with_the_users_groups() {
    let Some(server) = server("search_then_bind_signs_in_with_the_users_groups") else { return };
    let directory = LdapDirectory::new(search_settings(&server.url)).unwrap();
    assert_eq!(directory.verify("alice", "alice-pw").await.unwrap(), Some(alice()));
    let bob = directory.verify("bob", "bob-pw").await.unwrap().expect("bob signs in");
    assert_eq!(bob.dn, "uid=bob,ou=people,dc=example,dc=org");
    assert_eq!(bob.groups, ["ops"]);
}

#[tokio::test]
async fn wrong_passwords_and_unknown_users_are_refused() {
    let Some(server) = server("wrong_passwords_and_unknown_users_are_refused") else { return };
    let directory = LdapDirectory::new(search_settings(&server.url)).unwrap();
    // The last: the service account's own password is not a user's.
    let attempts = [("alice", "bob-pw"), ("alice", "ALICE-PW"), ("carol", "alice-pw"), ("reader", "reader-secret")];
    assert_refused(&directory, &attempts).await;
}

/// The server takes alice's DN with an empty password as an (unauthenticated) bind that
/// succeeds; `verify` must refuse it all the same, without asking the server.
#[tokio::test]
async fn an_empty_password_is_refused_though_the_server_would_accept_it() {
    let Some(server) = server("an_empty_password_is_refused_though_the_server_would_accept_it") else { return };
    let (connection, mut ldap) = ldap3::LdapConnAsync::new(&server.url).await.unwrap();
    ldap3::drive!(connection);
    let bound = ldap.simple_bind(ALICE_DN, "").await.unwrap();
    assert_eq!(bound.rc, 0, "the fixture server accepts unauthenticated binds: {bound:?}");

    assert_eq!(verify(search_settings(&server.url), "alice", "").await.unwrap(), None);
    assert_eq!(verify(direct_settings(&server.url), "alice", "").await.unwrap(), None);
    // Refused before any connection: even a server that cannot be reached answers None.
    assert_eq!(verify(direct_settings(&closed_port_url("ldap")), "alice", "").await.unwrap(), None);
}

#[tokio::test]
async fn filter_injection_cannot_widen_the_search() {
    let Some(server) = server("filter_injection_cannot_widen_the_search") else { return };
    let directory = LdapDirectory::new(search_settings(&server.url)).unwrap();
    // Unescaped, "ali*" would match alice alone and sign her in, and the others would
    // make filters the server rejects as errors.
    let attempts =
        [("*", "alice-pw"), ("ali*", "alice-pw"), ("alice)(uid=*", "alice-pw"), ("alice)(|(uid=*", "alice-pw")];
    assert_refused(&directory, &attempts).await;
}

#[tokio::test]
async fn a_name_matching_several_entries_is_refused() {
    let Some(server) = server("a_name_matching_several_entries_is_refused") else { return };
    let settings =
        LdapSettings { user_filter: "(|(uid={username})(uid=bob))".to_owned(), ..search_settings(&server.url) };
    let directory = LdapDirectory::new(settings).unwrap();
    assert_eq!(directory.verify("alice", "alice-pw").await.unwrap(), None);
    // The same filter signs in a name that matches one entry.
    assert!(directory.verify("bob", "bob-pw").await.unwrap().is_some());
}

#[tokio::test]
async fn direct_bind_signs_in_and_reads_the_groups_as_the_user() {
    let Some(server) = server("direct_bind_signs_in_and_reads_the_groups_as_the_user") else { return };
    let directory = LdapDirectory::new(direct_settings(&server.url)).unwrap();
    assert_eq!(directory.verify("alice", "alice-pw").await.unwrap(), Some(alice()));
    assert_eq!(directory.verify("bob", "bob-pw").await.unwrap().expect("bob signs in").groups, ["ops"]);
    // Unescaped, "alice," would make a DN that is no DN, which the server rejects as an error.
    assert_refused(&directory, &[("alice", "bob-pw"), ("carol", "alice-pw"), ("alice,", "alice-pw")]).await;
}

#[tokio::test]
async fn ldaps_and_starttls_sign_in_with_the_servers_ca() {
    let Some(server) = server("ldaps_and_starttls_sign_in_with_the_servers_ca") else { return };
    let ldaps = LdapSettings { ca_file: Some(server.ca.clone()), ..search_settings(&server.ldaps_url) };
    assert_eq!(verify(ldaps, "alice", "alice-pw").await.unwrap(), Some(alice()));
    let starttls = LdapSettings { starttls: true, ca_file: Some(server.ca), ..search_settings(&server.url) };
    assert_eq!(verify(starttls, "alice", "alice-pw").await.unwrap(), Some(alice()));
}

/// A certificate the configured roots do not vouch for stops the sign-in with an error,
/// over LDAPS and over StartTLS (which shows StartTLS really verifies).
#[tokio::test]
async fn tls_with_a_ca_that_does_not_match_is_an_error() {
    let Some(server) = server("tls_with_a_ca_that_does_not_match_is_an_error") else { return };
    let url = |starttls: bool| if starttls { &server.url } else { &server.ldaps_url };
    for starttls in [false, true] {
        // `None`: the system's roots, which do not hold the throwaway CA either.
        for ca_file in [Some(server.other_ca.clone()), None] {
            let settings = LdapSettings { starttls, ca_file: ca_file.clone(), ..search_settings(url(starttls)) };
            let verified = verify(settings, "alice", "alice-pw").await;
            assert!(
                matches!(verified, Err(LdapError::Failed { operation: "connect", .. })),
                "starttls: {starttls}, CA {ca_file:?}: {verified:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_wrong_service_account_password_is_an_error_not_a_refusal() {
    let Some(server) = server("a_wrong_service_account_password_is_an_error_not_a_refusal") else { return };
    let settings = LdapSettings { bind_password: Some("wrong".to_owned()), ..search_settings(&server.url) };
    let verified = verify(settings, "alice", "alice-pw").await;
    assert!(matches!(verified, Err(LdapError::Refused { rc: 49, .. })), "{verified:?}");
}

/// A URL whose port nothing listens on (it was just free).
fn closed_port_url(scheme: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("{scheme}://127.0.0.1:{port}")
}

#[tokio::test]
async fn an_unreachable_server_is_an_error() {
    for url in [closed_port_url("ldap"), closed_port_url("ldaps")] {
        let verified = verify(search_settings(&url), "alice", "alice-pw").await;
        assert!(matches!(verified, Err(LdapError::Failed { operation: "connect", .. })), "{url}: {verified:?}");
    }
}

/// A server that accepts the connection and never answers: the timeout ends the
/// sign-in with an error, at the TLS handshake (LDAPS) or at the first bind (LDAP).
#[tokio::test]
async fn a_server_that_never_answers_is_an_error() {
    // The kernel completes the TCP handshakes; nothing ever reads or writes.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    for (url, operation) in [
        (format!("ldaps://127.0.0.1:{port}"), "connect"),
        (format!("ldap://127.0.0.1:{port}"), "bind as the service account"),
    ] {
        let settings = LdapSettings { timeout: Duration::from_millis(200), ..search_settings(&url) };
        // The outer bound only turns a hang (the bug this test looks for) into a failure.
        let verified = tokio::time::timeout(Duration::from_secs(30), verify(settings, "alice", "alice-pw"))
            .await
            .expect("verify gives up on its own");
        match verified {
            Err(LdapError::Failed { operation: failed, source, .. }) => {
                assert_eq!(failed, operation, "{url}");
                assert!(matches!(*source, ldap3::LdapError::Timeout { .. }), "{url}: {source}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
}

// ---- the authenticator with a directory ------------------------------------------------

const FROM: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

struct Signing {
    _dir: tempfile::TempDir,
    meta: MetadataStore,
    auth: Authenticator,
}

/// An authenticator on a fresh SQLite store that signs users in against `ldap`.
async fn signing(ldap: LdapSettings) -> Signing {
    let dir = tempfile::tempdir().unwrap();
    let meta = MetadataStore::open(&format!("sqlite://{}", dir.path().join("m.db").display())).await.unwrap();
    let auth = Authenticator::new(AuthSettings { ldap: Some(ldap), ..settings() }, meta.clone()).await.unwrap();
    Signing { _dir: dir, meta, auth }
}

async fn sign_in_from(auth: &Authenticator, user: &str, password: &str, from: IpAddr) -> Result<Principal, AuthError> {
    let credentials = Credentials::Basic { user: user.into(), password: password.into() };
    Ok(auth.authenticate(Some(credentials), from).await?.principal)
}

async fn sign_in(auth: &Authenticator, user: &str, password: &str) -> Result<Principal, AuthError> {
    sign_in_from(auth, user, password, FROM).await
}

fn user(name: &str, admin: bool) -> Principal {
    Principal::User { name: name.into(), admin }
}

fn address(last: u8) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, last))
}

#[tokio::test]
async fn directory_users_sign_in_under_lowercased_names() {
    let Some(server) = server("directory_users_sign_in_under_lowercased_names") else { return };
    let s = signing(search_settings(&server.url)).await;
    assert_eq!(sign_in(&s.auth, "alice", "alice-pw").await.unwrap(), user("alice", false));
    assert_eq!(sign_in(&s.auth, "ALICE", "alice-pw").await.unwrap(), user("alice", false));

    // Wrong passwords count against the one lowercased name, whatever case each used:
    // from three addresses, so that only the user's count can be what stops the fourth.
    for (i, name) in ["alice", "Alice", "aLiCe"].into_iter().enumerate() {
        let wrong = sign_in_from(&s.auth, name, "bob-pw", address(i as u8 + 1)).await;
        assert!(matches!(wrong, Err(AuthError::Unauthenticated(_))), "{name}: {wrong:?}");
    }
    let blocked = sign_in_from(&s.auth, "ALICE", "alice-pw", address(9)).await;
    assert!(matches!(blocked, Err(AuthError::TooManyAttempts { .. })), "{blocked:?}");
    assert_eq!(sign_in_from(&s.auth, "bob", "bob-pw", address(9)).await.unwrap(), user("bob", false));
}

/// The administrator flag of a directory user comes from a row in `users` (a row with
/// no password: the directory still checks it), and such a user gets no refresh token.
#[tokio::test]
async fn a_directory_user_with_a_row_is_an_administrator_without_refresh_tokens() {
    let Some(server) = server("a_directory_user_with_a_row_is_an_administrator_without_refresh_tokens") else {
        return;
    };
    let s = signing(search_settings(&server.url)).await;
    let row = UserRecord { name: "bob".into(), password_hash: None, admin: true, expires_at: None };
    assert!(s.meta.create_user(&row, &[], &Actor::system()).await.unwrap());
    assert_eq!(sign_in(&s.auth, "bob", "bob-pw").await.unwrap(), user("bob", true));
    assert!(matches!(sign_in(&s.auth, "bob", "alice-pw").await, Err(AuthError::Unauthenticated(_))));

    let offline = TokenRequest { offline: true, ..TokenRequest::default() };
    let credentials = Some(Credentials::Basic { user: "bob".into(), password: "bob-pw".into() });
    let issued = s.auth.issue(offline, credentials, FROM).await.unwrap();
    assert!(!issued.token.is_empty());
    assert_eq!(issued.refresh_token, None);
}

/// A password kept here keeps the directory out, also for the same name in other case:
/// else a directory account `alice` would be a way into the local `alice`.
#[tokio::test]
async fn a_stored_password_keeps_the_directory_out() {
    let Some(server) = server("a_stored_password_keeps_the_directory_out") else { return };
    let s = signing(search_settings(&server.url)).await;
    let local = UserRecord {
        name: "alice".into(),
        password_hash: Some(berth_auth::hash_argon2("local-pw")),
        admin: false,
        expires_at: None,
    };
    assert!(s.meta.create_user(&local, &[], &Actor::system()).await.unwrap());
    for name in ["alice", "ALICE"] {
        let refused = sign_in_from(&s.auth, name, "alice-pw", address(1)).await;
        assert!(matches!(refused, Err(AuthError::Unauthenticated(_))), "{name}: {refused:?}");
    }
    assert_eq!(sign_in_from(&s.auth, "alice", "local-pw", address(2)).await.unwrap(), user("alice", false));
}

#[tokio::test]
async fn mirrored_teams_follow_the_directory_groups_at_sign_in() {
    let Some(server) = server("mirrored_teams_follow_the_directory_groups_at_sign_in") else { return };
    let s = signing(search_settings(&server.url)).await;
    let admin = Acting::system();
    for team in ["devs", "auditors"] {
        s.auth.create_team(&admin, team).await.unwrap();
    }
    // Group names ignore case, as in the directory (whose group is `developers`).
    s.auth.set_team_directory_group(&admin, "devs", Some("Developers")).await.unwrap();
    s.auth.set_team_directory_group(&admin, "auditors", Some("auditors")).await.unwrap();
    s.auth.create_namespace(&admin, "team1", false).await.unwrap();
    let devs = Member { kind: MemberKind::Team, name: "devs".into(), role: Role::Developer };
    s.auth.set_member(&admin, "team1", &devs).await.unwrap();
    // alice is in no `auditors` group: her sign-in must take her out of the team.
    s.auth.add_team_member(&admin, "auditors", "alice").await.unwrap();

    let caller = |name: &str| Caller { principal: user(name, false), token: None };
    assert_eq!(s.auth.access(&caller("alice"), "team1/app").await.unwrap(), Actions::NONE);
    sign_in(&s.auth, "alice", "alice-pw").await.unwrap();
    assert_eq!(s.auth.access(&caller("alice"), "team1/app").await.unwrap(), Actions::PULL.union(Actions::PUSH));
    assert_eq!(s.meta.team_members("devs").await.unwrap(), ["alice"]);
    assert!(s.meta.team_members("auditors").await.unwrap().is_empty());
    let query = AuditQuery { actor: Some("ldap".into()), limit: 10, ..AuditQuery::default() };
    let mut synced: Vec<_> =
        s.meta.audit_events(&query).await.unwrap().into_iter().map(|e| (e.action, e.target)).collect();
    synced.sort();
    assert_eq!(synced, [("team.member.add".into(), "devs".into()), ("team.member.remove".into(), "auditors".into())]);

    // bob is in `ops` only.
    sign_in(&s.auth, "bob", "bob-pw").await.unwrap();
    assert!(!s.auth.access(&caller("bob"), "team1/app").await.unwrap().contains(Actions::PUSH));
    assert_eq!(s.meta.team_members("devs").await.unwrap(), ["alice"]);

    // A sign-in served from the credential cache does not ask the directory, and so
    // does not sync: the documented delay until `credentialcache` has passed.
    s.auth.add_team_member(&admin, "auditors", "alice").await.unwrap();
    sign_in(&s.auth, "alice", "alice-pw").await.unwrap();
    assert_eq!(s.meta.team_members("auditors").await.unwrap(), ["alice"]);
}

/// Needs no server: the directory's port is closed, so any question to it would fail
/// with `Backend`.
#[tokio::test]
async fn robots_never_reach_the_directory_and_an_unreachable_one_is_an_error() {
    let s = signing(search_settings(&closed_port_url("ldap"))).await;
    for robot in ["robot$x", "ROBOT$X"] {
        let refused = sign_in_from(&s.auth, robot, "wrong", address(1)).await;
        assert!(matches!(refused, Err(AuthError::Unauthenticated(_))), "{robot}: {refused:?}");
    }
    let unreachable = sign_in_from(&s.auth, "alice", "alice-pw", address(2)).await;
    assert!(matches!(unreachable, Err(AuthError::Backend(_))), "{unreachable:?}");
    // Users with a password kept here sign in as before.
    assert_eq!(sign_in_from(&s.auth, "root", "root-pw", address(3)).await.unwrap(), user("root", true));
}

#[tokio::test]
async fn only_administrators_map_existing_teams_to_groups() {
    let s = signing(search_settings(&closed_port_url("ldap"))).await;
    let admin = Acting::system();
    s.auth.create_team(&admin, "devs").await.unwrap();
    let alice = Acting { principal: user("alice", false), actor: Actor::new("alice", "192.0.2.1") };
    let refused = s.auth.set_team_directory_group(&alice, "devs", Some("developers")).await;
    assert!(matches!(refused, Err(AdminError::Forbidden(_))), "{refused:?}");
    let missing = s.auth.set_team_directory_group(&admin, "ghosts", Some("developers")).await;
    assert!(matches!(missing, Err(AdminError::NotFound(_))), "{missing:?}");
    let empty = s.auth.set_team_directory_group(&admin, "devs", Some(" ")).await;
    assert!(matches!(empty, Err(AdminError::Invalid(_))), "{empty:?}");
    s.auth.set_team_directory_group(&admin, "devs", None).await.unwrap();
    let query = AuditQuery { action: Some("team.group".into()), limit: 10, ..AuditQuery::default() };
    let recorded: Vec<_> = s.meta.audit_events(&query).await.unwrap().into_iter().map(|e| e.target).collect();
    assert_eq!(recorded, ["devs"], "only the change that was made is recorded");
}
