//! The `kiln` binary: a thin shell over the library (see `kiln::cli`).

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}
