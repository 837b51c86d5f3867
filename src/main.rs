fn main() {
    std::process::exit(criu::cli::run(std::env::args().skip(1).collect()));
}
