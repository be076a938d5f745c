//! The binary against the machine's PostgreSQL over TLS (`ssl = on`, Debian's snakeoil
//! certificate), with the database URL given as a file (`REGRELAY_DATABASE_URL_FILE`).

use std::process::Command;

use regrelay_testkit::{unused_port, TestDatabase};

const BIN: &str = env!("CARGO_BIN_EXE_regrelay");
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// Writes `content` to a fresh file under the temporary directory; removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(content: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("regrelay-test-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn regrelay(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.args(args).env_clear();
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run regrelay")
}

#[tokio::test]
async fn migrate_over_verified_tls_with_the_url_from_a_file() {
    let database = TestDatabase::create("bin_tls_migrate").await;
    let url = format!("{}?sslmode=verify-ca&sslrootcert={SNAKEOIL}", database.url);
    // As `echo "$URL" > file` writes it: with a trailing newline.
    let file = TempFile::new(&format!("{url}\n"));
    let output = regrelay(
        &["migrate"],
        &[("REGRELAY_DATABASE_URL_FILE", &file.0.display().to_string())],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{stderr}");

    // Both the plain variable and the file: refused, naming both.
    let output = regrelay(
        &["migrate"],
        &[
            ("REGRELAY_DATABASE_URL_FILE", &file.0.display().to_string()),
            ("REGRELAY_DATABASE_URL", &url),
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("REGRELAY_DATABASE_URL and REGRELAY_DATABASE_URL_FILE"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_stops_at_start_up_when_the_certificate_does_not_name_the_host() {
    let database = TestDatabase::create("bin_tls_mismatch").await;
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={SNAKEOIL}",
        database.url.replace("postgres@", "postgres:pw-s3kr1t@")
    );
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", unused_port());
    let listen = format!("127.0.0.1:{}", unused_port());
    let output = regrelay(
        &["serve"],
        &[
            ("REGRELAY_DATABASE_URL", &url),
            ("REGRELAY_AMQP_URL", &amqp),
            ("REGRELAY_LISTEN", &listen),
            ("REGRELAY_INGEST_TOKEN", "tls-test-token"),
            ("REGRELAY_ADMIN_PASSWORD", "tls-test-password"),
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let all = format!("{stdout}\n{stderr}");
    assert!(all.contains("host-name mismatch"), "{all}");
    assert!(all.contains("\"127.0.0.1\""), "{all}");
    assert!(!all.contains("pw-s3kr1t"), "{all}");
}
