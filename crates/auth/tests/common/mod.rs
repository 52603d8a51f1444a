//! What the authenticator tests share.

use berth_auth::{Actions, AuthSettings, TokenSettings};
use std::time::Duration;

/// The token service on, signed-in users may push where no namespace says otherwise, an
/// administrator `root` (`root-pw`), three failed sign-ins a minute.
pub fn settings() -> AuthSettings {
    AuthSettings {
        htpasswd: None,
        token: Some(TokenSettings {
            service: "berth-test".into(),
            issuer: "berth-issuer".into(),
            expiration: Duration::from_secs(300),
            refresh_expiration: Duration::from_secs(3600),
            realm: None,
        }),
        external: None,
        anonymous: Actions::PULL,
        authenticated: Actions::PULL.union(Actions::PUSH),
        bootstrap_admin: Some(("root".into(), "root-pw".into())),
        login_failures: 3,
        login_window: Duration::from_secs(60),
        credential_cache: Duration::from_secs(60),
        namespace_depth: 1,
        ldap: None,
        federation: Vec::new(),
        oidc: None,
    }
}
