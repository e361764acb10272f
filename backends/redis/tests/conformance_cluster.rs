//! The whole conformance suite on a Redis Cluster (`COURIER_TEST_REDIS_CLUSTER_URL`, a
//! `redis+cluster://` URL; `scripts/redis-cluster.sh up` starts a local cluster of 3 masters
//! and 3 replicas and prints it). Every case runs, with its queues' and topics' slots spread
//! over the masters. Without the variable the suite is skipped loudly, or fails under
//! `COURIER_REQUIRE_BACKENDS=1`.

mod conformance_factory;

fn main() -> std::process::ExitCode {
    courier_conformance::run(conformance_factory::Redis {
        name: "redis_cluster",
        url: conformance_factory::cluster_url(),
        functions: true,
        handles: Default::default(),
    })
}
