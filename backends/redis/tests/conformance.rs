//! The whole conformance suite on Redis (`COURIER_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`), scripts run as Redis Functions where the server has them.

mod conformance_factory;

fn main() -> std::process::ExitCode {
    courier_conformance::run(conformance_factory::Redis {
        name: "redis",
        url: conformance_factory::url(),
        functions: true,
        handles: Default::default(),
    })
}
