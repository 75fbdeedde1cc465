//! Server-side figures read from `/proc`: CPU time, resident memory and
//! open descriptors.

use anyhow::{anyhow, Context as _, Result};

/// Clock ticks per second in `/proc/PID/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

/// CPU time (user + system) of `pid` so far, in microseconds.
pub fn cpu_us(pid: u32) -> Result<u64> {
    let (user, kernel) = cpu_split_us(pid)?;
    Ok(user + kernel)
}

/// CPU time of `pid` so far in user space and in the kernel, in
/// microseconds. On loopback the kernel's share holds most of the TCP path
/// of both ends (a write runs the receiver's side too), so it is where two
/// servers' costs are least their own.
pub fn cpu_split_us(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?
        .1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime); `after` starts at field 3.
    let ticks = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse::<u64>()
            .map_err(Into::into)
    };
    let us = |t: u64| t * 1_000_000 / TICKS_PER_SEC;
    Ok((us(ticks(14)?), us(ticks(15)?)))
}

/// Summed over several processes (a multi-node run, say).
pub fn cpu_us_all(pids: &[u32]) -> Result<u64> {
    cpu_split_all(pids).map(|(user, kernel)| user + kernel)
}

/// [`cpu_split_us`] summed over several processes.
pub fn cpu_split_all(pids: &[u32]) -> Result<(u64, u64)> {
    pids.iter().try_fold((0, 0), |(u, k), &p| {
        let (pu, pk) = cpu_split_us(p)?;
        Ok((u + pu, k + pk))
    })
}

/// CPU time (user + system, microseconds) of every process named `comm`
/// (as `/proc/PID/comm` has it: `redis-server`, `postgres`), by pid. A
/// backend's processes are not ours, but their `stat` is readable.
pub fn cpu_by_comm(comm: &str) -> Result<std::collections::BTreeMap<u32, u64>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the reads.
        let Ok(name) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if name.trim_end() == comm {
            if let Ok(us) = cpu_us(pid) {
                out.insert(pid, us);
            }
        }
    }
    Ok(out)
}

/// The CPU the processes of two [`cpu_by_comm`] readings spent between
/// them: a process only in the later one started meanwhile and counts in
/// full; one that exited meanwhile is lost.
pub fn cpu_between(
    before: &std::collections::BTreeMap<u32, u64>,
    after: &std::collections::BTreeMap<u32, u64>,
) -> u64 {
    after
        .iter()
        .map(|(pid, &us)| us.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum()
}

/// Resident set size of `pid`, in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("odd VmRSS line"))?
        .parse()?;
    Ok(kb * 1024)
}

pub fn rss_all(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&p| rss_bytes(p)).sum()
}

/// Open file descriptors of `pid` (the entries of `/proc/PID/fd`; the
/// process must be ours).
pub fn fd_count(pid: u32) -> Result<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?;
    Ok(dir.count() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(super::rss_bytes(me).unwrap() > 0);
        super::cpu_us(me).unwrap();
        // 200 ms of arithmetic shows in the user-space share (10 ms ticks).
        let (u0, _) = super::cpu_split_us(me).unwrap();
        let t = std::time::Instant::now();
        let mut x = 1u64;
        while t.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let (u1, _) = super::cpu_split_us(me).unwrap();
        assert!(u1 - u0 >= 50_000, "user time grew by {} µs", u1 - u0);
        let (both_u, _) = super::cpu_split_all(&[me, me]).unwrap();
        assert!(both_u >= 2 * u1);
        // stdin, stdout, stderr at least.
        assert!(super::fd_count(me).unwrap() >= 3);
        // This test binary, found by its name.
        let comm = std::fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        let by_comm = super::cpu_by_comm(comm.trim_end()).unwrap();
        assert!(by_comm.get(&me).is_some_and(|&us| us >= u1), "{by_comm:?}");
    }

    #[test]
    fn cpu_between_counts_new_processes_in_full() {
        let before = [(1, 100), (2, 50)].into_iter().collect();
        let after = [(1, 160), (3, 30)].into_iter().collect();
        // 1 spent 60, 3 started and spent 30, 2 exited (lost).
        assert_eq!(super::cpu_between(&before, &after), 90);
    }
}
