//! The `realtime` server binary: a thin call into the library.

/// mimalloc: the socket and HTTP paths allocate many small, short-lived buffers, which it serves
/// faster than the system allocator (measured with `scripts/bench`, scenarios c and d).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // `realtime healthcheck`: the container health check (no curl in the image).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == realtime::probe::SUBCOMMAND)
    {
        return realtime::probe::healthcheck();
    }
    realtime::app::main()
}
