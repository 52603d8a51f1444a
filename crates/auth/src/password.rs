//! Password hashes: argon2id for users kept in the database, bcrypt for htpasswd files
//! (what `htpasswd -B` writes). Both are slow on purpose; callers run them on the
//! blocking pool, a few at a time.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

/// A stored password hash and the scheme it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredHash {
    Bcrypt(String),
    Argon2(String),
}

impl StoredHash {
    /// Recognises a hash by its prefix; `None` for schemes Berth refuses (htpasswd's
    /// MD5, SHA-1 and crypt, which are too weak to accept).
    pub fn recognise(hash: &str) -> Option<StoredHash> {
        if ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p)) {
            Some(StoredHash::Bcrypt(hash.to_owned()))
        } else if hash.starts_with("$argon2id$") {
            Some(StoredHash::Argon2(hash.to_owned()))
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            StoredHash::Bcrypt(h) | StoredHash::Argon2(h) => h,
        }
    }

    /// Whether `password` matches. Malformed hashes match nothing.
    pub fn verify(&self, password: &str) -> bool {
        match self {
            StoredHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            StoredHash::Argon2(h) => argon2::PasswordHash::new(h)
                .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
                .unwrap_or(false),
        }
    }
}

/// An argon2id hash of `password` with a fresh random salt, as a PHC string.
pub fn hash_argon2(password: &str) -> String {
    Argon2::default()
        .hash_password(password.as_bytes())
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_and_bcrypt_verify() {
        let h = hash_argon2("s3cret");
        let stored = StoredHash::recognise(&h).unwrap();
        assert!(matches!(stored, StoredHash::Argon2(_)));
        assert!(stored.verify("s3cret"));
        assert!(!stored.verify("s3cret "));
        assert_ne!(hash_argon2("s3cret"), h, "salts differ");

        let b = bcrypt::hash("pw", 4).unwrap().replacen("$2b$", "$2y$", 1);
        let stored = StoredHash::recognise(&b).unwrap();
        assert!(stored.verify("pw"));
        assert!(!stored.verify("PW"));
        assert_eq!(StoredHash::recognise("$apr1$x$y"), None);
        assert!(!StoredHash::Argon2("$argon2id$garbage".into()).verify("x"));
    }
}
