//! `sentinel-loadgen SCENARIO [OPTIONS]`: see `--help`.

use std::process::ExitCode;

use clap::Parser;
use sentinel_loadgen::{run, Config};

fn main() -> ExitCode {
    // The LIFO slot off, as in the server (see `runtime()` in server/src/main.rs): callers
    // whose replies arrive together then send their next requests in one write per
    // connection instead of one each. Measured: 10-20% less load-generator CPU per request.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    match builder.build() {
        Ok(rt) => rt.block_on(cli_main()),
        Err(e) => {
            eprintln!("sentinel-loadgen: error: cannot start the async runtime: {e}");
            ExitCode::from(2)
        }
    }
}

async fn cli_main() -> ExitCode {
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
