//! Thin binary: parse flags, set up telemetry, call the library.
fn main() -> std::process::ExitCode {
    cellpose_train_worker::cli::main()
}
