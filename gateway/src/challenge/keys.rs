//! Loading the challenge's HMAC keys from `[challenge]` (a file or an environment variable).

use std::path::Path;

use tracing::warn;

use super::config::{ChallengeKeysConfig, parse_keys};
use super::token::KeyRing;

/// The key ring `[challenge]` names; a random one (with a warning) when it names none.
pub fn load(config: &ChallengeKeysConfig, base: &Path) -> Result<KeyRing, String> {
    if let Some(var) = &config.keys_env {
        let text = std::env::var(var)
            .map_err(|_| format!("keys_env: environment variable {var} is not set"))?;
        return KeyRing::new(parse_keys(&text, false)).map_err(|e| format!("keys_env {var}: {e}"));
    }
    if let Some(file) = &config.keys_file {
        let path = base.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("keys_file {}: {e}", path.display()))?;
        return KeyRing::new(parse_keys(&text, true))
            .map_err(|e| format!("keys_file {}: {e}", path.display()));
    }
    warn!(
        "[challenge] names no keys: passes are signed with a random key, so they end when this gateway restarts and other gateways refuse them"
    );
    Ok(KeyRing::random())
}
