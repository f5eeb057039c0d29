//! The kernel program that picks a worker slot's socket for each new connection, for an app
//! with a socket per slot (`balance = "sticky" | "spread"`). Pure: it builds a classic BPF
//! program (`SO_ATTACH_REUSEPORT_CBPF`, run on each SYN) from the mode, the app's slots and
//! the slots serving now; [`crate::sys::reuseport`] attaches it.
//!
//! The program hashes the client's address (`sticky`) or the addresses and ports (`spread`)
//! into one of [`BUCKETS`] buckets and looks the bucket up in a table ([`table`]) of slots. A
//! slot is the socket's index in the kernel's `SO_REUSEPORT` group too, because the shell binds
//! a group's sockets in slot order and only ever closes its last ones. The table is consistent
//! (jump consistent hashing of each bucket): going from N to N + 1 slots moves a bucket in
//! N + 1 to the new slot and no other, and going down moves only the buckets of the slots that
//! went. A bucket whose slot does not serve (its worker crashed, or is starting) goes to a
//! serving slot picked the same way among those, so the clients of a missing slot spread over
//! the others while everyone else's stay where they were, and come back with it. With nothing
//! serving everything goes to slot 0, whose socket is never closed while the app runs: the
//! connections wait in its queue for a worker.

use crate::config::Balance;

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    /// Operation.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

/// The most instructions the kernel accepts in a classic program (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// How many buckets the hash picks from (a power of two): at least one per slot
/// ([`crate::config::MAX_INSTANCES`]), and a lookup of them within [`MAX_INSNS`].
pub const BUCKETS: usize = 1024;

/// Loads relative to the network header (`SKF_NET_OFF`): the program runs past the TCP header.
const NET: u32 = 0xfff0_0000;

// Opcodes (linux/filter.h), as used here.
pub(crate) const LD_W_ABS: u16 = 0x20;
pub(crate) const LD_B_ABS: u16 = 0x30;
pub(crate) const LD_W_IND: u16 = 0x40;
pub(crate) const LDX_B_MSH: u16 = 0xb1;
pub(crate) const LD_MEM: u16 = 0x60;
pub(crate) const ST: u16 = 0x02;
pub(crate) const TAX: u16 = 0x07;
pub(crate) const ALU_MUL_K: u16 = 0x24;
pub(crate) const ALU_AND_K: u16 = 0x54;
pub(crate) const ALU_RSH_K: u16 = 0x74;
pub(crate) const ALU_XOR_X: u16 = 0xac;
pub(crate) const JA: u16 = 0x05;
pub(crate) const JEQ_K: u16 = 0x15;
pub(crate) const JGE_K: u16 = 0x35;
pub(crate) const RET_K: u16 = 0x06;

fn op(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> Insn {
    Insn {
        code: JEQ_K,
        jt,
        jf,
        k,
    }
}

/// The hash of a SYN's addresses (and ports, for `spread`), in A; uses X, M[1] and M[2].
fn hash(mode: Balance) -> Vec<Insn> {
    let spread = mode == Balance::Spread;
    // IPv6: the four words of the source address, each multiplied in before the next is
    // mixed (a plain xor would cancel equal words), then the ports (a TCP header right after
    // the fixed header: extension headers are not looked through).
    let mut words = vec![NET + 12, NET + 16, NET + 20];
    if spread {
        words.push(NET + 40);
    }
    let mut v6 = vec![op(LD_W_ABS, NET + 8)];
    for w in words {
        v6.extend([
            op(ALU_MUL_K, 0x9e37_79b1),
            op(ST, 2),
            op(LD_W_ABS, w),
            op(TAX, 0),
            op(LD_MEM, 2),
            op(ALU_XOR_X, 0),
        ]);
    }
    // IPv4 (also what an IPv6 socket gets from a v4-mapped client): the source address, then
    // the ports past a header of IHL words.
    let mut v4 = vec![op(LD_W_ABS, NET + 12)];
    if spread {
        v4.extend([
            op(ST, 1),
            op(LDX_B_MSH, NET),
            op(LD_W_IND, NET),
            op(TAX, 0),
            op(LD_MEM, 1),
            op(ALU_XOR_X, 0),
        ]);
    }
    // Which one: the IP version in the first nibble.
    let mut out = vec![
        op(LD_B_ABS, NET),
        op(ALU_RSH_K, 4),
        // Past v6 and its closing jump when not 6.
        jeq(6, 0, (v6.len() + 1) as u8),
    ];
    out.extend(v6);
    out.push(op(JA, v4.len() as u32));
    out.extend(v4);
    // Mix every bit into the low ones (two multiply-xorshift rounds).
    out.extend([
        op(ALU_MUL_K, 0x9e37_79b1),
        op(TAX, 0),
        op(ALU_RSH_K, 16),
        op(ALU_XOR_X, 0),
        op(ALU_MUL_K, 0x85eb_ca6b),
        op(TAX, 0),
        op(ALU_RSH_K, 13),
        op(ALU_XOR_X, 0),
    ]);
    out
}

/// Jump consistent hash (Lamping and Veach, 2014): which of `n` (at least 1) buckets `key`
/// goes to, such that from `n` to `n + 1` a key moves only to the new bucket.
fn jump(mut key: u64, n: usize) -> usize {
    let (mut b, mut j) = (0u64, 0u64);
    while j < n as u64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as u64;
    }
    b as usize
}

/// A bucket's number mixed into a key for [`jump`] (SplitMix64's finalizer).
fn key(bucket: usize, salt: u64) -> u64 {
    let mut z = (bucket as u64 ^ salt).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The slot of each bucket, for an app of `slots` slots of which `serving` (in order) take
/// connections: its own slot when that serves, else one of the serving ones; slot 0 for every
/// bucket when none serves.
pub fn table(slots: usize, serving: &[usize]) -> Vec<usize> {
    (0..BUCKETS)
        .map(|b| {
            if slots == 0 || serving.is_empty() {
                return 0;
            }
            let home = jump(key(b, 0), slots);
            if serving.contains(&home) {
                home
            } else {
                serving[jump(key(b, 0x5eed), serving.len())]
            }
        })
        .collect()
}

/// The program for an app of `slots` slots of which `serving` (in order) take connections.
pub fn program(mode: Balance, slots: usize, serving: &[usize]) -> Vec<Insn> {
    let table = table(slots, serving);
    if mode == Balance::Shared || table.iter().all(|s| *s == table[0]) {
        return vec![op(RET_K, table[0] as u32)];
    }
    let mut out = hash(mode);
    out.push(op(ALU_AND_K, (BUCKETS - 1) as u32));
    // The table as runs of buckets going to one slot, in order: below a run's end, its slot.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (b, slot) in table.iter().enumerate() {
        match runs.last_mut() {
            Some((end, s)) if s == slot => *end = b + 1,
            _ => runs.push((b + 1, *slot)),
        }
    }
    let last = runs.len() - 1;
    for (i, (end, slot)) in runs.into_iter().enumerate() {
        if i < last {
            out.push(Insn {
                code: JGE_K,
                jt: 1,
                jf: 0,
                k: end as u32,
            });
        }
        out.push(op(RET_K, slot as u32));
    }
    // At most two per bucket past the hash (BUCKETS is sized for it): never a program the
    // kernel refuses.
    debug_assert!(out.len() <= MAX_INSNS, "{} instructions", out.len());
    out
}

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;
