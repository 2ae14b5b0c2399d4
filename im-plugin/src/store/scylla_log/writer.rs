//! The ScyllaDB log's writer task: jobs queued in call order, started strictly in queue order,
//! at most `max_in_flight` at a time and never two touching one user (see "Call order" in the
//! module comment of `mod.rs`).

use super::*;

/// One queued write: the users it touches (for ordering) and the work, which answers its caller.
pub(super) struct Job {
    pub(super) users: Vec<String>,
    pub(super) work: Box<dyn FnOnce(Arc<Inner>) -> BoxFuture<'static, ()> + Send>,
}

impl ScyllaLog {
    /// Queues `work` as a job touching `users`; the returned future waits for its answer.
    pub(super) fn enqueue<T: Send + 'static>(
        &self,
        mut users: Vec<String>,
        work: impl FnOnce(Arc<Inner>) -> BoxFuture<'static, StoreResult<T>> + Send + 'static,
    ) -> BoxFuture<'static, StoreResult<T>> {
        users.sort_unstable();
        users.dedup();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            users,
            work: Box::new(move |inner| {
                async move {
                    // The caller may have stopped waiting; the write stands either way.
                    let _ = reply.send(work(inner).await);
                }
                .boxed()
            }),
        };
        let queued = self.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                StoreError::new("the Scylla log's write queue is full")
            }
            mpsc::error::TrySendError::Closed(_) => {
                StoreError::new("the Scylla log's writer has stopped")
            }
        });
        async move {
            queued?;
            answer
                .await
                .map_err(|_| StoreError::new("the Scylla log's writer stopped before answering"))?
        }
        .boxed()
    }
}

/// A queued write's answer: the queue's failure or the write's own.
pub(super) fn flatten<T: Send + 'static>(
    queued: BoxFuture<'static, StoreResult<LogResult<T>>>,
) -> BoxFuture<'static, LogResult<T>> {
    async move { queued.await? }.boxed()
}

/// Starts queued jobs in order, at most `max_in_flight` at a time, never two sharing a user.
pub(super) async fn run_writer(
    inner: Arc<Inner>,
    mut jobs: mpsc::Receiver<Job>,
    max_in_flight: usize,
) {
    let mut running = JoinSet::new();
    let mut users_of = HashMap::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut next: Option<Job> = None;
    let mut open = true;
    loop {
        if let Some(job) = next.take() {
            if running.len() < max_in_flight && !job.users.iter().any(|u| busy.contains(u)) {
                busy.extend(job.users.iter().cloned());
                let handle = running.spawn((job.work)(inner.clone()));
                users_of.insert(handle.id(), job.users);
            } else {
                next = Some(job);
            }
        }
        if !open && next.is_none() && running.is_empty() {
            return;
        }
        tokio::select! {
            done = running.join_next_with_id(), if !running.is_empty() => {
                // A job that panicked dropped its reply: its caller gets an error.
                let id = match done {
                    Some(Ok((id, ()))) => id,
                    Some(Err(e)) => e.id(),
                    None => continue,
                };
                for user in users_of.remove(&id).unwrap_or_default() {
                    busy.remove(&user);
                }
            }
            job = jobs.recv(), if open && next.is_none() => match job {
                Some(job) => next = Some(job),
                None => open = false,
            },
            // Unreachable: a waiting job always has a running job to wait for.
            else => return,
        }
    }
}
