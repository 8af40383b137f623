//! The project-local cluster (`scripts/local-db.sh`) is its owner's alone: a password over TCP, a
//! private socket and folder, and a fallback folder someone else planted refused.
use std::process::Command;
use std::str::FromStr;

use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::support::{output_of, script};

/// The dev cluster's folder, as `scripts/local-db.sh status` says.
fn dev_cluster_dir() -> std::path::PathBuf {
    let out = output_of(script("local-db.sh", &["status"]));
    let text = String::from_utf8_lossy(&out.stderr);
    let dir = text
        .split("files in ")
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("no folder in {text}"));
    std::path::PathBuf::from(dir)
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[tokio::test]
async fn the_dev_cluster_is_its_owners_alone() {
    let url =
        std::env::var("DATABASE_URL").expect("DATABASE_URL: the dev cluster (make test sets it)");
    let with = PgConnectOptions::from_str(&url).expect("DATABASE_URL parses");
    // Without the password (any local user's view of it): refused.
    let without = PgConnectOptions::new_without_pgpass()
        .host(with.get_host())
        .port(with.get_port())
        .username(with.get_username())
        .database("postgres");
    let err = without
        .connect()
        .await
        .expect_err("a TCP connection without the password");
    assert!(err.to_string().contains("password"), "{err}");
    let wrong = without.clone().password("guess");
    let err = wrong.connect().await.expect_err("a wrong password");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    with.connect().await.expect("with the cluster's password");

    let dir = dev_cluster_dir();
    assert_eq!(mode(&dir.join("socket")), 0o700, "{}", dir.display());
    assert_eq!(mode(&dir.join("password")), 0o600);
    assert_eq!(mode(&dir), 0o700);
}

#[tokio::test]
async fn a_fallback_folder_planted_by_someone_else_is_refused() {
    // As root (CI) the test plants a folder owned by `nobody`; as anyone else it points the script
    // at a folder root owns: either way, a folder that is not the server user's.
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    let up = |base: &std::path::Path| {
        let mut up = script("local-db.sh", &["up"]);
        up.env("LOCAL_PG_BASE", base).env("LOCAL_PG_PORT", "54398");
        output_of(up)
    };
    let root = std::env::temp_dir().join(format!("livermore-plant-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let target = root.join("elsewhere");
    std::fs::create_dir_all(&target).unwrap();

    // A link to a folder of the attacker's choosing.
    let link = root.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = up(&link);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));

    // A folder someone else made first (as root: owned by nobody, open to all; else root's).
    let (planted, owner) = if root_user {
        let planted = root.join("planted");
        std::fs::create_dir_all(&planted).unwrap();
        assert!(
            Command::new("chown")
                .args(["nobody"])
                .arg(&planted)
                .status()
                .unwrap()
                .success()
        );
        (planted, "nobody")
    } else {
        (std::path::PathBuf::from("/var/tmp"), "root")
    };
    let out = up(&planted);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&format!("belongs to {owner}")), "{said}");
    assert!(!planted.join("dev").exists(), "a cluster made in it");

    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "nothing written through the link"
    );
    if root_user {
        assert_eq!(
            std::fs::read_dir(&planted).unwrap().count(),
            0,
            "nothing written into it"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
