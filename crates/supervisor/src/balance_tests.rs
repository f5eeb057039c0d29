use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

/// Runs `prog` as the kernel would on a SYN whose network header is `packet`: the opcodes the
/// builder emits, loads relative to the network header, jumps checked to stay in the program,
/// scratch memory read only after it was written. `None` where the kernel's checker or run
/// would fail.
fn run(prog: &[Insn], packet: &[u8]) -> Option<u32> {
    assert!(prog.len() <= MAX_INSNS, "{} instructions", prog.len());
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem: [Option<u32>; 16] = [None; 16];
    let load = |k: u32, size: usize| -> Option<u32> {
        let off = k.checked_sub(NET)? as usize;
        let bytes = packet.get(off..off + size)?;
        Some(bytes.iter().fold(0u32, |v, b| (v << 8) | u32::from(*b)))
    };
    let mut pc = 0usize;
    loop {
        let i = *prog.get(pc)?;
        pc += 1;
        match i.code {
            LD_W_ABS => a = load(i.k, 4)?,
            LD_B_ABS => a = load(i.k, 1)?,
            LD_W_IND => a = load(i.k.wrapping_add(x), 4)?,
            LDX_B_MSH => x = 4 * (load(i.k, 1)? & 0xf),
            LD_MEM => a = mem[i.k as usize]?,
            ST => mem[i.k as usize] = Some(a),
            TAX => x = a,
            ALU_MUL_K => a = a.wrapping_mul(i.k),
            ALU_AND_K => a &= i.k,
            ALU_RSH_K => a >>= i.k,
            ALU_XOR_X => a ^= x,
            JA => pc += i.k as usize,
            JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            JGE_K => pc += usize::from(if a >= i.k { i.jt } else { i.jf }),
            RET_K => return Some(i.k),
            other => panic!("opcode {other:#x} not interpreted"),
        }
    }
}

/// An IPv4 SYN's network header (IHL `ihl` words) and TCP ports.
fn v4(src: Ipv4Addr, sport: u16, ihl: u8) -> Vec<u8> {
    let mut p = vec![0u8; usize::from(ihl) * 4 + 20];
    p[0] = 0x40 | ihl;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&[127, 0, 0, 1]);
    let t = usize::from(ihl) * 4;
    p[t..t + 2].copy_from_slice(&sport.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&3000u16.to_be_bytes());
    p
}

fn v6(src: Ipv6Addr, sport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 60];
    p[0] = 0x60;
    p[8..24].copy_from_slice(&src.octets());
    p[40..42].copy_from_slice(&sport.to_be_bytes());
    p[42..44].copy_from_slice(&3000u16.to_be_bytes());
    p
}

fn addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i * 7919)
}

/// How many of `picks` each slot got.
fn counts(picks: impl Iterator<Item = u32>) -> BTreeMap<u32, usize> {
    let mut c = BTreeMap::new();
    for p in picks {
        *c.entry(p).or_default() += 1;
    }
    c
}

#[test]
fn sticky_sends_every_connection_of_an_address_to_one_slot_and_addresses_evenly() {
    let prog = program(Balance::Sticky, 4, &[0, 1, 2, 3]);
    for i in 0..200 {
        let slots: BTreeSet<u32> = (1024..1100)
            .map(|port| run(&prog, &v4(addr(i), port, 5)).unwrap())
            .collect();
        assert_eq!(slots.len(), 1, "address {} went to {slots:?}", addr(i));
    }
    let c = counts((0..4000).map(|i| run(&prog, &v4(addr(i), 40000, 5)).unwrap()));
    assert_eq!(c.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert!(c.values().all(|n| (850..=1150).contains(n)), "{c:?}");
    // The 50 loopback addresses of the e2e test reach more than one slot.
    let loopback =
        counts((2..52).map(|i| run(&prog, &v4(Ipv4Addr::new(127, 0, 0, i), 5000, 5)).unwrap()));
    assert!(loopback.len() >= 3, "{loopback:?}");
}

#[test]
fn spread_hashes_ports_too_even_for_one_client_and_reads_past_ip_options() {
    let prog = program(Balance::Spread, 4, &[0, 1, 2, 3]);
    let one = Ipv4Addr::new(127, 0, 0, 1);
    // A client's ephemeral ports, consecutive: near a quarter each.
    let c = counts((30000..34000).map(|port| run(&prog, &v4(one, port, 5)).unwrap()));
    assert!(c.values().all(|n| (850..=1150).contains(n)), "{c:?}");
    // With IP options (IHL 8) the ports are found past them: the same spread.
    let opts = counts((30000..34000).map(|port| run(&prog, &v4(one, port, 8)).unwrap()));
    assert_eq!(opts, c);
}

#[test]
fn ipv6_clients_are_hashed_on_their_whole_address() {
    let prog = program(Balance::Sticky, 3, &[0, 1, 2]);
    let c = counts((0..3000u128).map(|i| {
        // Equal words (a plain xor of them would be constant), then a varying last word.
        let src = if i % 2 == 0 {
            Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000 + (i << 64) + i)
        } else {
            Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000 + i)
        };
        run(&prog, &v6(src, 40000)).unwrap()
    }));
    assert!(c.values().all(|n| (850..=1150).contains(n)), "{c:?}");
    let same: BTreeSet<u32> = (1024..1100)
        .map(|port| run(&prog, &v6(Ipv6Addr::LOCALHOST, port)).unwrap())
        .collect();
    assert_eq!(same.len(), 1);
    let spread = program(Balance::Spread, 3, &[0, 1, 2]);
    let ports: BTreeSet<u32> = (1024..1100)
        .map(|port| run(&spread, &v6(Ipv6Addr::LOCALHOST, port)).unwrap())
        .collect();
    assert_eq!(ports.len(), 3);
}

#[test]
fn a_slot_that_does_not_serve_has_its_clients_spread_over_the_others_and_nobody_else_moves() {
    let all = program(Balance::Sticky, 4, &[0, 1, 2, 3]);
    let without_1 = program(Balance::Sticky, 4, &[0, 2, 3]);
    let mut moved_to = BTreeMap::new();
    for i in 0..4000 {
        let p = v4(addr(i), 40000, 5);
        let (before, after) = (run(&all, &p).unwrap(), run(&without_1, &p).unwrap());
        if before == 1 {
            assert_ne!(after, 1);
            *moved_to.entry(after).or_insert(0) += 1;
        } else {
            assert_eq!(before, after, "a client of a serving slot moved");
        }
    }
    assert_eq!(
        moved_to.len(),
        3,
        "slot 1's clients over 0, 2 and 3: {moved_to:?}"
    );
    assert!(moved_to.values().all(|n| *n > 200), "{moved_to:?}");
}

#[test]
fn with_nothing_serving_everything_waits_on_slot_0_and_programs_stay_within_the_limit() {
    for prog in [
        program(Balance::Sticky, 4, &[]),
        program(Balance::Spread, 0, &[]),
        program(Balance::Shared, 4, &[0]),
    ] {
        assert_eq!(run(&prog, &v4(addr(1), 1, 5)), Some(0));
    }
    // The most slots, half of them missing: within the kernel's limit, and a serving slot.
    let serving: Vec<usize> = (0..crate::config::MAX_INSTANCES).step_by(2).collect();
    for mode in [Balance::Sticky, Balance::Spread] {
        let prog = program(mode, crate::config::MAX_INSTANCES, &serving);
        assert!(prog.len() <= MAX_INSNS, "{}", prog.len());
        for port in 0..500 {
            let slot = run(&prog, &v4(addr(port), port as u16, 5)).unwrap();
            assert_eq!(slot % 2, 0, "slot {slot} does not serve");
        }
    }
    // Slots that are not a prefix (the first ones restarting) are never picked either.
    let prog = program(Balance::Sticky, 5, &[3, 4]);
    let c = counts((0..1000).map(|i| run(&prog, &v4(addr(i), 1, 5)).unwrap()));
    assert_eq!(c.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
}

#[test]
fn scaling_moves_only_the_clients_it_must() {
    let picks = |slots: usize| -> Vec<u32> {
        let serving: Vec<usize> = (0..slots).collect();
        let prog = program(Balance::Sticky, slots, &serving);
        (0..4000)
            .map(|i| run(&prog, &v4(addr(i), 1, 5)).unwrap())
            .collect()
    };
    let (four, five, three) = (picks(4), picks(5), picks(3));
    // Up: a client moves only to the new slot, about a fifth of them.
    let moved: Vec<(u32, u32)> = four
        .iter()
        .zip(&five)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (*a, *b))
        .collect();
    assert!(moved.iter().all(|(_, to)| *to == 4), "{:?}", &moved[..5]);
    assert!(
        (600..1000).contains(&moved.len()),
        "{} of 4000 moved",
        moved.len()
    );
    // Down: only the clients of the slot that went move.
    for (a, b) in four.iter().zip(&three) {
        if *a < 3 {
            assert_eq!(a, b, "a client of a slot that stays moved");
        }
    }
}

#[test]
fn every_slot_count_and_serving_set_gets_a_serving_slot_from_an_even_table() {
    for slots in 1..20 {
        for n in 1..=slots {
            let serving: Vec<usize> = (slots - n..slots).collect();
            let prog = program(Balance::Sticky, slots, &serving);
            let slot = run(&prog, &v4(addr(slots as u32), 1, 5)).unwrap() as usize;
            assert!(
                serving.contains(&slot),
                "{slots} slots, {serving:?}: {slot}"
            );
        }
        // Each slot gets its share of the buckets, as a hash does: within four standard
        // deviations (a third of it, at most, for 20 slots).
        let all: Vec<usize> = (0..slots).collect();
        let t = table(slots, &all);
        let share = (BUCKETS / slots) as f64;
        for s in 0..slots {
            let n = t.iter().filter(|x| **x == s).count() as f64;
            assert!(
                (n - share).abs() <= 4.0 * share.sqrt() + 1.0,
                "{slots} slots: slot {s} has {n}"
            );
        }
    }
    // A packet too short to read fails like the kernel's (which then returns 0).
    assert_eq!(
        run(&program(Balance::Spread, 2, &[0, 1]), &[0x45, 0, 0]),
        None
    );
}
