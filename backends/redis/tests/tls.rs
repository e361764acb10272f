//! `rediss://` against a private TLS `redis-server` with a throw-away CA (run with
//! `--features tls`; needs `openssl` and a TLS-enabled `redis-server`).
#![cfg(feature = "tls")]

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use courier_core::{Message, Queue, QueueExt};
use courier_redis::RedisBackend;

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn rediss_urls_connect_over_tls() {
    let dir = std::env::temp_dir().join(format!("courier-tls-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let ok = run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.crt"),
    ])) && run(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
    ])) && {
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .is_ok()
    } && run(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        &p("server.crt"),
        "-extfile",
        &p("ext.cnf"),
    ]));
    if !ok {
        eprintln!("SKIPPED: openssl could not make test certificates");
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let Ok(mut child) = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &p("server.crt"),
            "--tls-key-file",
            &p("server.key"),
            "--tls-ca-cert-file",
            &p("ca.crt"),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        eprintln!("SKIPPED: cannot start redis-server");
        return;
    };
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let ca = std::fs::read(dir.join("ca.crt")).expect("ca");
    let result = RedisBackend::builder()
        .url(format!("rediss://localhost:{port}"))
        .tls_root_certificate(ca)
        .build()
        .await;
    let outcome = async {
        let backend = result.map_err(|e| format!("connect: {e}"))?;
        let q: &dyn Queue = &backend;
        q.publish("t", Message::new("k", "tls"))
            .await
            .map_err(|e| format!("publish: {e}"))?;
        q.receive_one("t", Duration::from_secs(1))
            .await
            .map_err(|e| format!("receive: {e}"))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(outcome.expect("TLS round trip").is_some());
}
