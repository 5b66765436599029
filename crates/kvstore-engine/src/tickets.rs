//! The set of issued, not yet completed tickets of a var or an engine. Tickets are issued in
//! increasing order and complete in any order; the questions asked are "which is the oldest
//! incomplete one" and "how many are incomplete". A window of done flags starting at the oldest
//! incomplete ticket answers both in O(1) and reuses its memory, where a `BTreeSet` allocated
//! and rebalanced on every operation of every var.

use std::collections::VecDeque;

#[derive(Debug, Default)]
pub(crate) struct Tickets {
    /// The ticket of `done[0]`: every ticket below it has completed.
    base: u64,
    /// Done flags of tickets `base..base + done.len()`; the front is always `false`.
    done: VecDeque<bool>,
    /// Number of `false` flags.
    open: usize,
}

impl Tickets {
    /// Records `ticket`, the next one in issue order, as incomplete.
    pub(crate) fn insert(&mut self, ticket: u64) {
        if self.done.is_empty() {
            self.base = ticket;
        }
        // Tickets come in order; a gap (never made by the engine) counts as completed.
        while self.base + (self.done.len() as u64) < ticket {
            self.done.push_back(true);
        }
        self.done.push_back(false);
        self.open += 1;
    }

    /// Marks `ticket` completed.
    pub(crate) fn remove(&mut self, ticket: u64) {
        let Some(index) = ticket.checked_sub(self.base) else {
            return;
        };
        if let Some(flag) = self.done.get_mut(index as usize) {
            if !*flag {
                *flag = true;
                self.open -= 1;
            }
        }
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            self.base += 1;
        }
    }

    /// The oldest incomplete ticket.
    pub(crate) fn first(&self) -> Option<u64> {
        (self.open > 0).then_some(self.base)
    }

    pub(crate) fn len(&self) -> usize {
        self.open
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.open == 0
    }
}

#[cfg(test)]
mod tests {
    use super::Tickets;
    use std::collections::BTreeSet;

    #[test]
    fn behaves_as_an_ordered_set_of_incomplete_tickets() {
        // A fixed pseudo-random completion order checked against a BTreeSet.
        let mut tickets = Tickets::default();
        let mut model = BTreeSet::new();
        let mut state = 12345u64;
        let mut next = 0u64;
        for _ in 0..5000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if state >> 62 != 0 || model.is_empty() {
                tickets.insert(next);
                model.insert(next);
                next += 1;
            } else {
                let pick = *model
                    .iter()
                    .nth((state >> 33) as usize % model.len())
                    .unwrap_or(&0);
                tickets.remove(pick);
                model.remove(&pick);
            }
            assert_eq!(tickets.first(), model.first().copied());
            assert_eq!(tickets.len(), model.len());
            assert_eq!(tickets.is_empty(), model.is_empty());
        }
    }
}
