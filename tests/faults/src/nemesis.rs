//! The nemesis schedule: which fault, when, against what, for how long. It is a pure
//! function of the seed and the profile, so a failing run can be replayed with its seed
//! (process scheduling still varies, as in any Jepsen test).

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Which faults a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Every kind of fault.
    All,
    /// Only worker pauses longer than the lease (dense): zombies that resume after a takeover.
    Pause,
    /// Only immediate PostgreSQL stops (dense), each right after a burst of acknowledgements.
    PgCrash,
    /// No faults at all (a baseline).
    None,
}

/// One of the four proxies: between the workers and a server, or a server and PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Link {
    /// Workers to server `n`.
    Client(usize),
    /// Server `n` to PostgreSQL.
    Database(usize),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    PauseWorker {
        worker: usize,
        millis: u64,
    },
    KillWorker {
        worker: usize,
    },
    KillServer {
        server: usize,
        down_millis: u64,
    },
    PauseServer {
        server: usize,
        millis: u64,
    },
    PgImmediateRestart {
        down_millis: u64,
    },
    PgTerminateBackends,
    Latency {
        link: Link,
        delay_millis: u64,
        millis: u64,
    },
    Blackhole {
        link: Link,
        millis: u64,
    },
    DropReplies {
        link: Link,
        millis: u64,
    },
    ResetConnections {
        link: Link,
    },
}

impl Fault {
    /// The kind, for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::PauseWorker { .. } => "pause-worker",
            Fault::KillWorker { .. } => "kill-worker",
            Fault::KillServer { .. } => "kill-server",
            Fault::PauseServer { .. } => "pause-server",
            Fault::PgImmediateRestart { .. } => "pg-immediate-restart",
            Fault::PgTerminateBackends => "pg-terminate-backends",
            Fault::Latency { .. } => "proxy-latency",
            Fault::Blackhole { .. } => "proxy-blackhole",
            Fault::DropReplies { .. } => "proxy-drop-replies",
            Fault::ResetConnections { .. } => "proxy-reset",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A fault and when it starts, relative to the start of the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    pub at_millis: u64,
    pub fault: Fault,
}

pub struct Shape {
    pub workers: usize,
    pub servers: usize,
    pub lease_millis: u64,
}

/// The schedule of a run: faults one after another (each healed before the next starts),
/// separated by quiet gaps, until `duration`.
pub fn schedule(seed: u64, profile: Profile, duration: Duration, shape: &Shape) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e656d65_73697321);
    let end = duration.as_millis() as u64;
    let mut steps = Vec::new();
    // Let the workload warm up before the first fault.
    let mut at = 1500 + rng.random_range(0..1000);
    while at < end {
        let fault = match profile {
            Profile::None => break,
            // Just past the lease: the worker resumes while its successor still runs.
            Profile::Pause => pause(&mut rng, shape, 11, 20),
            Profile::PgCrash => Fault::PgImmediateRestart {
                down_millis: rng.random_range(200..600),
            },
            Profile::All => pick_any(&mut rng, shape),
        };
        let busy = match &fault {
            Fault::PauseWorker { millis, .. } | Fault::PauseServer { millis, .. } => *millis,
            Fault::KillServer { down_millis, .. } | Fault::PgImmediateRestart { down_millis } => {
                *down_millis + 1500
            }
            Fault::Latency { millis, .. }
            | Fault::Blackhole { millis, .. }
            | Fault::DropReplies { millis, .. } => *millis,
            Fault::KillWorker { .. }
            | Fault::PgTerminateBackends
            | Fault::ResetConnections { .. } => 200,
        };
        steps.push(Step {
            at_millis: at,
            fault,
        });
        let gap = match profile {
            Profile::Pause => rng.random_range(200..600),
            Profile::PgCrash => rng.random_range(1200..2500),
            _ => rng.random_range(500..2000),
        };
        at += busy + gap;
    }
    steps
}

/// A pause of `min..max` tenths of the lease (always longer than it): just past it, the
/// worker resumes while its successor still runs and reports into that execution; well past
/// it, the successor is done.
fn pause(rng: &mut StdRng, shape: &Shape, min: u64, max: u64) -> Fault {
    let lease = shape.lease_millis;
    Fault::PauseWorker {
        worker: rng.random_range(0..shape.workers),
        millis: rng.random_range(lease * min / 10..lease * max / 10),
    }
}

fn pick_any(rng: &mut StdRng, shape: &Shape) -> Fault {
    let link = |rng: &mut StdRng| {
        let n = rng.random_range(0..shape.servers);
        if rng.random_bool(0.5) {
            Link::Client(n)
        } else {
            Link::Database(n)
        }
    };
    match rng.random_range(0..100) {
        0..20 => pause(rng, shape, 11, 30),
        20..30 => Fault::KillWorker {
            worker: rng.random_range(0..shape.workers),
        },
        30..40 => Fault::KillServer {
            server: rng.random_range(0..shape.servers),
            down_millis: rng.random_range(200..1500),
        },
        // A frozen replica (GC pause, VM stall) holds its transactions' row locks meanwhile.
        40..46 => Fault::PauseServer {
            server: rng.random_range(0..shape.servers),
            millis: rng.random_range(shape.lease_millis / 2..shape.lease_millis * 2),
        },
        46..56 => Fault::PgImmediateRestart {
            down_millis: rng.random_range(200..1500),
        },
        56..63 => Fault::PgTerminateBackends,
        63..72 => Fault::Latency {
            link: link(rng),
            delay_millis: rng.random_range(20..400),
            millis: rng.random_range(1000..3000),
        },
        72..82 => Fault::Blackhole {
            link: link(rng),
            millis: rng.random_range(500..3000),
        },
        82..92 => Fault::DropReplies {
            link: link(rng),
            millis: rng.random_range(300..2000),
        },
        _ => Fault::ResetConnections { link: link(rng) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        workers: 4,
        servers: 2,
        lease_millis: 1500,
    };

    #[test]
    fn the_schedule_is_a_function_of_the_seed() {
        let d = Duration::from_secs(60);
        let a = schedule(7, Profile::All, d, &SHAPE);
        let b = schedule(7, Profile::All, d, &SHAPE);
        let c = schedule(8, Profile::All, d, &SHAPE);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_ne!(format!("{a:?}"), format!("{c:?}"));
        assert!(a.len() >= 10, "{} faults in a minute", a.len());
    }

    #[test]
    fn pauses_outlast_the_lease() {
        for s in schedule(3, Profile::Pause, Duration::from_secs(30), &SHAPE) {
            match s.fault {
                Fault::PauseWorker { millis, .. } => assert!(millis > SHAPE.lease_millis),
                other => panic!("unexpected fault {other:?} in the pause profile"),
            }
        }
    }

    #[test]
    fn a_long_run_injects_every_kind() {
        let kinds: std::collections::BTreeSet<_> =
            schedule(1, Profile::All, Duration::from_secs(600), &SHAPE)
                .iter()
                .map(|s| s.fault.kind())
                .collect();
        assert_eq!(kinds.len(), 10, "{kinds:?}");
    }
}
