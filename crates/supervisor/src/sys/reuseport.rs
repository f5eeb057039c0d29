//! The socket calls behind a socket per worker slot (`balance = "sticky" | "spread"`): binding
//! the sockets of one `SO_REUSEPORT` group, attaching the classic BPF program that picks one
//! ([`crate::balance`]), the length of a socket's accept queue, and taking a socket out of its
//! group at once.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use socket2::{Domain, Socket, Type};

use crate::balance::Insn;

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Whether `addr` is free to be the address of a new group, and which address it is (port 0
/// resolved): a plain bind, without `SO_REUSEPORT`, fails on a port someone listens on even
/// with it (another supervisor, or a process of the same user, which could otherwise join the
/// group and take a share of its connections).
pub fn probe(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind(addr)?;
    l.local_addr()
}

/// One more socket of the group on `addr` (a resolved address), listening with `backlog`.
pub fn bind(addr: SocketAddr, backlog: i32) -> std::io::Result<OwnedFd> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}

/// Attaches `prog` to the group `fd` belongs to (replacing the one before).
pub fn attach(fd: BorrowedFd<'_>, prog: &[Insn]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| std::io::Error::other("program too long"))?,
        // The kernel copies the program during the call and never writes it.
        filter: prog.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: `fd` is a valid socket; `fprog` points at `prog.len()` instructions laid out as
    // `struct sock_filter` (`Insn` is `repr(C)` with the same fields), alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// How many connections wait in a listening socket's accept queue (`tcpi_unacked` of a
/// listener).
pub fn queued(fd: BorrowedFd<'_>) -> std::io::Result<u32> {
    // SAFETY: all-zero is a valid `tcp_info` (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is a valid socket; `info` and `len` are valid for writes of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(info.tcpi_unacked)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Takes a listening socket out of its group now, whoever else holds it: it stops listening
/// (`shutdown`), so the group's indices are the kernel's again at once. What still waits in its
/// queue is moved to another socket of the group where `net.ipv4.tcp_migrate_req` is on, reset
/// otherwise.
pub fn stop_listening(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: `fd` is a valid socket; shutdown takes no pointers.
    if unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether the kernel moves a closed listener's queue to another socket of its group
/// (`net.ipv4.tcp_migrate_req`, Linux 5.14+).
pub fn migrates_queues() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|s| s.trim() == "1")
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::Duration;

    use super::*;
    use crate::config::Balance;

    /// The slot a connection from `from` is accepted on.
    fn accepted_on(group: &[TcpListener], from: std::net::Ipv4Addr, to: SocketAddr) -> usize {
        let c = socket2::Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        c.bind(&SocketAddr::new(from.into(), 0).into()).unwrap();
        c.connect_timeout(&to.into(), Duration::from_secs(5))
            .unwrap();
        let mut c: TcpStream = c.into();
        c.write_all(b"x").unwrap();
        for _ in 0..500 {
            for (i, l) in group.iter().enumerate() {
                if let Ok((mut s, _)) = l.accept() {
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).unwrap();
                    return i;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("no socket of the group accepted the connection from {from}");
    }

    #[test]
    fn the_kernel_runs_the_program_each_address_sticks_and_a_missing_slot_is_skipped() {
        let addr = probe("127.0.0.1:0".parse().unwrap()).unwrap();
        let group: Vec<TcpListener> = (0..3)
            .map(|_| {
                let l = TcpListener::from(bind(addr, 64).unwrap());
                l.set_nonblocking(true).unwrap();
                l
            })
            .collect();
        assert!(
            probe(addr).is_err(),
            "a port the group listens on is not free"
        );
        attach(
            group[0].as_fd(),
            &crate::balance::program(Balance::Sticky, 3, &[0, 1, 2]),
        )
        .unwrap();
        let from = |i: u8| std::net::Ipv4Addr::new(127, 0, 0, i);
        let mut seen = std::collections::BTreeSet::new();
        for i in 2..22 {
            let first = accepted_on(&group, from(i), addr);
            for _ in 0..3 {
                assert_eq!(
                    accepted_on(&group, from(i), addr),
                    first,
                    "127.0.0.{i} moved"
                );
            }
            seen.insert(first);
        }
        assert_eq!(seen.len(), 3, "20 addresses over 3 slots: {seen:?}");
        // Slot 1 out: nobody lands there.
        attach(
            group[2].as_fd(),
            &crate::balance::program(Balance::Sticky, 3, &[0, 2]),
        )
        .unwrap();
        for i in 2..22 {
            assert_ne!(accepted_on(&group, from(i), addr), 1);
        }
        // A connection waits in a queue until accepted, and the queue says so.
        let _c = TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let waiting: u32 = group.iter().map(|l| queued(l.as_fd()).unwrap()).sum();
        assert_eq!(waiting, 1);
        // The last socket out of the group at once (the other two keep their indices): a
        // program for two slots reaches both, and never the socket that stopped listening.
        let first = group
            .iter()
            .position(|l| queued(l.as_fd()).unwrap() == 1)
            .unwrap();
        let _ = group[first].accept().unwrap();
        stop_listening(group[2].as_fd()).unwrap();
        attach(
            group[0].as_fd(),
            &crate::balance::program(Balance::Sticky, 2, &[0, 1]),
        )
        .unwrap();
        let slots: std::collections::BTreeSet<usize> = (2..22)
            .map(|i| accepted_on(&group[..2], from(i), addr))
            .collect();
        assert_eq!(slots.len(), 2);
    }
}
