//! The `capstan` binary: parses flags and hands off to one command per role.

mod commands;

fn main() -> anyhow::Result<()> {
    // The per-container shim is started by the node agent and must not depend on flag
    // parsing or logging set-up: hand it its arguments first.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("shim") {
        return capstan_kubelet::runtime::shim::run_shim(capstan_kubelet::runtime::shim::ShimArgs::parse(
            &args[2..],
        )?);
    }
    commands::main()
}
