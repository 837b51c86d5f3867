//! The `criu` command line: CRIU's subcommands and flag spellings.

/// Runs the command with `args` (argv without argv[0]) and returns the exit code.
pub fn run(args: Vec<String>) -> i32 {
    let _ = args;
    eprintln!("criu: not implemented yet");
    1
}
