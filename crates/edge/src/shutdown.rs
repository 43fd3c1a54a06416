//! The signal that tells a listener's open connections to finish what
//! they serve and close.
//!
//! A connection checks it on every poll, so checking takes no lock: a
//! flag. To be woken when it flips, a connection's task joins a list of
//! wakers at the first poll of each wait (a TLS connection waits for its
//! handshake, for an HTTP/2 preface and then serves), not per request,
//! and leaves it when that wait ends.
//! (hyper-util's graceful shutdown watches only its own connection types,
//! and polls a watch channel's change on every poll of every connection:
//! it cost the HTTPS keep-alive proxy bench about 0.5 us per request.)

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

/// One listener's stop signal; clones share it.
#[derive(Clone, Default)]
pub(crate) struct Stop {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    stopped: AtomicBool,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    next: u64,
    wakers: HashMap<u64, Waker>,
}

impl Stop {
    /// Tells every connection to finish, now and when it is first polled.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(&mut self.waiting().wakers);
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    fn stopped_now(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.inner.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `waker` on the list [`Stop::stop`] wakes, until the seat drops.
    fn join(&self, waker: &Waker) -> Seat {
        let mut waiting = self.waiting();
        let key = waiting.next;
        waiting.next += 1;
        waiting.wakers.insert(key, waker.clone());
        Seat {
            stop: self.clone(),
            key,
        }
    }

    /// Resolves once [`Stop::stop`] has been called. Like
    /// [`until_stopped`], it keeps the waker of its first poll: poll it
    /// from one task only.
    pub async fn stopped(&self) {
        let mut seat = None;
        std::future::poll_fn(|cx| {
            if seat.is_none() && !self.stopped_now() {
                seat = Some(self.join(cx.waker()));
            }
            if self.stopped_now() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    #[cfg(test)]
    fn waiting_count(&self) -> usize {
        self.waiting().wakers.len()
    }
}

/// A place on the wake list; leaving is dropping it.
struct Seat {
    stop: Stop,
    key: u64,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut waiting = self.stop.waiting();
        waiting.wakers.remove(&self.key);
        // After a burst of connections, give the room back.
        if waiting.wakers.is_empty() && waiting.wakers.capacity() > 64 {
            waiting.wakers.shrink_to_fit();
        }
    }
}

/// Serves `connection` until it ends; once `stop` has been stopped, lets
/// it finish the requests in flight and close (`graceful` starts that).
/// Await it as the whole of the connection's task: the waker it keeps is
/// that of its first poll.
pub(crate) async fn until_stopped<C, E>(
    connection: C,
    stop: &Stop,
    graceful: fn(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut connection = std::pin::pin!(connection);
    let mut seat = None;
    let mut asked = false;
    std::future::poll_fn(|cx| {
        if !asked {
            if seat.is_none() && !stop.stopped_now() {
                seat = Some(stop.join(cx.waker()));
            }
            // Checked again after joining: a stop between the first check
            // and the join woke the list without this task on it.
            if stop.stopped_now() {
                graceful(connection.as_mut());
                asked = true;
                seat = None;
            }
        }
        connection.as_mut().poll(cx)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Context;

    /// A connection that serves until asked to finish, then ends at its
    /// next poll.
    #[derive(Default)]
    struct Conn {
        asked: bool,
    }

    impl Future for Conn {
        type Output = Result<(), ()>;

        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
            if self.asked {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    fn finish(conn: Pin<&mut Conn>) {
        conn.get_mut().asked = true;
    }

    #[tokio::test]
    async fn open_connections_are_woken_and_asked_to_finish() {
        let stop = Stop::default();
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move { until_stopped(Conn::default(), &stop, finish).await })
            })
            .collect();
        // Let each task run to its first poll and join the list.
        while stop.waiting_count() < 3 {
            tokio::task::yield_now().await;
        }
        stop.stop();
        for task in tasks {
            let ended = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
            assert_eq!(ended.expect("woken").expect("task"), Ok(()));
        }
        assert_eq!(stop.waiting_count(), 0);
    }

    #[tokio::test]
    async fn stopped_resolves_when_the_stop_comes_and_at_once_after() {
        let stop = Stop::default();
        let waiting = tokio::spawn({
            let stop = stop.clone();
            async move { stop.stopped().await }
        });
        while stop.waiting_count() < 1 {
            tokio::task::yield_now().await;
        }
        stop.stop();
        let woken = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        woken.expect("woken").expect("task");
        stop.stopped().await;
        assert_eq!(stop.waiting_count(), 0);
    }

    #[tokio::test]
    async fn a_connection_that_starts_after_the_stop_is_asked_at_once() {
        let stop = Stop::default();
        stop.stop();
        assert_eq!(until_stopped(Conn::default(), &stop, finish).await, Ok(()));
        assert_eq!(stop.waiting_count(), 0);
    }

    #[tokio::test]
    async fn a_connection_that_ends_by_itself_leaves_the_list() {
        let stop = Stop::default();
        let mut polls = 0;
        let ends_on_its_own = std::future::poll_fn(|cx| {
            polls += 1;
            if polls < 3 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(Ok::<(), ()>(()))
            }
        });
        let never = |_: Pin<&mut _>| panic!("not asked to finish");
        assert_eq!(until_stopped(ends_on_its_own, &stop, never).await, Ok(()));
        assert_eq!(stop.waiting_count(), 0);
    }
}
