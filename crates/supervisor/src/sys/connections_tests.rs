// The fixtures are the kernel's text on a little-endian host (x86-64, aarch64): the address words
// are printed in host byte order.
#![cfg(target_endian = "little")]

use super::*;

/// `/proc/net/tcp` with, on 127.0.0.1:8080: the listener, two established connections (111,
/// 114), the client end of the first (local port 54321: not ours), one in TIME_WAIT, one in
/// CLOSE_WAIT, one still in the accept queue (inode 0); on 0.0.0.0:9090 one connection to
/// 10.1.1.3 (120).
const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 100 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 112 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:D432 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   4: 0100007F:1F90 0100007F:D433 08 00000000:00000000 00:00000000 00000000  1000        0 113 1 0000000000000000 20 4 30 10 -1
   5: 0100007F:1F90 0100007F:D434 01 00000000:00000000 00:00000000 00000000  1000        0 0 1 0000000000000000 20 4 30 10 -1
   6: 0100007F:1F90 0100007F:D435 01 00000000:00000000 00:00000000 00000000  1000        0 114 1 0000000000000000 20 4 30 10 -1
   7: 0301010A:2382 0100007F:D436 01 00000000:00000000 00:00000000 00000000  1000        0 120 1 0000000000000000 20 4 30 10 -1
";

/// `/proc/net/tcp6` with, on [::]:8443: ::1 -> ::1 (211), an IPv4 client seen v4-mapped
/// (::ffff:127.0.0.1, 212), 2001:db8::1 (213); one in FIN_WAIT1 (214).
const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 200 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:20FB 00000000000000000000000001000000:B3A0 01 00000000:00000000 00:00000000 00000000  1000        0 211 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:20FB 0000000000000000FFFF00000100007F:B3A1 01 00000000:00000000 00:00000000 00000000  1000        0 212 1 0000000000000000 20 4 30 10 -1
   3: B80D0120000000000000000001000000:20FB B80D0120000000000000000002000000:B3A2 01 00000000:00000000 00:00000000 00000000  1000        0 213 1 0000000000000000 20 4 30 10 -1
   4: 00000000000000000000000001000000:20FB 00000000000000000000000001000000:B3A3 04 00000000:00000000 01:00000014 00000000  1000        0 214 1 0000000000000000 20 4 30 10 -1
";

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

fn inodes(e: &Established) -> Vec<u64> {
    let mut v: Vec<u64> = e.by_inode.keys().copied().collect();
    v.sort_unstable();
    v
}

#[test]
fn ipv4_established_connections_of_the_listener_and_nothing_else() {
    let on = addrs(&["127.0.0.1:8080"]);
    let e = Established::parse(&[TCP, TCP6], &on);
    assert_eq!(
        inodes(&e),
        [111, 114],
        "listener, client end, other states, queued: out"
    );
    assert_eq!(e.by_inode[&111], "127.0.0.1:8080".parse().unwrap());
    // A worker holding 111 and its listener (100) and some unrelated socket (112).
    assert_eq!(e.count(&[100, 111, 112], &on), 1);
    assert_eq!(e.count(&[111, 114], &on), 2);
    assert_eq!(e.count(&[], &on), 0);
}

#[test]
fn a_wildcard_listener_takes_every_local_address_of_its_port() {
    let e = Established::parse(&[TCP], &addrs(&["0.0.0.0:9090"]));
    assert_eq!(inodes(&e), [120]);
    assert_eq!(e.by_inode[&120], "10.1.1.3:9090".parse().unwrap());
    // Another address on the port is not the listener's.
    assert!(
        Established::parse(&[TCP], &addrs(&["127.0.0.1:9090"]))
            .by_inode
            .is_empty()
    );
}

#[test]
fn ipv6_and_v4_mapped_clients_of_an_ipv6_listener() {
    let on = addrs(&["[::]:8443"]);
    let e = Established::parse(&[TCP, TCP6], &on);
    assert_eq!(
        inodes(&e),
        [211, 212, 213],
        "FIN_WAIT1 and the listener are out"
    );
    assert_eq!(e.by_inode[&211], "[::1]:8443".parse().unwrap());
    assert_eq!(e.by_inode[&212], "[::ffff:127.0.0.1]:8443".parse().unwrap());
    assert_eq!(e.by_inode[&213], "[2001:db8::1]:8443".parse().unwrap());
    // A listener on one address: the v4-mapped client counts for 127.0.0.1.
    let one = Established::parse(&[TCP6], &addrs(&["127.0.0.1:8443"]));
    assert_eq!(inodes(&one), [212]);
    let v6 = Established::parse(&[TCP6], &addrs(&["[2001:db8::1]:8443"]));
    assert_eq!(inodes(&v6), [213]);
}

#[test]
fn counts_keep_each_app_to_its_own_addresses() {
    let all = addrs(&["127.0.0.1:8080", "0.0.0.0:9090", "[::]:8443"]);
    let e = Established::parse(&[TCP, TCP6], &all);
    assert_eq!(e.by_inode.len(), 6);
    let group = [111, 120, 211, 212];
    assert_eq!(e.count(&group, &all), 4);
    assert_eq!(e.count(&group, &all[..1]), 1);
    assert_eq!(e.count(&group, &all[1..2]), 1);
    assert_eq!(e.count(&group, &all[2..]), 2);
}

#[test]
fn nothing_asked_nothing_kept_and_garbage_is_skipped() {
    assert!(Established::parse(&[TCP, TCP6], &[]).by_inode.is_empty());
    assert!(Established::read(&[]).by_inode.is_empty());
    let on = addrs(&["127.0.0.1:8080"]);
    let garbage =
        "x\n 1: 0100007F:ZZZZ 0100007F:D431 01 0 0 0 0 0 9\n 2: 01007F:1F90 0:0 01 0 0 0 0 0 9\n";
    assert!(Established::parse(&[garbage], &on).by_inode.is_empty());
}

#[test]
fn fd_links_that_are_sockets() {
    assert_eq!(socket_inode("socket:[12345]"), Some(12345));
    assert_eq!(socket_inode("pipe:[12345]"), None);
    assert_eq!(socket_inode("/dev/null"), None);
    assert_eq!(socket_inode("socket:[x]"), None);
}

#[test]
fn reads_this_hosts_tables_with_a_connection_of_its_own() {
    use std::os::unix::fs::MetadataExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let on = [listener.local_addr().unwrap()];
    let _client = std::net::TcpStream::connect(on[0]).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&accepted);
    let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .unwrap()
        .ino();
    let e = Established::read(&on);
    assert_eq!(inodes(&e), [inode]);
    assert_eq!(e.count(&[inode], &on), 1);
}
