fn main() {
    std::process::exit(vmthunder::cli::main());
}
