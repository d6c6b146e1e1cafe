//! Loading the challenge's HMAC keys from `[challenge]` (a file or an environment variable).

use std::path::Path;

use tracing::warn;

use super::config::{ChallengeKeysConfig, parse_keys};
use super::token::KeyRing;

/// The key ring `[challenge]` names; `None` when it names none.
pub fn load(config: &ChallengeKeysConfig, base: &Path) -> Result<Option<KeyRing>, String> {
    if let Some(var) = &config.keys_env {
        let text = std::env::var(var)
            .map_err(|_| format!("keys_env: environment variable {var} is not set"))?;
        return KeyRing::new(parse_keys(&text, false))
            .map(Some)
            .map_err(|e| format!("keys_env {var}: {e}"));
    }
    if let Some(file) = &config.keys_file {
        let path = base.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("keys_file {}: {e}", path.display()))?;
        return KeyRing::new(parse_keys(&text, true))
            .map(Some)
            .map_err(|e| format!("keys_file {}: {e}", path.display()));
    }
    Ok(None)
}

/// A random key ring for a gateway whose `[challenge]` names no keys, with the warning that
/// says what that costs.
pub fn random() -> KeyRing {
    warn!(
        "[challenge] names no keys: passes are signed with a random key, so they end when this gateway restarts and other gateways refuse them"
    );
    KeyRing::random()
}
