//! Loads every split of every dataset found under a data folder and prints counts and load times.
//! Usage: cargo run --release -p rmqm-data --example load_all -- ../shared/data

use rmqm_data::{Dataset, LoadOptions, load};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(rmqm_data::default_data_dir);
    for d in Dataset::ALL {
        for split in d.splits() {
            let t = Instant::now();
            match load(d, &dir, split, &LoadOptions::default()) {
                Ok(set) => println!(
                    "{:<14} {:<11} {:>6} images {:>4} classes  {:.2}s",
                    d.name(),
                    split,
                    set.len(),
                    set.n_classes(),
                    t.elapsed().as_secs_f64()
                ),
                Err(e) => println!("{:<14} {:<11} not loaded: {e}", d.name(), split),
            }
        }
    }
}
