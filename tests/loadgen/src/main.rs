//! `sentinel-loadgen SCENARIO [OPTIONS]`: see `--help`.

use std::process::ExitCode;

use clap::Parser;
use sentinel_loadgen::{run, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let report = match run(&config).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("sentinel-loadgen: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if config.json {
        eprint!("{}", report.table());
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("sentinel-loadgen: error: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", report.table());
    }
    // Errors and broken invariants fail the run; the report above says which.
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
