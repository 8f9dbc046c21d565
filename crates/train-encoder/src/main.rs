//! `train-encoder`: see the library crate for everything it does.

fn main() {
    rmqm_cli::main_with("train-encoder", train_encoder_tool::run);
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
