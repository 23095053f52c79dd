//! State that exists only once a service's dependencies are up. The gRPC server starts at once
//! (so health checks answer NOT_SERVING instead of connection refused); handlers reach their
//! database and clients through [`Ready`], which answers UNAVAILABLE until start-up finished.

use std::sync::{Arc, OnceLock};

/// A value set once, when start-up completes; cheap to clone into every handler.
pub struct Ready<T>(Arc<OnceLock<T>>);

impl<T> Clone for Ready<T> {
    fn clone(&self) -> Self {
        Ready(self.0.clone())
    }
}

impl<T> Default for Ready<T> {
    fn default() -> Self {
        Ready(Arc::new(OnceLock::new()))
    }
}

impl<T> Ready<T> {
    /// The value, or UNAVAILABLE (which clients and Istio retry) while the service is starting.
    pub fn get(&self) -> Result<&T, tonic::Status> {
        self.0.get().ok_or_else(|| {
            tonic::Status::unavailable("service is starting: dependencies are not ready yet")
        })
    }

    /// Sets the value; later calls are ignored (start-up runs once).
    pub fn set(&self, value: T) {
        let _ = self.0.set(value);
    }
}
