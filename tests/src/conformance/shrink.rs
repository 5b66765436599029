//! Greedy delta debugging over the ops of a failing trace.
//!
//! The trace keeps op 0 (`create`) and the failing op; everything after the failing op goes
//! first. Then chunks of the remaining ops are removed, halving the chunk size whenever no
//! chunk can go, down to single ops, until no single deletion keeps the mismatch. Each round
//! tries all its candidates in one batch (the caller runs MXNet once per round: importing it
//! takes seconds).

/// A candidate: the indices (into the original ops) it keeps, in order.
pub type Candidate = Vec<usize>;

/// The outcome of a shrink.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// Indices of the original ops the minimal trace keeps.
    pub kept: Candidate,
    /// Rounds run (one batch of candidates each).
    pub rounds: usize,
    /// Candidates tried.
    pub tried: usize,
}

/// Minimises the trace of `len` ops whose op `target` fails.
///
/// `first_failing` runs a batch of candidates and returns the position (in the batch) of the
/// first one that still fails, or `None`; its error ends the shrink with what was reached.
pub fn shrink<F>(len: usize, target: usize, mut first_failing: F) -> Result<Shrunk, String>
where
    F: FnMut(&[Candidate]) -> Result<Option<usize>, String>,
{
    let mut kept: Candidate = (0..len.min(target + 1)).collect();
    let mut rounds = 0;
    let mut tried = 0;
    let mut parts = 2usize;
    loop {
        let removable: Vec<usize> = kept
            .iter()
            .copied()
            .filter(|&i| i != 0 && i != target)
            .collect();
        if removable.is_empty() {
            break;
        }
        parts = parts.clamp(1, removable.len());
        let chunk = removable.len().div_ceil(parts);
        let candidates: Vec<Candidate> = removable
            .chunks(chunk)
            .map(|gone| kept.iter().copied().filter(|i| !gone.contains(i)).collect())
            .collect();
        rounds += 1;
        tried += candidates.len();
        match first_failing(&candidates)? {
            Some(found) if found < candidates.len() => {
                kept = candidates[found].clone();
                parts = parts.saturating_sub(1).max(2);
            }
            _ if chunk == 1 => break,
            _ => parts = (parts * 2).min(removable.len()),
        }
    }
    Ok(Shrunk {
        kept,
        rounds,
        tried,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_to_the_ops_the_failure_needs() {
        // The failure at op 9 needs ops 3 and 5 (and op 0 is kept).
        let fails = |c: &Candidate| c.contains(&3) && c.contains(&5) && c.contains(&9);
        let shrunk = shrink(12, 9, |batch| Ok(batch.iter().position(fails))).expect("shrink");
        assert_eq!(shrunk.kept, vec![0, 3, 5, 9]);
    }
}
