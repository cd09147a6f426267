//! `aqueduct`: inspect and operate a broker database from the command line.
//!
//! The tool opens the database directory that an application passes to `Broker::open`. sled
//! lets one process at a time open a database, so the application must be stopped first. On a
//! locked database the tool prints an error and exits with status 1.
//!
//! Every command prints aligned text that fits the terminal, or one JSON document on stdout
//! with `--json`. Errors go to stderr with exit status 1 (and, with `--json`, to stdout as
//! `{"error": "..."}`), and usage errors exit with status 2.

mod commands;
mod database;
mod error;
mod output;
mod render;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::commands::{dead_letters, delete_group, groups, peek, purge, replay, topics};
use crate::error::CliError;

/// Inspect and operate an aqueduct broker database.
///
/// The application that uses the database must be stopped first: sled lets one process at a
/// time open it. Set RUST_LOG (for example RUST_LOG=debug) to see the broker's log on stderr.
#[derive(Debug, Parser)]
#[command(name = "aqueduct", version)]
struct Cli {
    /// Broker database directory, as passed to Broker::open
    #[arg(long, value_name = "DIR", env = "AQUEDUCT_DB", global = true)]
    db: Option<PathBuf>,

    /// Print one JSON document on stdout instead of text
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List topics with their size, groups and configuration
    Topics,

    /// Show consumer groups: lag per partition, in-flight deliveries, parked keys, oldest
    /// unacknowledged message, counters
    Groups {
        /// Show only the groups of this topic
        topic: Option<String>,
    },

    /// Show stored messages without consuming them
    Peek {
        /// Topic to read
        topic: String,

        #[command(flatten)]
        window: peek::WindowArgs,
    },

    /// Show dead letters: source topic, partition and offset, group, attempts, last error, time
    DeadLetters {
        /// Dead-letter topic to read
        topic: String,

        #[command(flatten)]
        window: peek::WindowArgs,
    },

    /// Publish dead letters back to their source topics
    Replay(replay::ReplayArgs),

    /// Remove every message of a topic (requires --yes)
    Purge(purge::PurgeArgs),

    /// Delete a consumer group: its offsets, attempt counts and parked keys (requires --yes)
    DeleteGroup(delete_group::DeleteGroupArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let Some(db) = cli.db.clone() else {
        Cli::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "no database directory given; pass --db DIR or set AQUEDUCT_DB",
            )
            .exit();
    };

    match run(&cli, &db) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader such as `head` closed the pipe; the output it wanted was written.
        Err(CliError::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            if cli.json {
                // Scripts that parse stdout get a document for failures too.
                println!("{}", serde_json::json!({ "error": error.to_string() }));
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli, db: &std::path::Path) -> Result<(), CliError> {
    let broker = database::open(db)?;
    let json = cli.json;
    match &cli.command {
        Command::Topics => output::print(&topics::run(&broker)?, json)?,
        Command::Groups { topic } => output::print(&groups::run(&broker, topic.as_deref())?, json)?,
        Command::Peek { topic, window } => {
            output::print(&peek::run(&broker, topic, window)?, json)?
        }
        Command::DeadLetters { topic, window } => {
            output::print(&dead_letters::run(&broker, topic, window)?, json)?
        }
        Command::Replay(args) => output::print(&replay::run(&broker, args)?, json)?,
        Command::Purge(args) => output::print(&purge::run(&broker, args)?, json)?,
        Command::DeleteGroup(args) => output::print(&delete_group::run(&broker, args)?, json)?,
    }
    Ok(())
}

/// Sends log events to stderr at the levels that RUST_LOG selects, or only errors when it is unset.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
