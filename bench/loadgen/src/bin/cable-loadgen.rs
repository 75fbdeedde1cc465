//! `cable-loadgen`: load generator for ActionCable servers.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use cable_loadgen::client::Target;
use cable_loadgen::modes::{self, Common, RunResult};
use cable_loadgen::{hostile, instr, report};
use clap::{Parser, Subcommand};

/// Load generator for ActionCable servers: websocket-shootout's broadcast
/// ladder (actioncable mode), fan-out, connect, idle and slow-client runs
/// against BenchmarkChannel. Writes one JSON result per run.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// WebSocket URL of the server; `{i}` is replaced by the client number.
    #[arg(
        long,
        global = true,
        default_value = "ws://127.0.0.1:3000/cable?user=bench{i}"
    )]
    url: String,
    /// Label of the server under test, recorded in the result.
    #[arg(long, global = true, default_value = "cable")]
    server: String,
    /// PID of a server process, for CPU and memory from /proc (repeatable).
    #[arg(long = "server-pid", global = true)]
    server_pids: Vec<u32>,
    /// Write the run's JSON result here.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// No progress bars (they go to stderr).
    #[arg(long, global = true)]
    no_progress: bool,
    /// Connections opened at once while a run sets up its clients.
    #[arg(long, global = true, default_value_t = 200)]
    connect_concurrency: usize,
    /// Connect from 127.0.0.1 only instead of spreading over 127.0.0.2-9.
    #[arg(long, global = true)]
    no_source_spread: bool,
    #[command(subcommand)]
    run: Run,
}

#[derive(Subcommand)]
enum Run {
    /// websocket-shootout's broadcast ladder (actioncable mode).
    Broadcast(modes::LadderOpts),
    /// N subscribers of one stream; the publish rate is swept upwards.
    Fanout(modes::FanoutOpts),
    /// N connections at concurrency C: time to welcome and to confirm.
    Connect(modes::ConnectOpts),
    /// Server RSS per subscribed idle connection (slope between two sizes).
    Idle(modes::IdleOpts),
    /// Some clients stop reading while broadcasts continue.
    Slow(modes::SlowOpts),
    /// AnyCable's jitter test: clients on one room are dropped every second
    /// and recover by `?sid=` and `history` (or, with --no-history, only
    /// resubscribe); counts what each received once, missed or got twice.
    Jitter(cable_loadgen::jitter::JitterOpts),
    /// What one history replay costs the server: a wave of clients that
    /// subscribe to a room, then a wave that also asks for its history.
    Replay(cable_loadgen::replay::ReplayOpts),
    /// A canary echoes every 50 ms while other sockets attack a server with
    /// the chat example's ChatChannel (floods, 20,000 subscriptions, big
    /// identifiers, a 1.5 MiB broadcast, half-sent requests, slow readers).
    Hostile(hostile::HostileOpts),
    /// SIGTERM to --server-pid with half-sent requests open: how long until
    /// the process is gone (it must be within its drain timeout plus 5 s).
    HostileShutdown(hostile::ShutdownOpts),
    /// A fixed workload for instruction counts (scripts/callgrind): N
    /// clients opened and closed one at a time, or N subscribers and B
    /// broadcasts sent one at a time, each after the last was delivered.
    Count(modes::CountOpts),
    /// Instruction counts per connect and per delivery from scripts/callgrind's
    /// `count` results (NAME.json) and callgrind outputs (NAME.callgrind).
    Callgrind {
        #[arg(long)]
        dir: PathBuf,
        /// Where the figures go as JSON (BENCHMARKS.md shows a results
        /// directory's callgrind.json).
        #[arg(long)]
        json: PathBuf,
        /// The same as a markdown table.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Recorded with the figures, KEY=VALUE (commit, date, valgrind).
        #[arg(long)]
        meta: Vec<String>,
    },
    /// Churn (N clients present, each living a short life) with steady
    /// broadcasts while the server's RSS, descriptors, tasks and streams
    /// are sampled; judges the RSS slope and the return to the baseline.
    Soak(cable_loadgen::soak::SoakOpts),
    /// Subscribers on several nodes sharing one backend, the publisher on
    /// the first, a fixed rate: same-node and cross-node delivery latency.
    Twonode(cable_loadgen::twonode::TwoNodeOpts),
    /// Write BENCHMARKS.md from a directory of results.
    Report {
        #[arg(long)]
        dir: PathBuf,
        /// Markdown with the machine, versions and commands (from scripts/bench).
        #[arg(long)]
        header: Option<PathBuf>,
        /// Hand-written history (before/after figures) appended at the end.
        #[arg(long)]
        history: Option<PathBuf>,
        #[arg(long, default_value = "BENCHMARKS.md")]
        output: PathBuf,
        /// Also print cable vs B1 (medians, spreads, verdicts) to stdout.
        #[arg(long)]
        summary: bool,
    },
}

fn write_report(
    dir: &std::path::Path,
    header: Option<PathBuf>,
    history: Option<PathBuf>,
    output: &std::path::Path,
) -> Result<()> {
    let runs = report::load(dir)?;
    let mut md = String::from("# Benchmarks\n\n");
    md.push_str(
        "Written by `scripts/bench` (see the README); do not edit by hand. The history at the \
         end comes from `bench/HISTORY.md`.\n\n",
    );
    if let Some(h) = header {
        md.push_str(&std::fs::read_to_string(&h).with_context(|| h.display().to_string())?);
        md.push('\n');
    }
    // The comparison, the ladders and the sweeps see every repetition; the
    // other sections (runs made once) the median repetition of each.
    type Section = fn(&report::AllRuns) -> String;
    let sections: [(&str, Section); 11] = [
        ("## cable vs B1 vs Rails\n\n", report::summary_table),
        ("\n## Broadcast ladder\n", report::ladder_tables),
        ("\n## Fan-out sweeps\n", report::fanout_tables),
        ("\n## Pub/sub adapters\n\n", |a| {
            report::adapter_table(&report::median_runs(a))
        }),
        ("\n## Transports: WebSocket and SSE\n\n", |a| {
            report::transport_table(&report::median_runs(a))
        }),
        ("\n## Hostile load\n", |a| {
            report::hostile_section(&report::median_runs(a))
        }),
        ("\n## Reliable streams: jitter\n\n", |a| {
            report::jitter_section(&report::median_runs(a))
        }),
        ("\n## Reliable streams: replay\n\n", |a| {
            report::replay_section(&report::median_runs(a))
        }),
        ("\n## Soak\n\n", |a| {
            cable_loadgen::soak::report_section(&report::median_runs(a))
        }),
        ("\n## Several nodes\n\n", |a| {
            cable_loadgen::twonode::report_section(&report::median_runs(a))
        }),
        ("\n## Runs\n\n", report::raw),
    ];
    for (heading, section) in sections {
        md.push_str(heading);
        md.push_str(&section(&runs));
        // The instruction counts after the comparison, when scripts/callgrind
        // left them here.
        if heading.contains("cable vs B1 vs Rails") {
            let counts = dir.join("callgrind.json");
            if counts.exists() {
                let text = std::fs::read_to_string(&counts)
                    .with_context(|| counts.display().to_string())?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).with_context(|| counts.display().to_string())?;
                md.push_str("\n## Instruction counts\n\n");
                md.push_str(&instr::markdown(&v));
            }
        }
    }
    if let Some(h) = history {
        md.push('\n');
        md.push_str(&std::fs::read_to_string(&h).with_context(|| h.display().to_string())?);
    }
    std::fs::write(output, md)?;
    Ok(())
}

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    // An error is a message and exit code 1, never a backtrace.
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let mut target = Target::new(args.url.clone());
    if args.no_source_spread {
        target.sources.clear();
    }
    let common = Common {
        target,
        server: args.server.clone(),
        server_pids: args.server_pids.clone(),
        progress: !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        connect_concurrency: args.connect_concurrency,
    };
    let result: RunResult = match args.run {
        Run::Broadcast(opts) => {
            if !(1..=100).contains(&opts.limit_percentile) {
                bail!("--limit-percentile must be 1..=100");
            }
            modes::broadcast(&common, &opts).await?
        }
        Run::Fanout(opts) => {
            if opts.rate_factor <= 1.0 {
                bail!("--rate-factor must be above 1");
            }
            modes::fanout(&common, &opts).await?
        }
        Run::Connect(opts) => modes::connect(&common, &opts).await?,
        Run::Idle(opts) => {
            if opts.high <= opts.low {
                bail!("--high must be above --low");
            }
            modes::idle(&common, &opts).await?
        }
        Run::Slow(opts) => modes::slow(&common, &opts).await?,
        Run::Count(opts) => {
            if opts.clients == 0 {
                bail!("--clients must be at least 1");
            }
            modes::count(&common, &opts).await?
        }
        Run::Jitter(opts) => cable_loadgen::jitter::jitter(&common, &opts).await?,
        Run::Replay(opts) => cable_loadgen::replay::replay(&common, &opts).await?,
        Run::Soak(opts) => cable_loadgen::soak::soak(&common, &opts).await?,
        Run::Twonode(opts) => cable_loadgen::twonode::twonode(&common, &opts).await?,
        Run::Hostile(mut opts) => {
            if opts.cases == ["all"] {
                opts.cases = hostile::CASES.iter().map(|c| c.to_string()).collect();
            }
            hostile::run(&common, &opts).await?
        }
        Run::HostileShutdown(opts) => {
            let [pid] = common.server_pids[..] else {
                bail!("hostile-shutdown needs exactly one --server-pid");
            };
            hostile::shutdown(&common, pid, &opts).await?
        }
        Run::Callgrind {
            dir,
            json,
            markdown,
            meta,
        } => {
            let mut m = serde_json::Map::new();
            for kv in meta {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--meta {kv:?}: KEY=VALUE");
                };
                m.insert(k.to_owned(), v.into());
            }
            let summary = instr::summarize(&dir, serde_json::Value::Object(m))?;
            std::fs::write(&json, serde_json::to_string_pretty(&summary)?)
                .with_context(|| json.display().to_string())?;
            let md = instr::markdown(&summary);
            if let Some(path) = markdown {
                std::fs::write(&path, &md).with_context(|| path.display().to_string())?;
            }
            print!("{md}");
            return Ok(());
        }
        Run::Report {
            dir,
            header,
            history,
            output,
            summary,
        } => {
            write_report(&dir, header, history, &output)?;
            eprintln!("wrote {}", output.display());
            if summary {
                print!("{}", report::summary_text(&report::load(&dir)?));
            }
            return Ok(());
        }
    };
    let json = serde_json::to_string_pretty(&result)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| out.display().to_string())?;
    }
    if !result.ok {
        for e in result.errors.iter().take(10) {
            eprintln!("error: {e}");
        }
        bail!("{} run against {} failed", result.mode, result.server);
    }
    Ok(())
}
