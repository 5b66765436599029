//! The kernels: `kernels.cu` compiled by NVRTC at first use into a cubin for the device's
//! architecture, once per architecture per process, then loaded into each context.
#![allow(unsafe_code)] // NVRTC's cubin calls are raw FFI; each is checked.

use crate::CudaError;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys, Ptx};
use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::{Arc, Mutex, OnceLock};

/// The CUDA C++ source of every kernel.
pub const SOURCE: &str = include_str!("kernels.cu");

/// NVRTC's options: no fused multiply-add (bit-exact with the CPU), IEEE division and square
/// root, no flush of subnormals.
pub const OPTIONS: [&str; 4] = [
    "--fmad=false",
    "--prec-div=true",
    "--prec-sqrt=true",
    "--ftz=false",
];

/// The shape of the streaming kernels (reduce, codecs, fused updates), fixed when the kernels
/// are compiled: [`Tuning::default`] is what measured fastest on an H200; the GPU benchmark
/// sweeps the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuning {
    /// Threads per block.
    pub threads: u32,
    /// Items (float4 or code bytes) each thread takes per chunk.
    pub unroll: u32,
    /// Evict-first hints on the loads and stores of data touched once.
    pub streaming: bool,
    /// The most blocks per multiprocessor a launch uses (`None`: one block per chunk, no cap).
    pub blocks_per_sm: Option<u32>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            threads: 256,
            unroll: 1,
            streaming: false,
            blocks_per_sm: None,
        }
    }
}

/// Compiles [`SOURCE`] into a cubin for `sm_{major}{minor}` with the default [`Tuning`].
pub fn compile_cubin(major: i32, minor: i32) -> Result<Vec<u8>, CudaError> {
    compile_cubin_tuned(major, minor, Tuning::default())
}

/// Compiles [`SOURCE`] into a cubin for `sm_{major}{minor}`.
pub fn compile_cubin_tuned(major: i32, minor: i32, tuning: Tuning) -> Result<Vec<u8>, CudaError> {
    crate::probe::nvrtc_present()?;
    let fail = |what: &str, e: &dyn std::fmt::Debug| CudaError::Compile(format!("{what}: {e:?}"));
    let source = CString::new(SOURCE).map_err(|e| fail("source", &e))?;
    let name = CString::new("kvstore_kernels.cu").map_err(|e| fail("name", &e))?;
    let program = nvrtc::create_program(&source, Some(&name)).map_err(|e| fail("create", &e))?;
    let mut options: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    options.push(format!("--gpu-architecture=sm_{major}{minor}"));
    options.push(format!("-DTHREADS={}", tuning.threads));
    options.push(format!("-DUNROLL={}", tuning.unroll.max(1)));
    options.push(format!("-DSTREAMING={}", u32::from(tuning.streaming)));
    // SAFETY: `program` was created above and is destroyed once, at the end.
    let compiled = unsafe { nvrtc::compile_program(program, &options) };
    let result = match compiled {
        Ok(()) => cubin_of(program),
        Err(e) => {
            // SAFETY: as above; the log exists after a failed compile.
            let log = unsafe { nvrtc::get_program_log(program) }
                .map(|chars| text(&chars))
                .unwrap_or_default();
            Err(CudaError::Compile(format!("{e:?}\n{log}")))
        }
    };
    // SAFETY: as above.
    let _ = unsafe { nvrtc::destroy_program(program) };
    result
}

fn cubin_of(program: nvrtc_sys::nvrtcProgram) -> Result<Vec<u8>, CudaError> {
    let mut size = 0usize;
    // SAFETY: `program` compiled successfully; the buffer has the size NVRTC reports.
    unsafe {
        nvrtc_sys::nvrtcGetCUBINSize(program, &mut size)
            .result()
            .map_err(|e| CudaError::Compile(format!("cubin size: {e:?}")))?;
        let mut cubin = vec![0u8; size];
        nvrtc_sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast::<c_char>())
            .result()
            .map_err(|e| CudaError::Compile(format!("cubin: {e:?}")))?;
        Ok(cubin)
    }
}

fn text(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The cubin for an architecture and tuning, compiled at most once per process.
fn cached_cubin(major: i32, minor: i32, tuning: Tuning) -> Result<Vec<u8>, CudaError> {
    type Cache = HashMap<(i32, i32, Tuning), Vec<u8>>;
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache
        .lock()
        .map_err(|_| CudaError::Compile("cache poisoned".into()))?;
    if let Some(cubin) = cache.get(&(major, minor, tuning)) {
        return Ok(cubin.clone());
    }
    let cubin = compile_cubin_tuned(major, minor, tuning)?;
    // For inspection (the GPU check script disassembles it to count FMA instructions).
    if let Some(path) = std::env::var_os("KVSTORE_CUDA_DUMP_CUBIN") {
        let _ = std::fs::write(path, &cubin);
    }
    cache.insert((major, minor, tuning), cubin.clone());
    Ok(cubin)
}

macro_rules! kernels {
    ($($name:ident),* $(,)?) => {
        /// Every kernel of [`SOURCE`], loaded into one context.
        #[derive(Debug, Clone)]
        #[allow(missing_docs)]
        pub struct Kernels {
            pub module: Arc<CudaModule>,
            $(pub $name: CudaFunction,)*
        }

        impl Kernels {
            /// Compiles (once per process and tuning) and loads the kernels into `ctx`.
            pub fn load(ctx: &Arc<CudaContext>, tuning: Tuning) -> Result<Kernels, CudaError> {
                let (major, minor) = ctx.compute_capability()?;
                let cubin = cached_cubin(major, minor, tuning)?;
                let module = ctx.load_module(Ptx::from_binary(cubin))?;
                Ok(Kernels {
                    $($name: module.load_function(stringify!($name))?,)*
                    module,
                })
            }
        }
    };
}

kernels!(
    reduce8,
    reduce8_pull,
    accumulate8,
    quantize_2bit,
    quantize_1bit,
    dequantize_2bit,
    dequantize_1bit,
    gather_rows,
    locate_rows,
    scatter_rows,
    mark_ids,
    count_bits,
    scan_counts,
    emit_ids,
    sgd_dense,
    sgd_dense_momentum,
    sgd_rows,
    sgd_rows_momentum,
    reduce8_sgd,
    adam_dense,
    adam_rows_lazy,
    adam_rows_all,
    reduce8_adam,
);
