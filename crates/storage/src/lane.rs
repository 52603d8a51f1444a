//! A lane: a piece of state (a hasher, a file writer) that works through a short queue
//! of shared batches on the blocking pool, in order.
//!
//! A blocking thread is held only while batches are queued: the thread that finishes a
//! batch takes the next one at once if it is there (no round trip through the async
//! task, which left the hasher idle between batches), and returns the state when the
//! queue is empty. A slow client therefore holds no thread, and a fast one keeps the
//! lane busy. The queue holds at most [`DEPTH`] batches; the producer waits for room.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Batches queued or in work at once, per lane.
const DEPTH: u32 = 2;

pub(crate) struct Lane<T, B> {
    shared: Arc<Shared<T, B>>,
    room: Arc<Semaphore>,
}

struct Shared<T, B> {
    state: Mutex<State<T, B>>,
    work: fn(&mut T, &B) -> io::Result<()>,
}

struct State<T, B> {
    /// The lane's state while no thread works on it.
    idle: Option<T>,
    queue: VecDeque<(Arc<B>, OwnedSemaphorePermit)>,
    failed: Option<io::Error>,
}

impl<T: Send + 'static, B: Send + Sync + 'static> Lane<T, B> {
    pub(crate) fn new(state: T, work: fn(&mut T, &B) -> io::Result<()>) -> Lane<T, B> {
        let state = State { idle: Some(state), queue: VecDeque::new(), failed: None };
        Lane {
            shared: Arc::new(Shared { state: Mutex::new(state), work }),
            room: Arc::new(Semaphore::new(DEPTH as usize)),
        }
    }

    /// Queues `batch`, waiting while the queue is full. Fails if an earlier batch failed.
    pub(crate) async fn push(&self, batch: Arc<B>) -> io::Result<()> {
        let permit = self.room.clone().acquire_owned().await.map_err(io::Error::other)?;
        let mut state = lock(&self.shared);
        if let Some(e) = &state.failed {
            return Err(io::Error::new(e.kind(), e.to_string()));
        }
        state.queue.push_back((batch, permit));
        if let Some(idle) = state.idle.take() {
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || drain(shared, idle));
        }
        Ok(())
    }

    /// Waits until every queued batch is done, and returns the state (or the first
    /// error).
    pub(crate) async fn finish(self) -> io::Result<T> {
        let _all = self.room.acquire_many(DEPTH).await.map_err(io::Error::other)?;
        let mut state = lock(&self.shared);
        match state.failed.take() {
            Some(e) => Err(e),
            None => Ok(state.idle.take().expect("an empty lane has its state back")),
        }
    }
}

/// Works through the queue on a blocking thread. A batch's permit is released only after
/// the state is back in place when the queue ran empty, so `finish` never finds it gone.
fn drain<T, B>(shared: Arc<Shared<T, B>>, mut worker: T) {
    let mut done = None;
    loop {
        let next = {
            let mut state = lock(&shared);
            drop(done.take());
            match state.queue.pop_front() {
                Some(next) => next,
                None => {
                    state.idle = Some(worker);
                    return;
                }
            }
        };
        if let Err(e) = (shared.work)(&mut worker, &next.0) {
            let mut state = lock(&shared);
            state.failed = Some(e);
            // Dropping the queued batches releases their permits: `finish` then returns
            // the error instead of waiting for work that will never run.
            state.queue.clear();
            return;
        }
        done = Some(next);
    }
}

fn lock<T, B>(shared: &Shared<T, B>) -> MutexGuard<'_, State<T, B>> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::ptr_arg)] // a lane hands its work &B, here B = Vec<u64>
    fn add(sum: &mut u64, batch: &Vec<u64>) -> io::Result<()> {
        if batch.contains(&0) {
            return Err(io::Error::other("zero"));
        }
        *sum += batch.iter().sum::<u64>();
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_are_worked_in_order_and_the_state_comes_back() {
        let lane = Lane::new(0u64, add);
        for i in 1..=1000u64 {
            lane.push(Arc::new(vec![i, i])).await.unwrap();
        }
        assert_eq!(lane.finish().await.unwrap(), 1000 * 1001);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_error_is_kept_and_later_batches_are_refused() {
        let lane = Lane::new(0u64, add);
        lane.push(Arc::new(vec![1])).await.unwrap();
        lane.push(Arc::new(vec![0])).await.unwrap();
        // The failure may or may not have happened yet; either way no later batch runs
        // and finish reports it.
        let _ = lane.push(Arc::new(vec![5])).await;
        let err = lane.finish().await.unwrap_err();
        assert_eq!(err.to_string(), "zero");
    }
}
