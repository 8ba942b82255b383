//! Thread per core: one single-threaded tokio runtime per worker thread, as nginx runs one
//! process per core.
//!
//! A connection lives on one worker from accept to close, and so do the upstream connections
//! and the Redis connections its requests use (each worker has its own pools). Nothing on the
//! request path crosses threads: a task woken by a socket runs on the thread whose reactor saw
//! the event, with no work stealing and no futex wake-ups between threads. On this kind of
//! machine that takes about a quarter off the CPU time of a proxied request compared with
//! tokio's multi-threaded scheduler (bench/README.md).
//!
//! The acceptor (on the caller's runtime) deals accepted connections round-robin: with
//! keep-alive clients the connection count per worker is what balances the load, and dealing
//! evenly does that better than letting workers race on one listening socket.

use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinError;

/// One worker per core the process may run on (CPU affinity and cgroup quota included).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// The running worker threads. Dropping this stops them: each drops the tasks it still has.
pub(super) struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    /// Spawns onto the worker's runtime from any thread.
    handle: Handle,
    /// Dropping it ends the worker's `block_on`, and with it the runtime and its tasks.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` (at least one) worker threads, each with its own runtime.
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut workers = Workers { workers: Vec::with_capacity(count.max(1)) };
        for index in 0..count.max(1) {
            workers.workers.push(Worker::start(index)?);
        }
        Ok(workers)
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Runs `task` on worker `index`'s runtime. The handle fails only if that worker has
    /// stopped.
    pub fn spawn<F>(&self, index: usize, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.workers[index].handle.spawn(task)
    }

    /// Stops every worker (their remaining tasks are dropped) and waits for the threads to end.
    /// Blocks: call it from `spawn_blocking` in async code.
    pub fn stop_and_join(mut self) {
        self.signal_stop();
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn signal_stop(&mut self) {
        for worker in &mut self.workers {
            worker.stop.take();
        }
    }
}

impl Worker {
    fn start(index: usize) -> io::Result<Worker> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(format!("worker-{index}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                    return;
                }
            };
            let _ = handle_tx.send(Ok(runtime.handle().clone()));
            // Drives every task spawned on this runtime until the stop sender is dropped.
            runtime.block_on(async move {
                let _ = stopped.await;
            });
        })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| io::Error::other("worker thread ended before its runtime started"))??;
        Ok(Worker { handle, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Workers {
    /// Signals the threads without waiting: a `Server` dropped without running (or a panic)
    /// must not block its caller's runtime.
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// A task on a worker that did not finish because the worker stopped.
pub(super) fn stopped(e: JoinError) -> io::Error {
    io::Error::other(format!("worker stopped: {e}"))
}
