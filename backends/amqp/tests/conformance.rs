//! The whole conformance suite on RabbitMQ (`COURIER_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`).

mod conformance_factory;

fn main() -> std::process::ExitCode {
    courier_conformance::run(conformance_factory::Amqp {
        name: "amqp",
        url: conformance_factory::url(),
        streams: Default::default(),
        handles: Default::default(),
    })
}
