//! Message ids: 64-bit, unique across nodes, increasing in time, generated locally.
//!
//! Layout (snowflake-like): 41 bits of milliseconds since 2024-01-01 UTC, 10 bits of node id,
//! 12 bits of per-millisecond counter. The generator never goes backwards: if the clock steps
//! back, or a millisecond's 4096 ids run out, it borrows from the next millisecond of its own
//! logical clock. It starts above the highest id the store has seen, so a restart with a clock
//! that stepped back cannot repeat an id either.

use parking_lot::Mutex;

/// 2024-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: i64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
/// The highest node id.
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;

/// Generates msgids for one node.
pub struct MsgIdGen {
    node: u64,
    /// (logical ms since EPOCH_MS, counter within it)
    state: Mutex<(u64, u64)>,
}

impl MsgIdGen {
    /// `floor`: the highest msgid already issued (0 if none).
    pub fn new(node: u16, floor: u64) -> anyhow::Result<MsgIdGen> {
        anyhow::ensure!(node <= MAX_NODE, "node_id must be at most {MAX_NODE}");
        let floor_ms = floor >> (NODE_BITS + SEQ_BITS);
        let floor_seq = floor & ((1 << SEQ_BITS) - 1);
        Ok(MsgIdGen {
            node: u64::from(node),
            state: Mutex::new((floor_ms, floor_seq)),
        })
    }

    /// The next id, with its timestamp (Unix ms).
    pub fn next(&self) -> (u64, i64) {
        let now = (crate::now_ms() - EPOCH_MS).max(0) as u64;
        let mut st = self.state.lock();
        if now > st.0 {
            *st = (now, 0);
        } else {
            st.1 += 1;
            if st.1 >= 1 << SEQ_BITS {
                *st = (st.0 + 1, 0);
            }
        }
        let id = (st.0 << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | st.1;
        (id, st.0 as i64 + EPOCH_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_strictly_increase_even_in_a_burst() {
        let g = MsgIdGen::new(5, 0).unwrap();
        let mut last = 0;
        for _ in 0..20_000 {
            let (id, _) = g.next();
            assert!(id > last);
            assert_eq!((id >> SEQ_BITS) & u64::from(MAX_NODE), 5);
            last = id;
        }
    }

    #[test]
    fn starts_above_the_floor_when_the_clock_is_behind() {
        // A floor one hour in the future, as after a clock step back across a restart.
        let future_ms = (crate::now_ms() - EPOCH_MS + 3_600_000) as u64;
        let floor = (future_ms << 22) | (3 << 12) | 7;
        let g = MsgIdGen::new(3, floor).unwrap();
        assert!(g.next().0 > floor);
    }

    #[test]
    fn node_id_is_bounded() {
        assert!(MsgIdGen::new(1024, 0).is_err());
    }
}
