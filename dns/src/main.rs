//! The `lab-dns` binary: everything lives in the library so that it can be tested.

fn main() -> std::process::ExitCode {
    lab_dns::main()
}
