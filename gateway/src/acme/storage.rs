//! The ACME storage folder: the account's credentials and the last issued certificate, kept
//! across restarts so a restart serves the certificate it has instead of asking the CA.
//!
//! `account-<directory digest>.json` (the account key, as the CA client serialises it), `cert.pem` (the chain),
//! `key.pem` (its private key) and `domains` (the names it was ordered for, one per line).
//! Keys are written owner-only, every file is written beside and renamed over, so a crash
//! never leaves half a key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::tls::CertPair;

/// The storage folder.
#[derive(Debug, Clone)]
pub struct Storage {
    dir: PathBuf,
}

impl Storage {
    /// Storage in `dir`, created owner-only if missing.
    pub fn open(dir: PathBuf) -> Result<Storage, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Storage { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The account file for one CA: an account belongs to its directory, so a gateway
    /// moved from a staging CA to the real one does not present the wrong account.
    fn account_path(&self, directory: &str) -> PathBuf {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(directory.as_bytes());
        self.path(&format!("account-{}.json", &hex::encode(digest)[..16]))
    }

    /// The stored account credentials (JSON) at `directory`, if any.
    pub fn account(&self, directory: &str) -> Result<Option<String>, String> {
        read_optional(&self.account_path(directory))
    }

    /// Store the account credentials at `directory`.
    pub fn save_account(&self, directory: &str, json: &str) -> Result<(), String> {
        write_private(&self.account_path(directory), json.as_bytes())
    }

    /// The stored certificate, when it was ordered for exactly `names`.
    pub fn certificate(&self, names: &[String]) -> Result<Option<CertPair>, String> {
        let Some(stored) = read_optional(&self.path("domains"))? else {
            return Ok(None);
        };
        let stored: Vec<&str> = stored.lines().filter(|l| !l.is_empty()).collect();
        if stored != names.iter().map(String::as_str).collect::<Vec<_>>() {
            return Ok(None);
        }
        CertPair::load(&self.path("cert.pem"), &self.path("key.pem"))
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Store a certificate chain and key (PEM) ordered for `names`.
    pub fn save_certificate(&self, names: &[String], chain: &str, key: &str) -> Result<(), String> {
        write_private(&self.path("key.pem"), key.as_bytes())?;
        write_private(&self.path("cert.pem"), chain.as_bytes())?;
        write_private(&self.path("domains"), (names.join("\n") + "\n").as_bytes())
    }

    /// Where the certificate chain is kept (for logs and the expiry metric).
    pub fn certificate_path(&self) -> PathBuf {
        self.path("cert.pem")
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_found_only_for_the_names_it_was_ordered_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path().join("acme")).expect("open");
        let names = vec!["a.example".to_owned(), "b.example".to_owned()];
        assert!(storage.certificate(&names).expect("read").is_none());
        let params = rcgen::CertificateParams::new(names.clone()).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let (pem, key) = (cert.pem(), key.serialize_pem());
        storage.save_certificate(&names, &pem, &key).expect("save");
        let back = storage.certificate(&names).expect("read").expect("stored");
        assert_eq!(back.chain[0].as_ref(), cert.der().as_ref());
        assert!(storage.certificate(&names[..1]).expect("read").is_none());
        let mode = std::fs::metadata(dir.path().join("acme/key.pem"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
