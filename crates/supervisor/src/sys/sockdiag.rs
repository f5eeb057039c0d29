//! The established TCP connections of this host, by socket inode, through the kernel's socket
//! diagnostics (`NETLINK_SOCK_DIAG`, what `ss` uses): the kernel filters by state, so a host
//! with tens of thousands of `TIME_WAIT` sockets answers with its few established ones, where
//! reading `/proc/net/tcp` walks and prints them all (20 ms a read on a busy test machine, on
//! the event loop, for every `status`). The parsing of the answer is pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR`, `NLMSG_DONE` (linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST | NLM_F_DUMP`.
const DUMP_REQUEST: u16 = 0x1 | 0x300;
/// `1 << TCP_ESTABLISHED`.
const ESTABLISHED: u32 = 1 << 1;
/// `struct nlmsghdr`.
const HEADER: usize = 16;
/// `struct inet_diag_msg`: family, state, timer, retrans, the socket id (48 bytes), expires,
/// rqueue, wqueue, uid, inode.
const MSG: usize = 72;

/// The established TCP connections (IPv4 and IPv6): each socket's inode and local address.
pub fn established() -> std::io::Result<Vec<(u64, SocketAddr)>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        dump(family as u8, &mut out)?;
    }
    Ok(out)
}

/// The request for one family's established TCP sockets: a `nlmsghdr` and an
/// `inet_diag_req_v2` (family, protocol, extensions, pad, states, a zero socket id).
fn request(family: u8) -> Vec<u8> {
    let len = HEADER + 56;
    let mut r = Vec::with_capacity(len);
    r.extend((len as u32).to_ne_bytes());
    r.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r.extend(DUMP_REQUEST.to_ne_bytes());
    r.extend(1u32.to_ne_bytes()); // sequence
    r.extend(0u32.to_ne_bytes()); // port id: the kernel's
    r.extend([family, libc::IPPROTO_TCP as u8, 0, 0]);
    r.extend(ESTABLISHED.to_ne_bytes());
    r.resize(len, 0);
    r
}

fn dump(family: u8, out: &mut Vec<(u64, SocketAddr)>) -> std::io::Result<()> {
    // SAFETY: socket() takes no pointers; the descriptor is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let req = request(family);
    // SAFETY: `req` is valid for reads of its length; the kernel is the destination (a zeroed
    // `sockaddr_nl` is the kernel's address).
    let sent = unsafe {
        let mut to: libc::sockaddr_nl = std::mem::zeroed();
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            std::ptr::from_ref(&to).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        match parse(&buf[..n as usize], out)? {
            Part::Done => return Ok(()),
            Part::More => {}
        }
    }
}

/// Whether a dump has more to read.
#[derive(Debug, PartialEq, Eq)]
enum Part {
    More,
    Done,
}

/// One datagram of a dump: its sockets appended to `out`.
fn parse(mut data: &[u8], out: &mut Vec<(u64, SocketAddr)>) -> std::io::Result<Part> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    while data.len() >= HEADER {
        let u32_at = |d: &[u8], i: usize| u32::from_ne_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
        let len = u32_at(data, 0) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < HEADER || len > data.len() {
            return Err(bad("a netlink message longer than its datagram"));
        }
        let body = &data[HEADER..len];
        match kind {
            NLMSG_DONE => return Ok(Part::Done),
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Err(std::io::Error::from_raw_os_error(-code));
            }
            SOCK_DIAG_BY_FAMILY if body.len() >= MSG => {
                if let Some(conn) = connection(body) {
                    out.push(conn);
                }
            }
            _ => {}
        }
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or(&[]);
    }
    Ok(Part::More)
}

/// An `inet_diag_msg`: the inode and local address of a socket that has a descriptor.
fn connection(m: &[u8]) -> Option<(u64, SocketAddr)> {
    let family = i32::from(m[0]);
    let port = u16::from_be_bytes([m[4], m[5]]);
    let src = &m[8..24];
    let inode = u32::from_ne_bytes([m[68], m[69], m[70], m[71]]);
    let ip = if family == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
    } else {
        let mut b = [0u8; 16];
        b.copy_from_slice(src);
        IpAddr::V6(Ipv6Addr::from(b))
    };
    (inode != 0).then_some((u64::from(inode), SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message for a socket of `family` at `ip:port` with `inode`.
    fn message(family: u8, ip: &[u8], port: u16, inode: u32) -> Vec<u8> {
        let mut m = vec![0u8; MSG];
        m[0] = family;
        m[1] = 1; // established
        m[4..6].copy_from_slice(&port.to_be_bytes());
        m[8..8 + ip.len()].copy_from_slice(ip);
        m[68..72].copy_from_slice(&inode.to_ne_bytes());
        let mut out = ((HEADER + MSG) as u32).to_ne_bytes().to_vec();
        out.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        out.extend([0u8; 10]);
        out.extend(m);
        out
    }

    fn done() -> Vec<u8> {
        let mut out = ((HEADER + 4) as u32).to_ne_bytes().to_vec();
        out.extend(NLMSG_DONE.to_ne_bytes());
        out.extend([0u8; 14]);
        out
    }

    #[test]
    fn a_dump_gives_each_sockets_inode_and_local_address_until_done() {
        let mut data = message(libc::AF_INET as u8, &[127, 0, 0, 1], 3000, 77);
        data.extend(message(
            libc::AF_INET6 as u8,
            &Ipv6Addr::LOCALHOST.octets(),
            3001,
            78,
        ));
        // A socket with no descriptor (inode 0) is nobody's.
        data.extend(message(libc::AF_INET as u8, &[10, 0, 0, 1], 3000, 0));
        let mut out = Vec::new();
        assert_eq!(parse(&data, &mut out).unwrap(), Part::More);
        assert_eq!(
            out,
            vec![
                (77, "127.0.0.1:3000".parse().unwrap()),
                (78, "[::1]:3001".parse().unwrap())
            ]
        );
        assert_eq!(parse(&done(), &mut out).unwrap(), Part::Done);
        let mut short = message(libc::AF_INET as u8, &[127, 0, 0, 1], 1, 1);
        short.truncate(40);
        assert!(parse(&short, &mut out).is_err());
    }

    #[test]
    fn the_kernel_answers_with_an_established_connection_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        let inode = std::fs::read_link(format!("/proc/self/fd/{}", s.as_raw_fd()))
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("socket:[")
            .trim_end_matches(']')
            .parse::<u64>()
            .unwrap();
        let all = established().unwrap();
        assert!(
            all.contains(&(inode, addr)),
            "{inode} {addr} not in {} sockets",
            all.len()
        );
    }
}
