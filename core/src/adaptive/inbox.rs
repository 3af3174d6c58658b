//! A lock-free hand-over from many threads to one: producers push, the consumer takes everything
//! at once. The connect path (`Watchdog::watch`) pushes with one allocation and one
//! compare-and-swap, and never waits for the watchdog thread; no lock exists that a `fork()`
//! could leave held in the child.
//!
//! A push-only stack emptied by swapping its head is free of the ABA problem: a producer links
//! its node to the head it saw and installs it only if the head is still that pointer, which is
//! then exactly the node it linked to.

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

struct Node<T> {
    value: T,
    next: *mut Node<T>,
}

pub struct Inbox<T> {
    head: AtomicPtr<Node<T>>,
}

// SAFETY: values move from the pushing thread to the taking thread; the list itself is only
// reached through the atomic head.
unsafe impl<T: Send> Send for Inbox<T> {}
// SAFETY: as above; `push` and `take_all` may run concurrently from any threads.
unsafe impl<T: Send> Sync for Inbox<T> {}

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Inbox {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

impl<T> Inbox<T> {
    pub fn push(&self, value: T) {
        let node = Box::into_raw(Box::new(Node {
            value,
            next: ptr::null_mut(),
        }));
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: `node` is ours until the compare-and-swap publishes it.
            unsafe { (*node).next = head };
            match self
                .head
                .compare_exchange_weak(head, node, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Everything pushed so far, oldest first.
    pub fn take_all(&self) -> Vec<T> {
        let mut p = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        let mut out = Vec::new();
        while !p.is_null() {
            // SAFETY: nodes come from Box::into_raw in `push`; the swap made this list ours alone.
            let node = unsafe { Box::from_raw(p) };
            p = node.next;
            out.push(node.value);
        }
        out.reverse();
        out
    }
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        drop(self.take_all());
    }
}

#[cfg(test)]
mod tests {
    use super::Inbox;
    use std::sync::Arc;

    #[test]
    fn many_producers_lose_nothing_and_keep_each_ones_order() {
        let inbox = Arc::new(Inbox::default());
        let producers: Vec<_> = (0..4u64)
            .map(|t| {
                let inbox = Arc::clone(&inbox);
                std::thread::spawn(move || (0..10_000u64).for_each(|i| inbox.push((t, i))))
            })
            .collect();
        let mut got = Vec::new();
        while got.len() < 40_000 {
            got.extend(inbox.take_all());
        }
        producers.into_iter().for_each(|p| p.join().unwrap());
        got.extend(inbox.take_all());
        assert_eq!(got.len(), 40_000);
        for t in 0..4 {
            let mine: Vec<u64> = got.iter().filter(|v| v.0 == t).map(|v| v.1).collect();
            assert_eq!(mine, (0..10_000).collect::<Vec<_>>());
        }
    }
}
