//! Who is who in an MPI job (docs/distributed.md): of N ranks, the last S are servers and the
//! first W = N − S are workers, so worker w is MPI rank w and server s is MPI rank W + s.

use kvstore_spec::{Error, Result};

/// The environment variable that sets the number of servers S (default 1).
pub const NUM_SERVERS_VAR: &str = "KVSTORE_NUM_SERVERS";

/// What one MPI rank does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Worker `w`, in `0..W`.
    Worker(usize),
    /// Server `s`, in `0..S`.
    Server(usize),
}

/// The split of an MPI job into workers and servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    workers: usize,
    servers: usize,
}

impl Roles {
    /// `size` ranks of which `servers` are servers; at least one of each is needed.
    pub fn new(size: usize, servers: usize) -> Result<Roles> {
        if servers == 0 || servers >= size {
            return Err(Error::UnsupportedKind {
                kind: "dist".into(),
                reason: format!(
                    "an MPI job of {size} processes cannot have {servers} servers and at least \
                     one worker"
                ),
            });
        }
        Ok(Roles {
            workers: size - servers,
            servers,
        })
    }

    /// The split for `size` ranks with S read from `KVSTORE_NUM_SERVERS` (default 1).
    pub fn from_env(size: usize) -> Result<Roles> {
        let servers = match std::env::var(NUM_SERVERS_VAR) {
            Err(_) => 1,
            Ok(text) => text.trim().parse().map_err(|_| Error::UnsupportedKind {
                kind: "dist".into(),
                reason: format!("{NUM_SERVERS_VAR}={text:?} is not a number of servers"),
            })?,
        };
        Roles::new(size, servers)
    }

    /// The number of workers W.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The number of servers S.
    pub fn servers(&self) -> usize {
        self.servers
    }

    /// What MPI rank `rank` does.
    pub fn role(&self, rank: usize) -> Role {
        if rank < self.workers {
            Role::Worker(rank)
        } else {
            Role::Server(rank - self.workers)
        }
    }

    /// The MPI rank of server `s`.
    pub fn server_rank(&self, s: usize) -> usize {
        self.workers + s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_last_ranks_are_servers() {
        let roles = Roles::new(5, 2).unwrap();
        assert_eq!(roles.workers(), 3);
        let all: Vec<Role> = (0..5).map(|r| roles.role(r)).collect();
        use Role::*;
        assert_eq!(all, [Worker(0), Worker(1), Worker(2), Server(0), Server(1)]);
        assert_eq!(roles.server_rank(1), 4);
        assert!(Roles::new(2, 2).is_err());
        assert!(Roles::new(3, 0).is_err());
    }
}
