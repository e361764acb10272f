//! The whole conformance suite on NATS JetStream (`COURIER_TEST_NATS_URL`, default
//! `nats://127.0.0.1:4222`).

mod conformance_factory;

fn main() -> std::process::ExitCode {
    courier_conformance::run(conformance_factory::Nats {
        name: "nats",
        url: conformance_factory::url(),
        handles: Default::default(),
    })
}
