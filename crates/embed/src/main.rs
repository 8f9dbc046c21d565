//! `embed`: see the library crate for everything it does.

fn main() {
    rmqm_cli::main_with("embed", embed_tool::run);
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
