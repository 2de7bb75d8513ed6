//! The `capstan` binary: parses flags and hands off to one command per role.

mod commands;

fn main() -> anyhow::Result<()> {
    commands::main()
}
