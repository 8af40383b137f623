//! What the benchmarks share: PostgreSQL's client tools and how to hand them a server.
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor, PgConnection};

/// A scratch database of a benchmark's own: dropped (its connections ended) and created anew, then
/// dropped again by [`Scratch::drop`] at the end.
pub struct Scratch {
    /// A connection to `postgres`, to drop it from.
    admin: PgConnection,
    name: &'static str,
}

impl Scratch {
    /// Drops `name` if it is there, then creates it empty.
    pub async fn create(server: &PgConnectOptions, name: &'static str) -> Scratch {
        let admin = server
            .clone()
            .database("postgres")
            .connect()
            .await
            .expect("connect to postgres");
        let mut scratch = Scratch { admin, name };
        scratch.drop_database().await;
        // A constant of the benchmark's, not input.
        scratch
            .admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create the scratch database");
        scratch
    }

    async fn drop_database(&mut self) {
        self.admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await
            .expect("drop the scratch database");
    }

    /// Drops the database (ending what is still connected to it).
    pub async fn drop(mut self) {
        self.drop_database().await;
    }
}

/// A PostgreSQL client tool (pgbench, psql) of the newest Debian PostgreSQL installed, else from PATH.
pub fn pg_tool(name: &str) -> String {
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| name.to_owned())
}

/// Host, port and user for psql and pgbench, and the database as the last, positional argument: in
/// pgbench `-d` is `--debug`, not the database. The password goes through PGPASSWORD, never the
/// command line.
pub fn conn_args(o: &PgConnectOptions, database: &str) -> Vec<String> {
    vec![
        "-h".into(),
        o.get_host().into(),
        "-p".into(),
        o.get_port().to_string(),
        "-U".into(),
        o.get_username().into(),
        database.into(),
    ]
}

/// The password in a `postgres://user:password@…` URL, percent-decoded; empty when there is none.
pub fn password(url: &str) -> String {
    let userinfo = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .map_or("", |(userinfo, _)| userinfo);
    let raw = userinfo.split_once(':').map_or("", |(_, p)| p);
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| raw.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
