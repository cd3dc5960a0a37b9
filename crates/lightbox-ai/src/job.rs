//! Inference as a job of its own: it runs on its own thread, reports progress (windows done of
//! total) on a channel, stops at the next window when cancelled, and never blocks the caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::{AiError, Progress};

pub struct InferenceJob<T> {
    /// Progress after each window.
    pub progress: mpsc::Receiver<Progress>,
    cancel: Arc<AtomicBool>,
    handle: JoinHandle<Result<T, AiError>>,
}

impl<T: Send + 'static> InferenceJob<T> {
    /// Starts `work` on a thread of its own; it gets the cancel flag and a progress callback.
    pub fn spawn(
        work: impl FnOnce(&AtomicBool, &mut dyn FnMut(Progress)) -> Result<T, AiError> + Send + 'static,
    ) -> Result<Self, AiError> {
        let (tx, progress) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        let handle = std::thread::Builder::new()
            .name("lightbox-inference".into())
            .spawn(move || {
                work(&flag, &mut |p| {
                    // Nobody listening is fine: the result still arrives through `wait`.
                    let _ = tx.send(p);
                })
            })
            .map_err(|e| AiError::Input(format!("cannot start an inference thread: {e}")))?;
        Ok(Self { progress, cancel, handle })
    }

    /// Asks the job to stop at its next window.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// The job's result, once it ends.
    pub fn wait(self) -> Result<T, AiError> {
        self.handle.join().unwrap_or_else(|_| Err(AiError::Input("the inference thread panicked".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SlidingWindow;
    use burn::prelude::*;
    use std::time::{Duration, Instant};

    fn slow_job() -> Result<InferenceJob<Vec<f32>>, AiError> {
        InferenceJob::spawn(|cancel, progress| {
            let device = Device::flex();
            let net = |t: Tensor<5>| {
                std::thread::sleep(Duration::from_millis(30));
                t
            };
            let window = SlidingWindow::new([4, 4, 4]);
            window.predict(&device, &[1.0; 12 * 12 * 12], [1, 12, 12, 12], &net, cancel, progress).map(|(l, _)| l)
        })
    }

    #[test]
    fn a_job_runs_beside_the_caller_reports_progress_and_finishes() -> Result<(), AiError> {
        let started = Instant::now();
        let job = slow_job()?;
        // 125 windows × 30 ms: the caller is back long before.
        assert!(started.elapsed() < Duration::from_millis(100));
        let first = job.progress.recv_timeout(Duration::from_secs(30)).ok();
        assert_eq!(first, Some(Progress { done: 1, total: 125 }));
        let logits = job.wait()?;
        assert!(logits.iter().all(|v| (v - 1.0).abs() < 1e-5));
        Ok(())
    }

    #[test]
    fn a_cancelled_job_stops_at_the_next_window() -> Result<(), AiError> {
        let job = slow_job()?;
        let _ = job.progress.recv_timeout(Duration::from_secs(30));
        job.cancel();
        match job.wait() {
            Err(AiError::Cancelled { done, total: 125 }) => assert!(done < 10, "ran on to {done}"),
            other => panic!("expected a cancellation, got {:?}", other.map(|v| v.len())),
        }
        Ok(())
    }
}
