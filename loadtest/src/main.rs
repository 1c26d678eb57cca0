//! `loadtest` binary: parse the command line, run, print, write files.

use std::process::ExitCode;

use clap::Parser;
use loadtest::{output, run, Cli, RunConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = RunConfig::from(&cli);
    let report = match rt.block_on(run(&cfg)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("loadtest: cannot encode report: {e}"),
        }
    } else {
        print!("{}", report.to_text());
    }
    // The audit is the input of a reconciliation: an incomplete one must not pass silently.
    if let Some(e) = report.audit.as_ref().and_then(|a| a.error.as_ref()) {
        eprintln!("loadtest: {e}");
        return ExitCode::from(1);
    }
    if let Some(dir) = &cli.out {
        match output::write_all(&report, dir) {
            Ok(paths) => {
                if !cli.json {
                    for p in paths {
                        println!("wrote {}", p.display());
                    }
                }
            }
            Err(e) => {
                eprintln!("loadtest: {e:#}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
