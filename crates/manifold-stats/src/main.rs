//! `manifold-stats`: see the library crate for everything it does.

fn main() {
    rmqm_cli::main_with("manifold-stats", manifold_stats_tool::run);
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
