//! `correlate`: see the library crate for everything it does.

fn main() {
    rmqm_cli::main_with("correlate", correlate_tool::run);
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
