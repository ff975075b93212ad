//! The `pgrouter` command line.

use clap::{Parser, Subcommand};
use pgrouter::config::{Config, LogFormat};
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(version, about = "PostgreSQL connection pooler and read/write router")]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        short,
        env = "PGROUTER_CONFIG",
        default_value = "config/pgrouter.toml",
        global = true
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration file and print every error with its line.
    Check,
    /// Try pgrouter in front of a local primary and two streaming replicas.
    ///
    /// The servers run from the PostgreSQL server programs installed on this
    /// machine, in a temporary directory. Ctrl-C stops everything and
    /// removes the directory. --config is not used.
    Demo {
        /// Where pgrouter listens; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Demo { listen }) => demo(pgrouter::demo::Options { listen }),
        Some(Command::Check) => match load(&cli.config) {
            Some(_) => {
                println!("{}: ok", cli.config.display());
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        },
        None => match load(&cli.config) {
            Some(config) => {
                init_logging(config.server.log_format);
                serve(config, cli.config, std::future::pending())
            }
            None => ExitCode::FAILURE,
        },
    }
}

fn load(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(config) => Some(config),
        Err(errors) => {
            eprintln!("{errors}");
            None
        }
    }
}

fn demo(options: pgrouter::demo::Options) -> ExitCode {
    init_logging(LogFormat::Text);
    let demo = match pgrouter::demo::Demo::start(&options) {
        Ok(demo) => demo,
        Err(error) => {
            eprintln!("pgrouter demo: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Dropping `demo` on every way out of here stops its servers.
    match load(demo.config_path()) {
        Some(config) => serve(config, demo.config_path().to_owned(), demo.announce()),
        None => ExitCode::FAILURE,
    }
}

fn init_logging(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
}

/// Runs pgrouter until SIGTERM or SIGINT, with `beside` running alongside
/// until it ends (pgrouter does not wait for it, nor stop when it ends).
/// `config_path` is where SIGHUP and RELOAD read the configuration again.
fn serve(config: Config, config_path: PathBuf, beside: impl Future<Output = ()>) -> ExitCode {
    // One thread by default: tokio's current-thread scheduler hands no
    // task between threads, which costs less CPU per transaction than
    // any number of work-stealing threads on a machine that Postgres
    // shares (docs/BENCHMARKS.md).
    let runtime = match config.server.workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        workers => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(match workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            })
            .enable_all()
            .build(),
    };
    let result = match runtime {
        Ok(runtime) => runtime.block_on(async {
            let pgrouter = pgrouter::app::run(config, Some(config_path));
            tokio::pin!(pgrouter);
            tokio::select! {
                result = &mut pgrouter => result,
                () = beside => pgrouter.await,
            }
        }),
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "pgrouter stopped");
            ExitCode::FAILURE
        }
    }
}
