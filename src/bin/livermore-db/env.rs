//! Which database a command talks to, built from the environment: `--env local` from
//! `LIVERMORE_DATABASE_URL`, `--env sandbox` from `PG_SANDBOX_*`.
//!
//! The connection is built from parts ([`PgConnectOptions`]); a password is never spliced into a URL or a
//! command line, and never printed: the target shows as `user:***@host:port/database`.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, PgConnection};

use crate::failure::{Failure, describe};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The server-side statement timeout of every session (`LIVERMORE_STATEMENT_TIMEOUT`, seconds).
const DEFAULT_STATEMENT_TIMEOUT_SECS: u64 = 15 * 60;

/// Every session: a statement timeout, and server-side TCP keepalives so that a session whose
/// operator vanished is ended (and its locks freed) within minutes. sqlx sets no client-side TCP
/// keepalive; the command's own deadline (`LIVERMORE_COMMAND_TIMEOUT`, see `main`) bounds a server
/// that stops answering.
fn bounded(options: PgConnectOptions) -> PgConnectOptions {
    let statement = std::env::var("LIVERMORE_STATEMENT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_STATEMENT_TIMEOUT_SECS);
    options.options([
        ("statement_timeout", format!("{statement}s")),
        ("tcp_keepalives_idle", "60".to_owned()),
        ("tcp_keepalives_interval", "10".to_owned()),
        ("tcp_keepalives_count", "6".to_owned()),
    ])
}

/// A database to work on.
pub struct Target {
    options: PgConnectOptions,
    password: Option<String>,
    /// `user:***@host:port/database`.
    pub shown: String,
    pub database: String,
    /// Said once on stderr before the command runs (an unauthenticated server, say).
    pub warning: Option<String>,
}

fn mask(options: &PgConnectOptions, has_password: bool, database: &str) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => options.get_host().to_owned(),
    };
    format!(
        "{}{}@{}:{}/{}",
        options.get_username(),
        if has_password { ":***" } else { "" },
        host,
        options.get_port(),
        database
    )
}

impl Target {
    /// `LIVERMORE_DATABASE_URL`, which `make` sets to the project-local database unless you set it.
    pub fn local() -> Result<Target, Failure> {
        let url = std::env::var("LIVERMORE_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                Failure::new("LIVERMORE_DATABASE_URL is not set (make migrate sets it to the local database)")
            })?;
        let options = PgConnectOptions::from_str(&url)
            .map_err(|_| Failure::new("LIVERMORE_DATABASE_URL is not a valid postgres:// URL"))?;
        let password = url_password(&url);
        let database = options
            .get_database()
            .unwrap_or(options.get_username())
            .to_owned();
        let options = bounded(options);
        Ok(Target {
            shown: mask(&options, password.is_some(), &database),
            options,
            password,
            database,
            warning: None,
        })
    }

    /// `PG_SANDBOX_*`: host, user and password required; port, database, sslmode and root
    /// certificate optional. TLS is always on.
    pub fn sandbox(var: impl Fn(&str) -> Option<String>) -> Result<Target, Failure> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let required = ["PG_SANDBOX_HOST", "PG_SANDBOX_USER", "PG_SANDBOX_PASSWORD"];
        let [Some(host), Some(user), Some(password)] = required.map(get) else {
            let missing: Vec<&str> = required
                .iter()
                .copied()
                .filter(|name| get(name).is_none())
                .collect();
            return Err(Failure::new(format!(
                "missing required environment variable{}: {}",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", ")
            )));
        };
        let port = match get("PG_SANDBOX_PORT") {
            None => 5432,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                Failure::new(format!("PG_SANDBOX_PORT must be a port number, got {p:?}"))
            })?,
        };
        let database = get("PG_SANDBOX_DATABASE").unwrap_or_else(|| "livermore".to_owned());
        let root_cert = match get("PG_SANDBOX_SSLROOTCERT") {
            None => None,
            Some(cert) => {
                let path = PathBuf::from(cert);
                if !path.is_file() {
                    return Err(Failure::usage(format!(
                        "PG_SANDBOX_SSLROOTCERT {} is not a readable file",
                        path.display()
                    )));
                }
                Some(path)
            }
        };
        // The server is authenticated unless the operator names `require`: the password goes only to
        // a server whose certificate chains to a trusted CA (and, by default, names the host).
        let mut warning = None;
        let ssl_mode = match get("PG_SANDBOX_SSLMODE").as_deref() {
            None | Some("verify-full") => PgSslMode::VerifyFull,
            Some("verify-ca") if root_cert.is_none() => {
                return Err(Failure::usage(
                    "PG_SANDBOX_SSLMODE=verify-ca needs PG_SANDBOX_SSLROOTCERT (the CA that signs the server's certificate); without it, use verify-full",
                ));
            }
            Some("verify-ca") => PgSslMode::VerifyCa,
            Some("require") if root_cert.is_some() => {
                return Err(Failure::usage(
                    "PG_SANDBOX_SSLROOTCERT is ignored by PG_SANDBOX_SSLMODE=require, which checks no certificate: use verify-full (or verify-ca)",
                ));
            }
            Some("require") => {
                warning = Some(
                    "warning: PG_SANDBOX_SSLMODE=require: the connection is encrypted but the server is NOT authenticated; anyone in the network path can receive the password".to_owned(),
                );
                PgSslMode::Require
            }
            Some(other) => {
                return Err(Failure::usage(format!(
                    "PG_SANDBOX_SSLMODE {other:?} is not allowed: the sandbox needs TLS; valid: verify-full (the default), verify-ca, require"
                )));
            }
        };
        // Every part explicitly; `main` has removed the shell's PG* variables, which sqlx would
        // otherwise read (PGOPTIONS, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY, …).
        let mut options = PgConnectOptions::new_without_pgpass()
            .host(&host)
            .port(port)
            .username(&user)
            .password(&password)
            .database(&database)
            .ssl_mode(ssl_mode)
            .application_name("livermore-db");
        if let Some(path) = root_cert {
            options = options.ssl_root_cert(path);
        }
        let options = bounded(options);
        Ok(Target {
            shown: mask(&options, true, &database),
            options,
            password: Some(password),
            database,
            warning,
        })
    }

    /// The same server's maintenance database, `postgres`.
    fn maintenance(&self) -> PgConnectOptions {
        self.options.clone().database("postgres")
    }

    /// The password, for [`crate::failure::report`] to scrub out of messages.
    pub fn secret(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Connects to the target database; `Ok(None)` when it does not exist.
    pub async fn connect(&self) -> Result<Option<PgConnection>, Failure> {
        match connect(&self.options).await {
            Ok(conn) => Ok(Some(conn)),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => Ok(None),
            Err(e) => Err(self.connect_failure(&e)),
        }
    }

    /// Connects to the target database, which must exist.
    pub async fn connect_existing(&self) -> Result<PgConnection, Failure> {
        self.connect().await?.ok_or_else(|| {
            Failure::new(format!(
                "database {:?} does not exist on {} (make migrate creates it)",
                self.database, self.shown
            ))
        })
    }

    /// Creates the target database through the maintenance database. `Ok(false)` when it was created
    /// meanwhile by someone else.
    #[expect(
        clippy::disallowed_methods,
        reason = "CREATE DATABASE takes an identifier, which no bind parameter can stand for: the name is quoted"
    )]
    pub async fn create_database(&self) -> Result<bool, Failure> {
        let mut conn = connect(&self.maintenance())
            .await
            .map_err(|e| self.connect_failure(&e))?;
        let create =
            sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", quote_ident(&self.database)));
        match sqlx::raw_sql(create).execute(&mut conn).await {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(false),
            Err(e) => Err(Failure::new(format!(
                "cannot create database {:?}: {}",
                self.database,
                describe(&e)
            ))),
        }
    }

    pub fn connect_failure(&self, e: &sqlx::Error) -> Failure {
        let reason = match e {
            sqlx::Error::Tls(tls) if tls.to_string().contains("does not support TLS") => {
                "the server does not offer TLS, and this connection requires it".to_owned()
            }
            e => describe(e),
        };
        // Only the driver's words are scrubbed: the target is ours and already masked.
        Failure::new(format!("cannot connect to {}: {}", self.shown, reason))
    }
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        ))),
    }
}

/// `"name"`, with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether the URL carries a password (so that it is masked, and scrubbed from messages).
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn missing_variables_are_all_named() {
        let err = Target::sandbox(vars(&[("PG_SANDBOX_USER", "u")]))
            .err()
            .unwrap();
        assert_eq!(
            err.message,
            "missing required environment variables: PG_SANDBOX_HOST, PG_SANDBOX_PASSWORD"
        );
        let err = Target::sandbox(vars(&[])).err().unwrap();
        assert!(
            err.message
                .contains("PG_SANDBOX_HOST, PG_SANDBOX_USER, PG_SANDBOX_PASSWORD")
        );
    }

    #[test]
    fn the_target_is_shown_without_the_password() {
        let pw = "p@ss:w/o#r%d?&$'\" x";
        let t = Target::sandbox(vars(&[
            ("PG_SANDBOX_HOST", "db.example"),
            ("PG_SANDBOX_USER", "admin"),
            ("PG_SANDBOX_PASSWORD", pw),
        ]))
        .ok()
        .unwrap();
        assert_eq!(t.shown, "admin:***@db.example:5432/livermore");
        assert_eq!(t.secret(), Some(pw));
    }

    #[test]
    fn only_tls_modes_are_accepted() {
        let base = [
            ("PG_SANDBOX_HOST", "h"),
            ("PG_SANDBOX_USER", "u"),
            ("PG_SANDBOX_PASSWORD", "p"),
        ];
        for (mode, ok) in [
            ("require", true),
            ("verify-full", true),
            ("verify-ca", false),
            ("disable", false),
            ("prefer", false),
        ] {
            let mut v = base.to_vec();
            v.push(("PG_SANDBOX_SSLMODE", mode));
            assert_eq!(Target::sandbox(vars(&v)).is_ok(), ok, "{mode}");
        }
        let t = Target::sandbox(vars(&base)).ok().unwrap();
        assert!(
            matches!(t.options.get_ssl_mode(), PgSslMode::VerifyFull),
            "the default"
        );
        assert!(t.warning.is_none());
        let mut v = base.to_vec();
        v.push(("PG_SANDBOX_SSLMODE", "require"));
        let t = Target::sandbox(vars(&v)).ok().unwrap();
        assert!(t.warning.unwrap().contains("NOT authenticated"));
        v.push(("PG_SANDBOX_SSLROOTCERT", "Cargo.toml"));
        assert!(Target::sandbox(vars(&v)).err().unwrap().usage);
        let mut v = base.to_vec();
        v.push(("PG_SANDBOX_PORT", "not-a-port"));
        assert!(Target::sandbox(vars(&v)).is_err());
    }

    #[test]
    fn url_passwords_are_found_for_masking() {
        assert_eq!(
            url_password("postgres://u:secret@h:1/d").as_deref(),
            Some("secret")
        );
        assert_eq!(url_password("postgres://u@h/d"), None);
        assert_eq!(url_password("postgres://h/d"), None);
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
