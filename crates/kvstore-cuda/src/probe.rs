//! Finding out, without panicking, whether CUDA can run here.
//!
//! cudarc resolves every driver and NVRTC symbol with `dlopen` at first use and panics when a
//! library is missing, so the libraries are looked for first, and the first driver calls run
//! under `catch_unwind` as a second guard.

use crate::CudaError;

/// What [`probe`] found: the devices the driver reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// How many CUDA devices there are.
    pub count: usize,
    /// The first device's name, e.g. `NVIDIA H200`.
    pub name: String,
    /// The first device's compute capability, e.g. `(9, 0)`.
    pub compute_capability: (i32, i32),
}

/// Whether the CUDA driver and NVRTC load, and what the first device is; a typed error, never
/// a panic, when they don't.
///
/// ```
/// match kvstore_cuda::probe() {
///     Ok(info) => println!("{} device(s), the first a {}", info.count, info.name),
///     Err(why) => println!("no GPU here: {why}"),
/// }
/// ```
pub fn probe() -> Result<DeviceInfo, CudaError> {
    imp::probe()
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::*;
    pub fn probe() -> Result<DeviceInfo, CudaError> {
        Err(CudaError::NotBuilt)
    }
}

#[cfg(feature = "cuda")]
mod imp {
    #![allow(unsafe_code)] // cudarc's library probes are `unsafe fn`s that only dlopen.
    use super::*;
    use cudarc::driver::CudaContext;

    pub fn probe() -> Result<DeviceInfo, CudaError> {
        libraries_present()?;
        let first = std::panic::catch_unwind(|| -> Result<DeviceInfo, CudaError> {
            let count = usize::try_from(CudaContext::device_count()?).unwrap_or(0);
            if count == 0 {
                return Err(CudaError::NoDevice { ordinal: 0, count });
            }
            let ctx = CudaContext::new(0)?;
            Ok(DeviceInfo {
                count,
                name: ctx.name()?,
                compute_capability: ctx.compute_capability()?,
            })
        });
        first.unwrap_or_else(|_| Err(CudaError::Driver("the CUDA driver panicked".into())))
    }

    /// Both libraries load (the driver and NVRTC).
    pub fn libraries_present() -> Result<(), CudaError> {
        // SAFETY: this only tries `dlopen` on the driver's usual names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::MissingLibrary { library: "libcuda" });
        }
        nvrtc_present()
    }

    /// NVRTC loads (compiling needs no GPU).
    pub fn nvrtc_present() -> Result<(), CudaError> {
        // SAFETY: this only tries `dlopen` on NVRTC's usual names.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(CudaError::MissingLibrary {
                library: "libnvrtc",
            });
        }
        Ok(())
    }
}

#[cfg(feature = "cuda")]
pub(crate) use imp::{libraries_present, nvrtc_present};
