//! `kvstore`: the command line of the kvstore crate. Everything lives in the `kvstore_cli`
//! library; this only parses the arguments and turns an error into exit code 1.
#![forbid(unsafe_code)]

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = kvstore_cli::Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = kvstore_cli::run(cli, &mut out);
    // A failed flush (a closed pipe) is reported like any other error.
    let result = result.and_then(|()| out.flush().map_err(kvstore_cli::CliError::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
