//! A user's password as the config file gives it: plain text, an md5 hash
//! ("md5" + 32 hex digits) or a SCRAM-SHA-256 verifier as stored in
//! `pg_authid.rolpassword`.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// What `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` holds.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(..)")
    }
}

impl ScramVerifier {
    pub fn parse(text: &str) -> Result<ScramVerifier, String> {
        let bad = |why: &str| format!("invalid SCRAM-SHA-256 verifier: {why}");
        let rest = text
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or_else(|| bad("missing prefix"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or_else(|| bad("expected <iterations>:<salt>$<StoredKey>:<ServerKey>"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or_else(|| bad("expected <iterations>:<salt>"))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or_else(|| bad("expected <StoredKey>:<ServerKey>"))?;
        let key = |b64: &str| -> Result<[u8; 32], String> {
            BASE64
                .decode(b64)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| bad("keys must be 32 bytes in base64"))
        };
        Ok(ScramVerifier {
            iterations: iterations
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad("iterations must be a positive number"))?,
            salt: BASE64.decode(salt).map_err(|_| bad("salt is not base64"))?,
            stored_key: key(stored_key)?,
            server_key: key(server_key)?,
        })
    }

    /// Derives a verifier from a plain password, with a fresh random salt.
    pub fn from_password(password: &str) -> ScramVerifier {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        // postgres-protocol writes exactly the format parse() reads.
        match ScramVerifier::parse(&text) {
            Ok(verifier) => verifier,
            Err(why) => unreachable!("postgres-protocol wrote a bad verifier: {why}"),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    /// "md5" followed by md5(password || user) in hex.
    Md5(String),
    Scram(ScramVerifier),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Plain(_) => "Secret::Plain(..)",
            Secret::Md5(_) => "Secret::Md5(..)",
            Secret::Scram(_) => "Secret::Scram(..)",
        })
    }
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, String> {
        if text.starts_with("SCRAM-SHA-256$") {
            return ScramVerifier::parse(text).map(Secret::Scram);
        }
        let is_md5 = text.len() == 35
            && text.starts_with("md5")
            && text[3..].bytes().all(|b| b.is_ascii_hexdigit());
        if is_md5 {
            return Ok(Secret::Md5(text.to_owned()));
        }
        Ok(Secret::Plain(text.to_owned()))
    }

    pub fn plain(&self) -> Option<&str> {
        match self {
            Secret::Plain(text) => Some(text),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_each_form() {
        assert_eq!(Secret::parse("secret"), Ok(Secret::Plain("secret".into())));
        let md5 = postgres_protocol::password::md5(b"secret", "app");
        assert_eq!(Secret::parse(&md5), Ok(Secret::Md5(md5.clone())));
        let scram = postgres_protocol::password::scram_sha_256(b"secret");
        assert!(matches!(Secret::parse(&scram), Ok(Secret::Scram(_))));
        assert!(Secret::parse("SCRAM-SHA-256$4096:c2FsdA==$bad").is_err());
    }

    #[test]
    fn from_password_round_trips() {
        let v = ScramVerifier::from_password("pw");
        assert_eq!(v.iterations, 4096);
        assert!(!v.salt.is_empty());
    }
}
