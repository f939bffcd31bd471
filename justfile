# Shortcuts; every recipe is one plain command you can also type yourself.

# The main job: start a worker and run a DSPy program on the offline LM.
demo:
    cargo run --bin dspex -- demo

# Every Rust test and the Python worker's pytest suite.
test:
    cargo test --workspace

# Format and lint checks, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# What CI runs, on a fresh Python cache.
ci:
    bash .ci/run

# Report the Python environment the workers use.
doctor:
    cargo run --bin dspex -- doctor

# Fuzz the frame decoder for a minute (needs `cargo install cargo-fuzz`; on a
# stable toolchain RUSTC_BOOTSTRAP=1 unlocks the sanitizer flags it uses).
fuzz:
    cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time=60
