//! A lock-free hand-over from many threads to one: producers push, the consumer takes everything
//! at once. The connect path (`Watchdog::watch`) pushes with one allocation and one
//! compare-and-swap, and never waits for the watchdog thread; no lock exists that a `fork()`
//! could leave held in the child.
//!
//! Why it is lock-free: it is a push-only stack (Treiber's) emptied by swapping its head for
//! nothing. A push links a new node to the head it saw and installs it only if the head is still
//! that node (compare-and-swap), retrying when another push got in first; nobody ever waits for
//! another thread. A thread stopped halfway (interrupted by a signal whose handler pushes too, or
//! missing in a fork child) has changed nothing the others depend on. The head is an
//! [`ArcSwapOption`], whose reads and writes are lock-free, and the nodes are `Arc`s: a node a
//! losing producer still compares against cannot be freed and reused under it (no ABA).

use std::sync::Arc;

use arc_swap::ArcSwapOption;

struct Node<T> {
    value: T,
    next: Option<Arc<Node<T>>>,
}

impl<T> Drop for Node<T> {
    /// Unlinks the rest of the list one node at a time: a long list dropped recursively would
    /// overflow the stack.
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(node) = next {
            next = Arc::into_inner(node).and_then(|mut n| n.next.take());
        }
    }
}

pub struct Inbox<T> {
    head: ArcSwapOption<Node<T>>,
}

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Inbox {
            head: ArcSwapOption::empty(),
        }
    }
}

impl<T: Clone> Inbox<T> {
    pub fn push(&self, value: T) {
        // Read-copy-update: a node on top of the head seen, installed if the head is unchanged.
        self.head.rcu(|head| {
            Some(Arc::new(Node {
                value: value.clone(),
                next: head.clone(),
            }))
        });
    }

    /// Everything pushed so far, oldest first.
    pub fn take_all(&self) -> Vec<T> {
        let mut next = self.head.swap(None);
        let mut out = Vec::new();
        // A producer that lost a race may hold a node for a moment: copy values out rather
        // than unwrap nodes. Each node is freed as the walk leaves it.
        while let Some(node) = next {
            out.push(node.value.clone());
            next = node.next.clone();
        }
        out.reverse();
        out
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

    #[test]
    fn a_long_inbox_is_dropped_without_recursion() {
        let inbox = Inbox::default();
        (0..200_000u32).for_each(|i| inbox.push(i));
        drop(inbox);
    }
}
