//! The kernels compile with NVRTC (no GPU needed): a cubin for each architecture kvstore
//! targets, with the options that keep results bit-exact. Where NVRTC is missing the test says
//! so and passes; `KVSTORE_REQUIRE_NVRTC=1` (set by CI, which installs NVRTC) makes that a
//! failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(feature = "cuda")]
#[test]
fn r77_kernels_compile_to_cubins_without_fma_contraction() {
    use kvstore_cuda::module::{compile_cubin_tuned, Tuning, OPTIONS};
    assert!(OPTIONS.contains(&"--fmad=false"));
    let tunings =
        [(128, 1, false), (256, 2, true), (512, 4, false)].map(|(threads, unroll, streaming)| {
            Tuning {
                threads,
                unroll,
                streaming,
                blocks_per_sm: None,
            }
        });
    for ((major, minor), tuning) in [(8, 0), (9, 0)]
        .into_iter()
        .flat_map(|a| tunings.map(|t| (a, t)))
    {
        match compile_cubin_tuned(major, minor, tuning) {
            Ok(cubin) => {
                // An ELF image with every kernel in it.
                assert_eq!(&cubin[..4], b"\x7fELF", "sm_{major}{minor}");
                let text = String::from_utf8_lossy(&cubin);
                for name in [
                    "reduce8",
                    "quantize_2bit",
                    "dequantize_1bit",
                    "emit_ids",
                    "reduce8_adam",
                ] {
                    assert!(text.contains(name), "sm_{major}{minor} lacks {name}");
                }
            }
            Err(kvstore_cuda::CudaError::MissingLibrary { library }) => {
                assert!(
                    std::env::var_os("KVSTORE_REQUIRE_NVRTC").is_none(),
                    "NVRTC is required here but {library} is missing"
                );
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED kernel compile: {library} is not installed (put NVRTC on LD_LIBRARY_PATH)"
                );
                return;
            }
            Err(e) => panic!("sm_{major}{minor}: {e}"),
        }
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn r77_without_the_cuda_feature_the_gpu_is_a_typed_error() {
    assert_eq!(
        kvstore_cuda::probe(),
        Err(kvstore_cuda::CudaError::NotBuilt)
    );
}

/// Opening a GPU that is not there is a typed error, not a panic: on a machine without CUDA
/// the missing library is named; with CUDA, an ordinal past the last device is `NoDevice`.
#[cfg(feature = "cuda")]
#[test]
fn r77_opening_a_missing_gpu_is_a_typed_error() {
    use kvstore_cuda::{CudaError, Gpu};
    let missing = Gpu::open(4096).expect_err("no machine has 4097 GPUs");
    match kvstore_cuda::probe() {
        Ok(info) => assert_eq!(
            missing,
            CudaError::NoDevice {
                ordinal: 4096,
                count: info.count
            }
        ),
        Err(why) => {
            assert!(matches!(why, CudaError::MissingLibrary { .. }), "{why}");
            assert_eq!(missing, why);
        }
    }
}
