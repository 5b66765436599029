//! What can go wrong on the GPU side, as one typed error.

/// An error of the CUDA backend. Nothing here panics: a missing library, a missing device or a
/// failed CUDA call all come back as one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    /// The crate was built without its `cuda` feature.
    #[error("kvstore was built without the `cuda` feature")]
    NotBuilt,
    /// A CUDA library could not be loaded (no driver, no NVRTC).
    #[error("CUDA is not available: {library} could not be loaded")]
    MissingLibrary {
        /// The library that was looked for.
        library: &'static str,
    },
    /// The driver loaded but there is no such device.
    #[error("no CUDA device {ordinal} (this machine has {count})")]
    NoDevice {
        /// The device asked for.
        ordinal: usize,
        /// How many devices the driver reports.
        count: usize,
    },
    /// A CUDA driver call failed.
    #[error("CUDA call failed: {0}")]
    Driver(String),
    /// NVRTC could not compile the kernels (its log is included).
    #[error("NVRTC could not compile the kernels: {0}")]
    Compile(String),
    /// Arguments that do not fit the operation (lengths, ids out of range).
    #[error("invalid arguments to a GPU operation: {0}")]
    Invalid(String),
}

#[cfg(feature = "cuda")]
impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(e.to_string())
    }
}
