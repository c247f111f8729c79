//! Room in bounded channels: when a publisher may send, and when a consumer
//! that just took an item should wake the publisher for an early refill.
//!
//! A publisher never sends more than its channel has room for, so nothing
//! sits claimed in memory while other replicas are idle; and it refills in
//! batches (once half the channel is free), so claims stay large.

use crossbeam_channel::{Receiver, Sender};

/// Free room in a bounded channel: how much a pass may send without
/// blocking.
pub fn free_room<T>(tx: &Sender<T>) -> usize {
    tx.capacity().unwrap_or(usize::MAX).saturating_sub(tx.len())
}

/// The free room at which an early refill is worth making: half the
/// channel, so refills stay batched.
pub fn refill_room(capacity: usize) -> usize {
    (capacity / 2).max(1)
}

/// Whether a consumer that just took an item from `rx` should wake the
/// publisher: only once the channel has room for an early refill (or ran
/// dry), not on every item.
pub fn wants_refill<T>(rx: &Receiver<T>) -> bool {
    let capacity = rx.capacity().unwrap_or(1);
    rx.is_empty() || capacity.saturating_sub(rx.len()) >= refill_room(capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_wake_the_publisher_once_half_the_channel_is_free() {
        let (tx, rx) = crossbeam_channel::bounded::<u32>(10);
        for i in 0..10 {
            tx.send(i).unwrap();
        }
        let mut woke = Vec::new();
        while rx.try_recv().is_ok() {
            woke.push(wants_refill(&rx));
        }
        // Taking jobs 1 to 4 leaves less than half free: no wake-up; from
        // the fifth on, a claim is due (the publisher's own check decides).
        assert_eq!(
            woke,
            [
                false, false, false, false, true, true, true, true, true, true
            ]
        );
        assert_eq!(refill_room(10), 5);
        assert_eq!(refill_room(1), 1, "a one-slot channel refills when empty");
        assert_eq!(free_room(&tx), 10);
    }
}
