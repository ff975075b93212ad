//! Client authentication logic that needs no socket: how a configured
//! password is stored, what a client must answer, and the server side of
//! the SCRAM-SHA-256 exchange. `client::auth` drives these over the wire.

pub mod scram;
pub mod secret;

use crate::config::{AuthMethod, UserConfig};
use md5::{Digest, Md5};
use secret::{ScramVerifier, Secret};

/// How one user's clients prove who they are, prepared once at start-up:
/// deriving a SCRAM verifier from a plain password is deliberately slow.
#[derive(Debug, Clone)]
pub enum ClientCheck {
    Trust,
    /// "md5" + md5(password || user), as pg_authid stores it.
    Md5 {
        stored: String,
    },
    Scram(ScramVerifier),
}

impl ClientCheck {
    pub fn for_user(user: &UserConfig) -> ClientCheck {
        let name = user.name.get_ref();
        let secret = user.password.as_ref().map(|p| p.get_ref());
        match (user.auth.get_ref(), secret) {
            (AuthMethod::Trust, _) | (_, None) => ClientCheck::Trust,
            (AuthMethod::Md5, Some(Secret::Md5(hash))) => ClientCheck::Md5 {
                stored: hash.clone(),
            },
            (AuthMethod::Md5, Some(Secret::Plain(password))) => ClientCheck::Md5 {
                stored: postgres_protocol::password::md5(password.as_bytes(), name),
            },
            (AuthMethod::ScramSha256, Some(Secret::Scram(verifier))) => {
                ClientCheck::Scram(verifier.clone())
            }
            (AuthMethod::ScramSha256, Some(Secret::Plain(password))) => {
                ClientCheck::Scram(ScramVerifier::from_password(password))
            }
            // Validation refuses md5 with a verifier and SCRAM with an md5
            // hash; should one slip through, nobody logs in.
            (AuthMethod::Md5, Some(Secret::Scram(_)))
            | (AuthMethod::ScramSha256, Some(Secret::Md5(_))) => ClientCheck::Md5 {
                stored: String::new(),
            },
        }
    }
}

/// What a client must send in answer to AuthenticationMD5Password:
/// "md5" + md5(stored hash's hex digits || salt).
pub fn md5_response(stored: &str, salt: [u8; 4]) -> Option<String> {
    let hex = stored.strip_prefix("md5")?;
    let mut md5 = Md5::new();
    md5.update(hex.as_bytes());
    md5.update(salt);
    let digest = md5.finalize();
    let mut out = String::with_capacity(35);
    out.push_str("md5");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_response_matches_libpq() {
        let stored = postgres_protocol::password::md5(b"secret", "app");
        let salt = [1, 2, 3, 4];
        let expected = postgres_protocol::authentication::md5_hash(b"app", b"secret", salt);
        assert_eq!(md5_response(&stored, salt), Some(expected));
        assert_eq!(md5_response("", salt), None);
    }
}
