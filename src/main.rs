//! The `realtime` server binary: a thin call into the library.

fn main() -> std::process::ExitCode {
    realtime::app::main()
}
