//! Established TCP connections of the apps' listening addresses, by socket inode: one dump of
//! the kernel's socket diagnostics per status ([`super::sockdiag`], established sockets only),
//! or where that is not available one read of `/proc/net/tcp` and `/proc/net/tcp6` (every socket,
//! `TIME_WAIT` included, filtered here). Counted per worker with the socket inodes its
//! process group holds ([`super::procstat::GroupScan::socket_inodes`]): a connection a worker
//! accepted is one of its descriptors, `socket:[inode]`. The parsing is pure; [`Established::read`]
//! is the one read.
//!
//! The tables list every socket of the network namespace; a connection waiting in a listener's
//! accept queue has inode 0 (no descriptor yet) and counts for nobody.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `st` of an established connection in `/proc/net/tcp{,6}` (`TCP_ESTABLISHED`).
const ESTABLISHED: &str = "01";

/// The established connections whose local end is one of the listening addresses asked for, by
/// socket inode (with that local end).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Established {
    by_inode: HashMap<u64, SocketAddr>,
}

impl Established {
    /// Reads `/proc/net/tcp` and `/proc/net/tcp6` once, keeping the connections accepted on
    /// `listening`; a table that cannot be read (no IPv6) counts as empty. Nothing is read when
    /// `listening` is empty.
    pub fn read(listening: &[SocketAddr]) -> Established {
        if listening.is_empty() {
            return Established::default();
        }
        // The kernel's socket diagnostics first: it leaves out every socket not established.
        match super::sockdiag::established() {
            Ok(all) => {
                let by_inode = all
                    .into_iter()
                    .filter(|(_, local)| serves(listening, *local))
                    .collect();
                return Established { by_inode };
            }
            Err(e) => {
                tracing::debug!(error = %e, "socket diagnostics unavailable: reading /proc/net/tcp")
            }
        }
        let tables = ["/proc/net/tcp", "/proc/net/tcp6"].map(|path| {
            std::fs::read_to_string(path)
                .inspect_err(|e| tracing::debug!(path, error = %e, "connections not read"))
                .unwrap_or_default()
        });
        Established::parse(&tables, listening)
    }

    /// The connections of `tables` (the text of `/proc/net/tcp` and `/proc/net/tcp6`) accepted
    /// on one of `listening`: established, and a descriptor of some process (inode not 0).
    /// Lines that do not parse (the header) are skipped.
    pub fn parse(tables: &[impl AsRef<str>], listening: &[SocketAddr]) -> Established {
        let by_inode = tables
            .iter()
            .flat_map(|t| t.as_ref().lines())
            .filter_map(parse_line)
            .filter(|(_, local)| serves(listening, *local))
            .collect();
        Established { by_inode }
    }

    /// How many of `inodes` (one process group's sockets, each once) are connections accepted
    /// on one of `listening`.
    pub fn count<'a>(
        &self,
        inodes: impl IntoIterator<Item = &'a u64>,
        listening: &[SocketAddr],
    ) -> u64 {
        inodes
            .into_iter()
            .filter_map(|i| self.by_inode.get(i))
            .filter(|local| serves(listening, **local))
            .count() as u64
    }
}

/// Whether a connection with local end `local` was accepted on one of `listening`: the same
/// port, and the same address or a listener on every address (`0.0.0.0`, `[::]`). IPv4 clients
/// of an IPv6 listener show as v4-mapped addresses, compared as IPv4.
fn serves(listening: &[SocketAddr], local: SocketAddr) -> bool {
    listening.iter().any(|l| {
        l.port() == local.port()
            && (l.ip().is_unspecified() || canonical(l.ip()) == canonical(local.ip()))
    })
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One line of `/proc/net/tcp{,6}`: `sl local remote st tx:rx tr:when retrnsmt uid timeout
/// inode ...`; the inode and local end of an established connection that has a descriptor.
fn parse_line(line: &str) -> Option<(u64, SocketAddr)> {
    let f: Vec<&str> = line.split_whitespace().take(10).collect();
    if f.len() < 10 || f[3] != ESTABLISHED {
        return None;
    }
    let inode: u64 = f[9].parse().ok()?;
    (inode != 0).then_some(())?;
    Some((inode, parse_endpoint(f[1])?))
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:1F90` (IPv6): the address as the kernel prints it,
/// 32-bit words in this host's byte order, and the port in hex.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The inode of a descriptor's link in `/proc/PID/fd` when it is a socket (`socket:[12345]`).
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
#[path = "connections_tests.rs"]
mod tests;
