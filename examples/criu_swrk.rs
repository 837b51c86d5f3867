//! `criu_swrk swrk FD`: just the `swrk` subcommand of `criu`, so that libcriu's
//! criu_set_service_binary transport can be tested (ctests/version_check) before `criu swrk` is
//! wired into the command line (src/cli.rs).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match (
        args.first().map(String::as_str),
        args.get(1).map(|fd| fd.parse()),
    ) {
        (Some("swrk"), Some(Ok(fd))) if args.len() == 2 => std::process::exit(criu::rpc::swrk(fd)),
        _ => {
            eprintln!("usage: criu_swrk swrk FD");
            std::process::exit(1);
        }
    }
}
