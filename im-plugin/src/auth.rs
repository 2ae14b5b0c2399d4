//! Token authentication: the MQTT username is the user id, the password a JWT whose `sub` equals
//! it and whose `exp` has not passed. Checked on every connection; no session is trusted without it.

use std::fs;
use std::io::Write;
use std::path::Path;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// An admin token (the admin HTTP API accepts only these).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    adm: bool,
}

/// Why a token was refused (logged, never sent to the client beyond "not authorized").
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("token is for user {0:?}, not for the username given")]
    WrongUser(String),
    #[error("invalid user id")]
    BadUserId,
    #[error("not an admin token")]
    NotAdmin,
}

/// Verifies tokens; issues HS256 ones when it holds the secret.
pub struct Authenticator {
    keys: Vec<(DecodingKey, Algorithm)>,
    signer: Option<EncodingKey>,
}

impl Authenticator {
    /// Builds the key set from config, generating and persisting an HS256 secret in `data_dir`
    /// when none is configured.
    pub fn load(cfg: &AuthConfig, data_dir: &Path) -> anyhow::Result<Authenticator> {
        let secret = match &cfg.hs256_secret {
            Some(s) if !s.is_empty() => s.as_bytes().to_vec(),
            _ => load_or_create_secret(data_dir)?,
        };
        let mut keys = vec![(DecodingKey::from_secret(&secret), Algorithm::HS256)];
        if let Some(path) = &cfg.public_key_file {
            let pem = fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading public key {}: {e}", path.display()))?;
            let alg = cfg.public_key_algorithm.as_deref().unwrap_or("RS256");
            let key = match alg {
                "RS256" => (DecodingKey::from_rsa_pem(&pem)?, Algorithm::RS256),
                "ES256" => (DecodingKey::from_ec_pem(&pem)?, Algorithm::ES256),
                other => {
                    anyhow::bail!("unsupported public_key_algorithm {other:?} (RS256 or ES256)")
                }
            };
            keys.push(key);
        }
        Ok(Authenticator {
            keys,
            signer: Some(EncodingKey::from_secret(&secret)),
        })
    }

    /// Checks that `token` is valid now and was issued to `user`.
    pub fn verify(&self, user: &str, token: Option<&str>) -> Result<(), AuthError> {
        if !crate::topics::valid_user_id(user) {
            return Err(AuthError::BadUserId);
        }
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let claims = self.decode(token)?;
        if claims.sub == user {
            Ok(())
        } else {
            Err(AuthError::WrongUser(claims.sub))
        }
    }

    /// Checks an admin token (claim `adm: true`, valid now); returns the admin's name.
    pub fn verify_admin(&self, token: &str) -> Result<String, AuthError> {
        let claims = self.decode(token)?;
        if claims.adm {
            Ok(claims.sub)
        } else {
            Err(AuthError::NotAdmin)
        }
    }

    /// The claims of a token that one of the keys signed and that is valid now.
    fn decode(&self, token: &str) -> Result<Claims, AuthError> {
        let mut last = AuthError::Missing;
        for (key, alg) in &self.keys {
            let mut v = Validation::new(*alg);
            v.leeway = 0;
            v.set_required_spec_claims(&["exp", "sub"]);
            match decode::<Claims>(token, key, &v) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = AuthError::Invalid(e.to_string()),
            }
        }
        Err(last)
    }

    /// Issues an HS256 token for `user`, valid for `ttl_secs`.
    pub fn issue(&self, user: &str, ttl_secs: u64) -> anyhow::Result<String> {
        self.issue_with(user, ttl_secs, false)
    }

    /// Issues an HS256 admin token for `name` (the name audit lines show), valid for
    /// `ttl_secs`.
    pub fn issue_admin(&self, name: &str, ttl_secs: u64) -> anyhow::Result<String> {
        self.issue_with(name, ttl_secs, true)
    }

    fn issue_with(&self, user: &str, ttl_secs: u64, adm: bool) -> anyhow::Result<String> {
        let signer = self
            .signer
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no signing key"))?;
        anyhow::ensure!(
            crate::topics::valid_user_id(user),
            "invalid user id {user:?}"
        );
        let exp = now_secs() + ttl_secs;
        Ok(encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: user.to_string(),
                exp,
                adm,
            },
            signer,
        )?)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn load_or_create_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("jwt-secret");
    if let Ok(s) = fs::read_to_string(&path) {
        let s = s.trim();
        anyhow::ensure!(!s.is_empty(), "{} is empty", path.display());
        return Ok(s.as_bytes().to_vec());
    }
    fs::create_dir_all(data_dir)?;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(&path) {
        Ok(mut f) => {
            f.write_all(hex.as_bytes())?;
            f.sync_all()?;
            Ok(hex.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(fs::read_to_string(&path)?.trim().as_bytes().to_vec())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_is_private_and_stable_and_tokens_are_bound_to_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authenticator::load(&AuthConfig::default(), dir.path()).unwrap();
        let b = Authenticator::load(&AuthConfig::default(), dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("jwt-secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let t = a.issue("alice", 60).unwrap();
        assert!(b.verify("alice", Some(&t)).is_ok());
        assert!(matches!(
            b.verify("bob", Some(&t)),
            Err(AuthError::WrongUser(_))
        ));
        assert!(b.verify("alice", None).is_err());
        assert!(b.verify("alice", Some("garbage")).is_err());
    }

    #[test]
    fn expired_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authenticator::load(&AuthConfig::default(), dir.path()).unwrap();
        let signer = a.signer.as_ref().unwrap();
        let t = encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "alice".into(),
                exp: now_secs() - 5,
                adm: false,
            },
            signer,
        )
        .unwrap();
        assert!(matches!(
            a.verify("alice", Some(&t)),
            Err(AuthError::Invalid(_))
        ));
    }
}
