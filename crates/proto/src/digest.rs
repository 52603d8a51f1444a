//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and the streaming hasher.

use sha2::digest::common::hazmat::SerializableState as _;
use sha2::Digest as _;
use std::fmt;
use std::str::FromStr;

/// The hash algorithms a registry verifies. Others are syntactically valid per the
/// spec but unsupported here, which is `DIGEST_INVALID` / `UNSUPPORTED` to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest. Stored in its canonical string form because that is what every
/// layer (headers, SQL keys, storage paths) needs; the algorithm is derived on demand.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("invalid digest format: {0:?}")]
    Invalid(String),
    #[error("unsupported digest algorithm: {0:?}")]
    UnsupportedAlgorithm(String),
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        if self.0.starts_with("sha512:") {
            Algorithm::Sha512
        } else {
            Algorithm::Sha256
        }
    }

    /// The hex part after `algorithm:`.
    pub fn hex(&self) -> &str {
        &self.0[self.algorithm().name().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Digest of a complete byte slice (manifests; small data only).
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish()
    }

    /// Whether `s` has the general `algorithm:encoded` shape of the spec, even if the
    /// algorithm is not one we support. Used to pick `DIGEST_INVALID` vs a tag error.
    pub fn looks_like_digest(s: &str) -> bool {
        s.contains(':')
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s.split_once(':').ok_or_else(|| DigestError::Invalid(s.to_owned()))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ if valid_algorithm_component(alg) => return Err(DigestError::UnsupportedAlgorithm(alg.to_owned())),
            _ => return Err(DigestError::Invalid(s.to_owned())),
        };
        let lower_hex = hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hex.len() != algorithm.hex_len() || !lower_hex {
            return Err(DigestError::Invalid(s.to_owned()));
        }
        Ok(Digest(s.to_owned()))
    }
}

/// `[a-z0-9]+([+._-][a-z0-9]+)*` from the image-spec digest grammar.
fn valid_algorithm_component(alg: &str) -> bool {
    !alg.is_empty()
        && alg
            .split(['+', '.', '_', '-'])
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const SAVED_SHA256: u8 = 1;
const SAVED_SHA512: u8 = 2;

/// A streaming hasher for either algorithm. `sha2` picks the SHA-NI / AVX2 code path at
/// run time, so this is hardware accelerated where the CPU allows it.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The hash state as bytes, to be stored with an upload session so that any
    /// instance can continue the upload without re-reading the bytes already hashed.
    /// The format is sha2's serialized core state behind a one-byte algorithm tag.
    pub fn save(&self) -> Vec<u8> {
        let (tag, state) = match self {
            Hasher::Sha256(h) => (SAVED_SHA256, h.serialize().to_vec()),
            Hasher::Sha512(h) => (SAVED_SHA512, h.serialize().to_vec()),
        };
        [&[tag][..], &state].concat()
    }

    /// A hasher from bytes [`Hasher::save`] wrote; `None` for anything else.
    pub fn restore(saved: &[u8]) -> Option<Hasher> {
        let (tag, state) = saved.split_first()?;
        match *tag {
            SAVED_SHA256 => sha2::Sha256::deserialize(state.try_into().ok()?).ok().map(Hasher::Sha256),
            SAVED_SHA512 => sha2::Sha512::deserialize(state.try_into().ok()?).ok().map(Hasher::Sha512),
            _ => None,
        }
    }

    pub fn finish(self) -> Digest {
        let (name, hex) = match self {
            Hasher::Sha256(h) => ("sha256", hex::encode(h.finalize())),
            Hasher::Sha512(h) => ("sha512", hex::encode(h.finalize())),
        };
        Digest(format!("{name}:{hex}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_hash_state_continues_where_it_stopped() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            // Split points inside a block, on a block boundary, and at the very start.
            for split in [0, 1, 63, 64, 127, 128, 99_999] {
                let mut first = Hasher::new(alg);
                first.update(&data[..split]);
                let mut resumed = Hasher::restore(&first.save()).unwrap();
                assert_eq!(resumed.algorithm(), alg);
                resumed.update(&data[split..]);
                assert_eq!(resumed.finish(), Digest::of(alg, &data), "{alg:?} split at {split}");
            }
        }
        assert!(Hasher::restore(b"").is_none());
        assert!(Hasher::restore(&[1, 2, 3]).is_none());
        assert!(Hasher::restore(&[9; 120]).is_none());
    }

    #[test]
    fn parses_supported_digests() {
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d, Digest::of(Algorithm::Sha256, b""));
        let d512 = Digest::of(Algorithm::Sha512, b"abc");
        assert_eq!(d512.hex().len(), 128);
        assert_eq!(d512.as_str().parse::<Digest>().unwrap(), d512);
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert_eq!(bad.parse::<Digest>(), Err(DigestError::Invalid(bad.into())), "{bad}");
        }
        assert_eq!(
            "md5:d41d8cd98f00b204e9800998ecf8427e".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm("md5".into()))
        );
    }
}
