//! Sign-in against an LDAP directory or Active Directory: a user name and password are
//! checked by binding as the user's entry, found either by a search as a service account
//! or by filling a DN template, and the user's groups are read from the directory.
//!
//! Every connection is opened for one sign-in and closed after it: a sign-in is rare
//! next to the requests its credentials are cached for.

use ldap3::{
    dn_escape, ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, LdapResult, ResultEntry, Scope, SearchOptions,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// RFC 4511 result codes this module tells apart.
const SUCCESS: u32 = 0;
const SIZE_LIMIT_EXCEEDED: u32 = 4;
const INVALID_CREDENTIALS: u32 = 49;

/// Where the directory is and how users and groups are found in it.
#[derive(Clone)]
pub struct LdapSettings {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS.
    pub starttls: bool,
    /// A PEM CA bundle to trust for LDAPS and StartTLS instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The service account that searches for users; `None` binds directly as `user_dn`.
    pub bind_dn: Option<String>,
    pub bind_password: Option<String>,
    /// The DN to bind as in direct-bind mode, with `{username}` where the name goes.
    pub user_dn: Option<String>,
    /// Where users are searched.
    pub base_dn: String,
    /// With `{username}`: `(uid={username})`, on Active Directory `(sAMAccountName={username})`.
    pub user_filter: String,
    /// Where groups are searched; `None` reads no groups.
    pub group_base_dn: Option<String>,
    /// With `{dn}` (the user's DN) and/or `{username}`.
    pub group_filter: String,
    /// The attribute of a group entry that names the group.
    pub group_name_attribute: String,
    /// The bound on connecting (TLS included) and on each operation.
    pub timeout: Duration,
}

impl Default for LdapSettings {
    fn default() -> Self {
        LdapSettings {
            url: String::new(),
            starttls: false,
            ca_file: None,
            bind_dn: None,
            bind_password: None,
            user_dn: None,
            base_dn: String::new(),
            user_filter: "(uid={username})".to_owned(),
            group_base_dn: None,
            group_filter: "(member={dn})".to_owned(),
            group_name_attribute: "cn".to_owned(),
            timeout: Duration::from_secs(5),
        }
    }
}

// By hand, so that the service account's password never reaches a log.
impl fmt::Debug for LdapSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapSettings")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("ca_file", &self.ca_file)
            .field("bind_dn", &self.bind_dn)
            .field("bind_password", &self.bind_password.as_ref().map(|_| "<redacted>"))
            .field("user_dn", &self.user_dn)
            .field("base_dn", &self.base_dn)
            .field("user_filter", &self.user_filter)
            .field("group_base_dn", &self.group_base_dn)
            .field("group_filter", &self.group_filter)
            .field("group_name_attribute", &self.group_name_attribute)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A user the directory vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    /// The name as the user gave it: the registry's user name.
    pub name: String,
    pub dn: String,
    /// The names of the user's groups, sorted.
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("invalid LDAP settings: {0}")]
    Settings(String),
    #[error("cannot use the LDAP CA bundle {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("LDAP server {server}: {operation} failed: {source}")]
    Failed {
        server: String,
        operation: &'static str,
        // Boxed: ldap3's error is large, and every `Result` here would carry its size.
        #[source]
        source: Box<ldap3::LdapError>,
    },
    #[error("LDAP server {server}: {operation} refused with result {rc} ({text})")]
    Refused { server: String, operation: &'static str, rc: u32, text: String },
    #[error("LDAP server {server}: malformed entry in the answer to the {operation}")]
    Malformed { server: String, operation: &'static str },
}

/// How a user's entry is found.
enum Mode {
    /// Searched for as the service account, then bound as with the user's password.
    Search(UserSearch),
    /// Bound as directly: the DN is the template with the name filled in.
    Direct { user_dn: String },
}

struct UserSearch {
    bind_dn: String,
    bind_password: String,
    base_dn: String,
    filter: String,
}

struct GroupSearch {
    base_dn: String,
    filter: String,
    name_attribute: String,
}

/// A directory to check passwords against.
pub struct LdapDirectory {
    url: String,
    connection: LdapConnSettings,
    mode: Mode,
    groups: Option<GroupSearch>,
    timeout: Duration,
}

impl fmt::Debug for LdapDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapDirectory").field("url", &self.url).finish_non_exhaustive()
    }
}

impl LdapDirectory {
    /// Checks the settings and loads the CA bundle (once: not at every sign-in).
    pub fn new(settings: LdapSettings) -> Result<LdapDirectory, LdapError> {
        let invalid = |why: &str| Err(LdapError::Settings(why.to_owned()));
        let tls = if settings.url.starts_with("ldaps://") {
            if settings.starttls {
                return invalid("StartTLS is for ldap:// URLs; ldaps:// is TLS from the start");
            }
            true
        } else if settings.url.starts_with("ldap://") {
            settings.starttls
        } else {
            return invalid("the URL must start with ldap:// or ldaps://");
        };
        if !tls && settings.ca_file.is_some() {
            // Most likely TLS was meant and forgotten: passwords would cross in the clear.
            return invalid("ca_file is for ldaps:// URLs or StartTLS");
        }
        if settings.timeout.is_zero() {
            return invalid("the timeout must be more than zero");
        }
        let mode = match (settings.bind_dn, settings.bind_password, settings.user_dn) {
            (Some(_), _, Some(_)) => {
                return invalid("set bind_dn (search for users) or user_dn (direct bind), not both")
            }
            // An empty password would make the service account's bind an anonymous one.
            (Some(_), password, None) if password.as_ref().is_none_or(String::is_empty) => {
                return invalid("bind_dn needs a bind_password")
            }
            (Some(bind_dn), Some(bind_password), None) => {
                if !settings.user_filter.contains("{username}") {
                    return invalid("user_filter must contain {username}");
                }
                if settings.base_dn.is_empty() {
                    return invalid("searching for users needs a base_dn");
                }
                Mode::Search(UserSearch {
                    bind_dn,
                    bind_password,
                    base_dn: settings.base_dn,
                    filter: settings.user_filter,
                })
            }
            (None, Some(_), _) => return invalid("bind_password without bind_dn"),
            (None, None, Some(user_dn)) if user_dn.contains("{username}") => Mode::Direct { user_dn },
            (Some(_), None, None) | (None, None, _) => {
                return invalid("set bind_dn (search for users) or user_dn with {username} (direct bind)")
            }
        };
        let groups = match settings.group_base_dn {
            Some(base_dn) => {
                if !settings.group_filter.contains("{dn}") && !settings.group_filter.contains("{username}") {
                    return invalid("group_filter must contain {dn} or {username}");
                }
                Some(GroupSearch {
                    base_dn,
                    filter: settings.group_filter,
                    name_attribute: settings.group_name_attribute,
                })
            }
            None => None,
        };
        let mut connection = LdapConnSettings::new().set_starttls(settings.starttls);
        if tls {
            connection = connection.set_config(client_config(settings.ca_file)?);
        }
        Ok(LdapDirectory { url: settings.url, connection, mode, groups, timeout: settings.timeout })
    }

    /// `Ok(Some(user))` when the password is right; `Ok(None)` for an unknown user, a
    /// wrong or empty password, or a name that matches more than one entry; `Err` only
    /// when the directory cannot be reached or misbehaves.
    pub async fn verify(&self, username: &str, password: &str) -> Result<Option<DirectoryUser>, LdapError> {
        // A simple bind with a DN and an empty password is an "unauthenticated bind",
        // which many servers answer with success: it must never reach the server.
        if username.is_empty() || password.is_empty() {
            return Ok(None);
        }
        let verified = match &self.mode {
            Mode::Search(search) => self.search_and_bind(search, username, password).await,
            Mode::Direct { user_dn } => self.direct_bind(user_dn, username, password).await,
        };
        verified.inspect_err(|e| tracing::warn!(error = %e, "LDAP sign-in failed"))
    }

    async fn search_and_bind(
        &self,
        search: &UserSearch,
        username: &str,
        password: &str,
    ) -> Result<Option<DirectoryUser>, LdapError> {
        const SERVICE_BIND: &str = "bind as the service account";
        const USER_SEARCH: &str = "user search";
        let mut service = self.connect().await?;
        let bound = self.step(SERVICE_BIND, service.simple_bind(&search.bind_dn, &search.bind_password)).await?;
        self.expect_success(SERVICE_BIND, bound)?;

        let filter = fill(&search.filter, &[("{username}", &ldap_escape(username))]);
        // A size limit of 2 is enough to tell one match from several; "1.1" asks for no
        // attributes, only the DN.
        let found = service.with_search_options(SearchOptions::new().sizelimit(2)).search(
            &search.base_dn,
            Scope::Subtree,
            &filter,
            vec!["1.1"],
        );
        let ldap3::SearchResult(entries, result) = self.step(USER_SEARCH, found).await?;
        if result.rc != SUCCESS && result.rc != SIZE_LIMIT_EXCEEDED {
            return Err(self.refused(USER_SEARCH, result));
        }
        let mut dns = Vec::with_capacity(entries.len());
        for entry in entries.into_iter().filter(is_entry) {
            dns.push(self.parse(USER_SEARCH, entry, None)?.0);
        }
        let dn = match dns.pop() {
            Some(dn) if dns.is_empty() && result.rc == SUCCESS => dn,
            Some(_) => {
                tracing::warn!(server = %self.url, %filter, "LDAP sign-in refused: more than one entry matches");
                return Ok(None);
            }
            None => {
                tracing::debug!(server = %self.url, %filter, "LDAP sign-in refused: no entry matches");
                return Ok(None);
            }
        };

        // The user binds on a connection of its own: the service connection stays bound
        // as the service account for the group search, where a failed bind would have
        // made it anonymous and a successful one would search as the user.
        let mut user = self.connect().await?;
        if !self.bind_user(&mut user, &dn, password).await? {
            return Ok(None);
        }
        let groups = self.groups(&mut service, &dn, username).await?;
        Ok(Some(DirectoryUser { name: username.to_owned(), dn, groups }))
    }

    async fn direct_bind(
        &self,
        user_dn: &str,
        username: &str,
        password: &str,
    ) -> Result<Option<DirectoryUser>, LdapError> {
        let dn = fill(user_dn, &[("{username}", &dn_escape(username))]);
        let mut ldap = self.connect().await?;
        if !self.bind_user(&mut ldap, &dn, password).await? {
            return Ok(None);
        }
        let groups = self.groups(&mut ldap, &dn, username).await?;
        Ok(Some(DirectoryUser { name: username.to_owned(), dn, groups }))
    }

    /// Whether the directory accepts the password for `dn`.
    async fn bind_user(&self, ldap: &mut Ldap, dn: &str, password: &str) -> Result<bool, LdapError> {
        const USER_BIND: &str = "bind as the user";
        let result = self.step(USER_BIND, ldap.simple_bind(dn, password)).await?;
        match result.rc {
            SUCCESS => Ok(true),
            INVALID_CREDENTIALS => {
                tracing::debug!(server = %self.url, dn, "LDAP sign-in refused: wrong password or no such entry");
                Ok(false)
            }
            _ => Err(self.refused(USER_BIND, result)),
        }
    }

    /// The names of the groups the user is in, sorted, each once.
    async fn groups(&self, ldap: &mut Ldap, dn: &str, username: &str) -> Result<Vec<String>, LdapError> {
        const GROUP_SEARCH: &str = "group search";
        let Some(groups) = &self.groups else { return Ok(Vec::new()) };
        let filter = fill(&groups.filter, &[("{dn}", &ldap_escape(dn)), ("{username}", &ldap_escape(username))]);
        let search = ldap.search(&groups.base_dn, Scope::Subtree, &filter, vec![groups.name_attribute.as_str()]);
        let ldap3::SearchResult(entries, result) = self.step(GROUP_SEARCH, search).await?;
        self.expect_success(GROUP_SEARCH, result)?;
        let mut names = Vec::new();
        for entry in entries.into_iter().filter(is_entry) {
            names.extend(self.parse(GROUP_SEARCH, entry, Some(&groups.name_attribute))?.1);
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn connect(&self) -> Result<Ldap, LdapError> {
        let (connection, ldap) =
            self.step("connect", LdapConnAsync::with_settings(self.connection.clone(), &self.url)).await?;
        // The connection ends when `ldap`, its only handle, is dropped.
        ldap3::drive!(connection);
        Ok(ldap)
    }

    /// Runs one network step within the timeout. A timeout around the whole step, rather
    /// than ldap3's own (reset at each entry a search returns), bounds a server that
    /// trickles its answer.
    async fn step<T>(
        &self,
        operation: &'static str,
        step: impl Future<Output = ldap3::result::Result<T>>,
    ) -> Result<T, LdapError> {
        match tokio::time::timeout(self.timeout, step).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(LdapError::Failed { server: self.url.clone(), operation, source: Box::new(source) }),
            Err(elapsed) => {
                Err(LdapError::Failed { server: self.url.clone(), operation, source: Box::new(elapsed.into()) })
            }
        }
    }

    fn expect_success(&self, operation: &'static str, result: LdapResult) -> Result<(), LdapError> {
        match result.rc {
            SUCCESS => Ok(()),
            _ => Err(self.refused(operation, result)),
        }
    }

    fn refused(&self, operation: &'static str, result: LdapResult) -> LdapError {
        LdapError::Refused { server: self.url.clone(), operation, rc: result.rc, text: result.text }
    }

    /// An entry's DN and the values of `attribute`, read without ldap3's
    /// `SearchEntry::construct`, which panics on a malformed entry.
    fn parse(
        &self,
        operation: &'static str,
        entry: ResultEntry,
        attribute: Option<&str>,
    ) -> Result<(String, Vec<String>), LdapError> {
        parse_entry(entry, attribute).ok_or_else(|| LdapError::Malformed { server: self.url.clone(), operation })
    }
}

/// The template with its placeholders replaced by the values, in one pass: a value that
/// holds a placeholder's text (a DN may) is not filled in again.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut filled = String::with_capacity(template.len());
    let mut rest = template;
    'next: while let Some(c) = rest.chars().next() {
        for (placeholder, value) in values {
            if let Some(after) = rest.strip_prefix(placeholder) {
                filled.push_str(value);
                rest = after;
                continue 'next;
            }
        }
        filled.push(c);
        rest = &rest[c.len_utf8()..];
    }
    filled
}

/// Search results also carry referrals and intermediate messages, which are no entries.
fn is_entry(entry: &ResultEntry) -> bool {
    !entry.is_ref() && !entry.is_intermediate()
}

/// RFC 4511 SearchResultEntry: [APPLICATION 4] { objectName, attributes: { type, vals: {value} }* }.
fn parse_entry(entry: ResultEntry, attribute: Option<&str>) -> Option<(String, Vec<String>)> {
    let mut parts = entry.0.match_id(4)?.expect_constructed()?.into_iter();
    let dn = String::from_utf8(parts.next()?.expect_primitive()?).ok()?;
    let mut values = Vec::new();
    let Some(attribute) = attribute else { return Some((dn, values)) };
    for pair in parts.next()?.expect_constructed()? {
        let mut pair = pair.expect_constructed()?.into_iter();
        let name = String::from_utf8(pair.next()?.expect_primitive()?).ok()?;
        let vals = pair.next()?.expect_constructed()?;
        // Attribute names are case-insensitive: servers answer "CN" to a request for "cn".
        if name.eq_ignore_ascii_case(attribute) {
            for value in vals {
                values.push(String::from_utf8(value.expect_primitive()?).ok()?);
            }
        }
    }
    Some((dn, values))
}

/// The TLS client configuration: the CA bundle's certificates, else the system's roots.
fn client_config(ca_file: Option<PathBuf>) -> Result<Arc<ClientConfig>, LdapError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let fail = |reason: String| LdapError::CaFile { path: path.clone(), reason };
            let certs = CertificateDer::pem_file_iter(&path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| fail(e.to_string()))?;
            if certs.is_empty() {
                return Err(fail("no certificate in it".to_owned()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| fail(e.to_string()))?;
            }
        }
        None => {
            // Certificates the system offers but rustls cannot use are skipped, as
            // every other rustls client does: the rest still verify.
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    // The provider is named because the process may have more than one compiled in.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LdapError::Settings(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search_settings() -> LdapSettings {
        LdapSettings {
            url: "ldap://127.0.0.1:1".to_owned(),
            bind_dn: Some("cn=reader,dc=example,dc=org".to_owned()),
            bind_password: Some("secret".to_owned()),
            base_dn: "dc=example,dc=org".to_owned(),
            ..LdapSettings::default()
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(LdapDirectory::new(search_settings()).is_ok());
        let direct = LdapSettings {
            bind_dn: None,
            bind_password: None,
            user_dn: Some("uid={username},dc=example,dc=org".to_owned()),
            ..search_settings()
        };
        assert!(LdapDirectory::new(direct.clone()).is_ok());
        let invalid = [
            LdapSettings { url: "http://127.0.0.1".to_owned(), ..search_settings() },
            LdapSettings { url: "ldaps://127.0.0.1".to_owned(), starttls: true, ..search_settings() },
            LdapSettings { bind_password: Some(String::new()), ..search_settings() },
            LdapSettings { bind_password: None, ..search_settings() },
            LdapSettings { user_filter: "(uid=alice)".to_owned(), ..search_settings() },
            LdapSettings { base_dn: String::new(), ..search_settings() },
            LdapSettings { user_dn: direct.user_dn.clone(), ..search_settings() },
            LdapSettings { user_dn: Some("uid=alice,dc=example,dc=org".to_owned()), ..direct.clone() },
            LdapSettings { bind_password: Some("secret".to_owned()), ..direct.clone() },
            LdapSettings {
                group_base_dn: Some("dc=example,dc=org".to_owned()),
                group_filter: "(objectClass=groupOfNames)".to_owned(),
                ..direct
            },
            LdapSettings { timeout: Duration::ZERO, ..search_settings() },
            LdapSettings { ca_file: Some("/etc/ssl/certs/ca-certificates.crt".into()), ..search_settings() },
            LdapSettings {
                url: "ldaps://127.0.0.1".to_owned(),
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..search_settings()
            },
        ];
        for settings in invalid {
            let debug = format!("{settings:?}");
            assert!(LdapDirectory::new(settings).is_err(), "accepted {debug}");
        }
    }

    #[test]
    fn placeholders_are_filled_once() {
        let values = [("{dn}", "cn={username},dc=x"), ("{username}", "al{dn}ice")];
        assert_eq!(fill("(&(member={dn})(uid={username}))", &values), "(&(member=cn={username},dc=x)(uid=al{dn}ice))");
        assert_eq!(fill("é{username}{", &values), "éal{dn}ice{");
    }

    #[test]
    fn the_bind_password_stays_out_of_debug_output() {
        let debug = format!("{:?}", search_settings());
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
