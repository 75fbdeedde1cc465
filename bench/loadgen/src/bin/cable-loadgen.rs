//! `cable-loadgen`: load generator for ActionCable servers.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use cable_loadgen::client::Target;
use cable_loadgen::modes::{self, Common, RunResult};
use cable_loadgen::{hostile, report};
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
    Broadcast {
        /// Broadcasts in flight at once.
        #[arg(short = 'c', long, default_value_t = 4)]
        concurrent: usize,
        /// RTT samples per step.
        #[arg(short = 's', long, default_value_t = 100)]
        sample_size: usize,
        /// Clients added per step.
        #[arg(long, default_value_t = 1000)]
        step_size: usize,
        /// Clients connected before the first step.
        #[arg(long, default_value_t = 0)]
        initial_clients: usize,
        /// Stop after this many steps (0: when the RTT limit is passed).
        #[arg(long, default_value_t = 0)]
        total_steps: usize,
        /// Padding bytes in every payload.
        #[arg(long, default_value_t = 0)]
        payload_padding: usize,
        /// Stop when the percentile RTT passes this (e.g. 500ms, 1s).
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        limit_rtt: Duration,
        /// The percentile held to --limit-rtt.
        #[arg(long, default_value_t = 95)]
        limit_percentile: u8,
    },
    /// N subscribers of one stream; the publish rate is swept upwards.
    Fanout {
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// First rate, broadcasts per second.
        #[arg(long, default_value_t = 10.0)]
        rate_start: f64,
        /// Each step multiplies the rate by this.
        #[arg(long, default_value_t = 1.5)]
        rate_factor: f64,
        #[arg(long, default_value_t = 10_000.0)]
        rate_max: f64,
        /// Seconds per rate step.
        #[arg(long, default_value_t = 5.0)]
        step_secs: f64,
        #[arg(long, default_value_t = 200)]
        payload_padding: usize,
        /// Highest p99 delivery latency a rate may have to count.
        #[arg(long, default_value_t = 100)]
        p99_limit_ms: u64,
        /// Publisher's server, when it is another node than the subscribers'.
        #[arg(long)]
        publish_url: Option<String>,
    },
    /// N connections at concurrency C: time to welcome and to confirm.
    Connect {
        #[arg(long, default_value_t = 19_000)]
        connections: usize,
        #[arg(long, default_value_t = 1000)]
        concurrency: usize,
    },
    /// Server RSS per subscribed idle connection (slope between two sizes).
    Idle {
        #[arg(long, default_value_t = 5_000)]
        low: usize,
        #[arg(long, default_value_t = 15_000)]
        high: usize,
        #[arg(long, default_value_t = 3.0)]
        settle_secs: f64,
    },
    /// Some clients stop reading while broadcasts continue.
    Slow {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 1.0)]
        slow_percent: f64,
        /// Broadcasts per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 4000)]
        payload_padding: usize,
        #[arg(long, default_value_t = 10.0)]
        phase_secs: f64,
        /// The server's per-connection outbound queue limit.
        #[arg(long, default_value_t = 1 << 20)]
        queue_limit_bytes: u64,
    },
    /// A canary echoes every 50 ms while other sockets attack a server with
    /// the chat example's ChatChannel (floods, 20,000 subscriptions, big
    /// identifiers, a 1.5 MiB broadcast, half-sent requests, slow readers).
    Hostile {
        /// Comma-separated cases, or `all`: subscribe_flood, action_flood,
        /// ping_flood, subscriptions, big_identifiers, big_broadcast,
        /// half_open, slow_readers.
        #[arg(long, default_value = "all")]
        cases: String,
        /// Seconds each flood, hold or busy phase lasts.
        #[arg(long, default_value_t = 3.0)]
        case_secs: f64,
        /// Admin endpoints (`POST /admin/broadcast`) as http://host:port;
        /// default: the --url's host and port.
        #[arg(long)]
        admin_url: Option<String>,
        #[arg(long, default_value_t = 50)]
        canary_interval_ms: u64,
        /// An echo not back within this counts as lost.
        #[arg(long, default_value_t = 5000)]
        echo_grace_ms: u64,
        #[arg(long, default_value_t = 3)]
        flood_sockets: usize,
        /// Most frames one flooding socket sends.
        #[arg(long, default_value_t = 200_000)]
        flood_max_commands: u64,
        #[arg(long, default_value_t = 20_000)]
        subscriptions: usize,
        #[arg(long, default_value_t = 20)]
        big_identifiers: usize,
        /// Size of each near-limit subscribe command.
        #[arg(long, default_value_t = 65_000)]
        big_identifier_bytes: usize,
        #[arg(long, default_value_t = 2_000)]
        medium_identifiers: usize,
        #[arg(long, default_value_t = 4096)]
        medium_identifier_bytes: usize,
        #[arg(long, default_value_t = 20)]
        room_size: usize,
        #[arg(long, default_value_t = 1536 * 1024)]
        big_broadcast_bytes: usize,
        #[arg(long, default_value_t = 500)]
        half_open: usize,
        #[arg(long, default_value_t = 10)]
        slow_readers: usize,
        /// Broadcasts per second in the busy room.
        #[arg(long, default_value_t = 200.0)]
        slow_rate: f64,
        /// Bytes of each busy-room broadcast's body.
        #[arg(long, default_value_t = 16_000)]
        slow_payload: usize,
        /// The canary's worst round trip allowed in any case (0: not judged).
        #[arg(long, default_value_t = 100)]
        rtt_limit_ms: u64,
        /// Most the server's RSS may grow during one case (peak over its
        /// level before the case).
        #[arg(long, default_value_t = 64)]
        rss_limit_mib: u64,
    },
    /// SIGTERM to --server-pid with half-sent requests open: how long until
    /// the process is gone (it must be within its drain timeout plus 5 s).
    HostileShutdown {
        #[arg(long, default_value_t = 200)]
        half_open: usize,
        /// The server's drain timeout (chat's --shutdown-timeout).
        #[arg(long, default_value_t = 10.0)]
        shutdown_timeout_secs: f64,
        /// Give up waiting for the exit after this long.
        #[arg(long, default_value_t = 20.0)]
        wait_secs: f64,
    },
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
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "ms"));
    let n: f64 = num.parse().map_err(|_| format!("{s:?}: not a duration"))?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" => n,
        "us" => n / 1e6,
        _ => return Err(format!("{s:?}: use ms, s or us")),
    };
    Ok(Duration::from_secs_f64(secs))
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
    md.push_str("## cable vs B1 vs Rails\n\n");
    md.push_str(&report::summary_table(&runs));
    md.push_str("\n## Broadcast ladder\n");
    md.push_str(&report::ladder_tables(&runs));
    md.push_str("\n## Fan-out sweeps\n");
    md.push_str(&report::fanout_tables(&runs));
    md.push_str("\n## Pub/sub adapters\n\n");
    md.push_str(&report::adapter_table(&runs));
    md.push_str("\n## Hostile load\n");
    md.push_str(&report::hostile_section(&runs));
    md.push_str("\n## Runs\n\n");
    md.push_str(&report::raw(&runs));
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
        Run::Broadcast {
            concurrent,
            sample_size,
            step_size,
            initial_clients,
            total_steps,
            payload_padding,
            limit_rtt,
            limit_percentile,
        } => {
            if !(1..=100).contains(&limit_percentile) {
                bail!("--limit-percentile must be 1..=100");
            }
            modes::broadcast(
                &common,
                &modes::LadderOpts {
                    concurrent,
                    sample_size,
                    step_size,
                    initial_clients,
                    total_steps,
                    payload_padding,
                    limit_rtt_ms: limit_rtt.as_millis() as u64,
                    limit_percentile,
                },
            )
            .await?
        }
        Run::Fanout {
            subscribers,
            rate_start,
            rate_factor,
            rate_max,
            step_secs,
            payload_padding,
            p99_limit_ms,
            publish_url,
        } => {
            if rate_factor <= 1.0 {
                bail!("--rate-factor must be above 1");
            }
            modes::fanout(
                &common,
                &modes::FanoutOpts {
                    subscribers,
                    rate_start,
                    rate_factor,
                    rate_max,
                    step_secs,
                    payload_padding,
                    p99_limit_ms,
                    publish_url,
                },
            )
            .await?
        }
        Run::Connect {
            connections,
            concurrency,
        } => {
            modes::connect(
                &common,
                &modes::ConnectOpts {
                    connections,
                    concurrency,
                },
            )
            .await?
        }
        Run::Idle {
            low,
            high,
            settle_secs,
        } => {
            if high <= low {
                bail!("--high must be above --low");
            }
            modes::idle(
                &common,
                &modes::IdleOpts {
                    low,
                    high,
                    settle_secs,
                },
            )
            .await?
        }
        Run::Slow {
            clients,
            slow_percent,
            rate,
            payload_padding,
            phase_secs,
            queue_limit_bytes,
        } => {
            modes::slow(
                &common,
                &modes::SlowOpts {
                    clients,
                    slow_percent,
                    rate,
                    payload_padding,
                    phase_secs,
                    queue_limit_bytes,
                },
            )
            .await?
        }
        Run::Hostile {
            cases,
            case_secs,
            admin_url,
            canary_interval_ms,
            echo_grace_ms,
            flood_sockets,
            flood_max_commands,
            subscriptions,
            big_identifiers,
            big_identifier_bytes,
            medium_identifiers,
            medium_identifier_bytes,
            room_size,
            big_broadcast_bytes,
            half_open,
            slow_readers,
            slow_rate,
            slow_payload,
            rtt_limit_ms,
            rss_limit_mib,
        } => {
            let cases = if cases == "all" {
                hostile::CASES.iter().map(|c| c.to_string()).collect()
            } else {
                cases.split(',').map(|c| c.trim().to_owned()).collect()
            };
            hostile::run(
                &common,
                &hostile::HostileOpts {
                    cases,
                    case_secs,
                    canary_interval_ms,
                    echo_grace_ms,
                    flood_sockets,
                    flood_max_commands,
                    subscriptions,
                    big_identifiers,
                    big_identifier_bytes,
                    medium_identifiers,
                    medium_identifier_bytes,
                    room_size,
                    big_broadcast_bytes,
                    half_open,
                    slow_readers,
                    slow_rate,
                    slow_payload,
                    admin_url,
                    rtt_limit_ms,
                    rss_limit_mib,
                },
            )
            .await?
        }
        Run::HostileShutdown {
            half_open,
            shutdown_timeout_secs,
            wait_secs,
        } => {
            let [pid] = common.server_pids[..] else {
                bail!("hostile-shutdown needs exactly one --server-pid");
            };
            hostile::shutdown(
                &common,
                pid,
                &hostile::ShutdownOpts {
                    half_open,
                    shutdown_timeout_secs,
                    wait_secs,
                },
            )
            .await?
        }
        Run::Report {
            dir,
            header,
            history,
            output,
        } => {
            write_report(&dir, header, history, &output)?;
            eprintln!("wrote {}", output.display());
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
