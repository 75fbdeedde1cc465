//! `cable-loadgen`: a load generator for ActionCable servers and the B1
//! baseline server.
//!
//! Runs (see [`modes`]): websocket-shootout's `broadcast` ladder in its
//! `actioncable` mode, `fanout`, `connect`, `idle` and `slow`. Every run
//! talks to `BenchmarkChannel` over `actioncable-v1-json`, so the same run
//! measures cable, [`b1`] and Rails ActionCable alike. [`hostile`] attacks a
//! server with the chat example's `ChatChannel` while a canary client
//! measures what that costs everyone else. Results are JSON
//! ([`modes::RunResult`]); [`report`] turns a directory of them into
//! `BENCHMARKS.md`, with the median and spread of repeated runs
//! ([`spread`]). `scripts/bench` runs the whole suite. `fanout --sse`
//! subscribes over Server-Sent Events ([`sse`]) instead; its WebSocket
//! subscribers read frames without a library ([`rawws`]). `count` is a fixed
//! workload for instruction counts: `scripts/callgrind` runs a server under
//! valgrind for two sizes of it and [`instr`] works out the cost per
//! connect and per delivery. [`soak`] churns clients for minutes while it
//! samples the server's memory, descriptors, tasks and streams;
//! [`twonode`] puts subscribers on several nodes that share a backend;
//! [`replay`] measures what one history replay costs the server.

pub mod b1;
pub mod client;
pub mod hostile;
pub mod instr;
pub mod jitter;
pub mod modes;
pub mod procfs;
pub mod rawws;
pub mod replay;
pub mod report;
pub mod soak;
pub mod spread;
pub mod sse;
pub mod twonode;
