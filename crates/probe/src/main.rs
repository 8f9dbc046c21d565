//! `probe`: see the library crate for everything it does.

fn main() {
    rmqm_cli::main_with("probe", probe_tool::run);
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
