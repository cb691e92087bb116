//! The `kiln` binary: a thin shell over the library (see `kiln::cli`).

/// Evaluation allocates many small, short-lived values (one tree per host);
/// mimalloc serves them faster than glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}
