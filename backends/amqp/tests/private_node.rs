//! The private-node support module checks itself, without the backend: a durable stream on a
//! private node keeps 100 publisher-confirmed messages across a SIGKILL of the node and a restart
//! on the same ports and data. Also prints how long a start and a restart take here.

#[path = "support/node.rs"]
mod node;

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

const STREAM: &str = "courier-node-check";
const COUNT: usize = 100;

/// Await `f` for at most `limit`, naming it when it hangs.
async fn within<F: Future>(what: &str, limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

const T: Duration = Duration::from_secs(10);

async fn channel(url: &str) -> (Connection, Channel) {
    let conn = within(
        "connect",
        T,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("connect");
    let ch = within("create channel", T, conn.create_channel())
        .await
        .expect("create channel");
    (conn, ch)
}

async fn declare_stream(ch: &Channel) {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    within(
        "declare the stream",
        T,
        ch.queue_declare(
            STREAM.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        ),
    )
    .await
    .expect("declare a durable stream (x-queue-type=stream)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_confirmed_messages_across_kill9_and_restart() {
    let test = "a_stream_keeps_confirmed_messages_across_kill9_and_restart";
    let Some(mut node) = node::start_or_skip(test).await else {
        return;
    };
    eprintln!(
        "{test}: node {} on port {} (dist {}) started in {:?}",
        node.name, node.port, node.dist_port, node.last_boot
    );

    // Publish with confirms: each message is acknowledged by the broker before the kill.
    let (conn, ch) = channel(&node.url()).await;
    declare_stream(&ch).await;
    within(
        "confirm.select",
        T,
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    for i in 0..COUNT {
        let confirm = within(
            "publish",
            T,
            ch.basic_publish(
                "".into(),
                STREAM.into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            ),
        )
        .await
        .expect("publish");
        let confirmation = within("publisher confirm", T, confirm)
            .await
            .expect("confirm");
        assert!(confirmation.is_ack(), "message {i} was nacked");
    }

    // Kill at once after the last confirm: a confirmed message must already be safe.
    let beam = node.beam_pid().expect("the node's pid file names its VM");
    node.kill9();
    assert!(!node::alive(beam), "the VM {beam} survived kill9");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err(),
        "the AMQP port still answers after kill9"
    );
    // The client sees the connection drop; don't wait on a close handshake with a dead node.
    drop(ch);
    drop(conn);

    within("restart", node::BOOT_WITHIN, node.restart())
        .await
        .expect("restart the node on the same ports and data");
    eprintln!("{test}: restarted in {:?}", node.last_boot);
    let waited = node
        .wait_queue(STREAM, Duration::from_secs(60))
        .await
        .expect("the stream comes back after the restart");
    eprintln!("{test}: the stream answered {waited:?} after that");

    // Read the stream from its first offset: all 100 messages, in order, and nothing else.
    let (conn, ch) = channel(&node.url()).await;
    declare_stream(&ch).await;
    within("basic.qos", T, ch.basic_qos(50, BasicQosOptions::default()))
        .await
        .expect("basic.qos (stream consumers need a prefetch)");
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = within(
        "basic.consume",
        T,
        ch.basic_consume(
            STREAM.into(),
            "node-check".into(),
            BasicConsumeOptions::default(),
            args,
        ),
    )
    .await
    .expect("consume the stream from the first offset");
    for i in 0..COUNT {
        let delivery = within("a delivery", T, consumer.next())
            .await
            .expect("the consumer stream ended")
            .expect("delivery");
        assert_eq!(
            String::from_utf8_lossy(&delivery.data),
            format!("m{i}"),
            "message {i} of the stream after the restart"
        );
        within("ack", T, delivery.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    let extra = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    assert!(
        extra.is_err(),
        "a message past the {COUNT} published: {extra:?}"
    );
    let _ = tokio::time::timeout(T, conn.close(200, "done".into())).await;

    let dir = node.dir.clone();
    drop(node);
    assert!(!dir.exists(), "drop removes the node's directory");
}
