//! The whole conformance suite on Redis with every script run as an `EVALSHA` body, the way
//! the backend runs on servers without Redis Functions (Redis 6.2) or where `FUNCTION` is not
//! permitted: both ways of running the scripts must keep the contract.

mod conformance_factory;

fn main() -> std::process::ExitCode {
    courier_conformance::run(conformance_factory::Redis {
        name: "redis_eval",
        url: conformance_factory::url(),
        functions: false,
        handles: Default::default(),
    })
}
