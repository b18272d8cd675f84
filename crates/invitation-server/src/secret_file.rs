//! Where a server started without a secret keeps the one it generated: a
//! file only its owner can read, never the terminal or the log.
//!
//! The path is `secret_file` when configured; otherwise
//! `$XDG_RUNTIME_DIR/invitation-server-<port>.secret` (a per-user directory
//! nobody else may enter, emptied at logout), or, without
//! `XDG_RUNTIME_DIR`, `secret` in a new directory with a random name under
//! the system temporary directory, made readable by its owner only (0700).
//! The file itself is 0600 on Unix.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `secret` to the configured path, or to the default place for a
/// server on `port` (`runtime_dir`: the value of `XDG_RUNTIME_DIR`, if
/// any). Returns the path written.
pub fn write(
    secret: &str,
    configured: Option<&Path>,
    runtime_dir: Option<&Path>,
    port: u16,
) -> io::Result<PathBuf> {
    let path = match (configured, runtime_dir) {
        (Some(path), _) => path.to_owned(),
        (None, Some(dir)) if dir.is_absolute() => {
            dir.join(format!("invitation-server-{port}.secret"))
        }
        (None, _) => private_dir()?.join("secret"),
    };
    write_private(&path, secret)?;
    Ok(path)
}

/// The secret a durable server keeps in its data directory: read from
/// `path` when it exists, otherwise `generate`d and written there owner-only
/// (0600). Tokens minted with it stay valid across restarts, like the calls
/// they resume. Returns the secret and whether it was made now.
pub fn load_or_create(
    path: &Path,
    generate: impl FnOnce() -> String,
) -> io::Result<(String, bool)> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let secret = text.trim_end_matches(['\n', '\r']).to_owned();
            if secret.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is empty", path.display()),
                ));
            }
            Ok((secret, false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let secret = generate();
            write_private(path, &secret)?;
            Ok((secret, true))
        }
        Err(e) => Err(e),
    }
}

/// A new directory only the owner may enter, with a random name (nobody can
/// prepare it in advance).
fn private_dir() -> io::Result<PathBuf> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(io::Error::other)?;
    let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("invitation-server-{name}"));
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir)?;
    Ok(dir)
}

/// Creates or truncates `path` readable and writable by its owner only, and
/// writes `secret` and a newline.
fn write_private(path: &Path, secret: &str) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    // An existing file keeps its mode on open: set it in any case.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = private_dir().unwrap();
        assert!(dir.starts_with(std::env::temp_dir()));
        dir
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn written_where_configured_or_in_the_runtime_dir_owner_only() {
        let dir = scratch();
        let configured = dir.join("my.secret");
        // Even a file that existed with wider permissions ends up 0600.
        fs::write(&configured, "old").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&configured, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let path = write("s3cret", Some(&configured), Some(&dir), 7600).unwrap();
        assert_eq!(path, configured);
        assert_eq!(fs::read_to_string(&path).unwrap(), "s3cret\n");
        let path = write("s3cret", None, Some(&dir), 7600).unwrap();
        assert_eq!(path, dir.join("invitation-server-7600.secret"));
        #[cfg(unix)]
        {
            assert_eq!(mode(&configured), 0o600);
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(&dir), 0o700);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_kept_secret_is_made_once_then_read_back() {
        let dir = scratch();
        let path = dir.join("secret");
        let (first, made) = load_or_create(&path, || "generated-secret-1".into()).unwrap();
        assert_eq!((first.as_str(), made), ("generated-secret-1", true));
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        let (again, made) = load_or_create(&path, || unreachable!("kept")).unwrap();
        assert_eq!((again.as_str(), made), ("generated-secret-1", false));
        fs::write(&path, "").unwrap();
        let err = load_or_create(&path, || unreachable!("kept")).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_runtime_dir_a_new_private_directory() {
        let a = write("x", None, None, 1).unwrap();
        let b = write("x", None, Some(Path::new("relative")), 1).unwrap();
        assert_ne!(a.parent(), b.parent(), "a fresh directory each time");
        #[cfg(unix)]
        {
            assert_eq!(mode(a.parent().unwrap()), 0o700);
            assert_eq!(mode(&a), 0o600);
        }
        for p in [a, b] {
            fs::remove_dir_all(p.parent().unwrap()).unwrap();
        }
    }
}
