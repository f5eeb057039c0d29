//! The kernel program that picks a worker slot's socket for each new connection, for an app
//! with a socket per slot (`balance = "sticky" | "spread"`). Pure: it builds a classic BPF
//! program (`SO_ATTACH_REUSEPORT_CBPF`, run on each SYN) from the mode, the app's slots and
//! the slots serving now; [`crate::sys::reuseport`] attaches it.
//!
//! The program hashes the client's address (`sticky`) or the addresses and ports (`spread`)
//! and takes it modulo the app's slots: the bucket is the slot, and the socket's index in the
//! kernel's `SO_REUSEPORT` group, because the shell binds a group's sockets in slot order and
//! only ever closes its last ones. A bucket whose slot does not serve (its worker crashed, or
//! is starting) is sent to a serving slot picked by more bits of the same hash, so the clients
//! of a missing slot spread over the others while everyone else's stay where they were. With
//! nothing serving it answers an index past the group, and the kernel falls back to its own
//! hash (the connections wait in a queue a worker will take them from).

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
pub(crate) const ALU_DIV_K: u16 = 0x34;
pub(crate) const ALU_RSH_K: u16 = 0x74;
pub(crate) const ALU_MOD_K: u16 = 0x94;
pub(crate) const ALU_XOR_X: u16 = 0xac;
pub(crate) const JA: u16 = 0x05;
pub(crate) const JEQ_K: u16 = 0x15;
pub(crate) const RET_K: u16 = 0x06;
pub(crate) const RET_A: u16 = 0x16;

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

/// The program for an app of `slots` slots of which `serving` (in order) take connections.
pub fn program(mode: Balance, slots: usize, serving: &[usize]) -> Vec<Insn> {
    let nothing = vec![op(RET_K, u32::MAX)];
    if slots == 0 || serving.is_empty() || mode == Balance::Shared {
        return nothing;
    }
    let mut out = hash(mode);
    out.push(op(ST, 0));
    out.push(op(ALU_MOD_K, slots as u32));
    let missing: Vec<usize> = (0..slots).filter(|b| !serving.contains(b)).collect();
    if missing.is_empty() {
        out.push(op(RET_A, 0));
        return out;
    }
    // A missing bucket jumps to the remap, past the rest of this chain and its `ret a`.
    for (i, b) in missing.iter().enumerate() {
        out.push(jeq(*b as u32, 0, 1));
        out.push(op(JA, (2 * (missing.len() - i - 1) + 1) as u32));
    }
    out.push(op(RET_A, 0));
    // The remap: another part of the hash picks one of the serving slots.
    out.extend([
        op(LD_MEM, 0),
        op(ALU_DIV_K, slots as u32),
        op(ALU_MOD_K, serving.len() as u32),
    ]);
    for (k, slot) in serving.iter().enumerate() {
        out.push(jeq(k as u32, 0, 1));
        out.push(op(RET_K, *slot as u32));
    }
    out.push(op(RET_K, serving[0] as u32));
    if out.len() > MAX_INSNS {
        // Not reachable within MAX_INSTANCES slots; never a program the kernel refuses.
        return nothing;
    }
    out
}

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;
