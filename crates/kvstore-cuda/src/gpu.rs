//! One GPU: its context, its kernels, and the device operations of a store, each enqueued on
//! a stream the caller chooses (a key's own stream, so different keys overlap).
//!
//! Every operation checks its arguments' lengths first and returns [`CudaError::Invalid`]
//! before anything is enqueued; every launch's result is checked. Operations are asynchronous
//! (as CUDA is): their results are ready for later work on the same stream, and cudarc's event
//! tracking orders a buffer's use on another stream after them.
#![allow(unsafe_code)] // Kernel launches: each argument list matches its kernel's signature.

use crate::module::{Kernels, Tuning};
use crate::CudaError;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};
use kvstore_cpu::{AdamParams, Codec, SgdParams};
use std::sync::Arc;

/// The id kernels' block size and words per block (`SCAN_THREADS`, `WORDS_PER_BLOCK` in the
/// source).
const SCAN_THREADS: u32 = 256;
const WORDS_PER_BLOCK: usize = 256 * 8;
/// The most inputs one reduce launch takes.
pub const MAX_FUSED_INPUTS: usize = 8;

/// SGD's parameters as the kernels take them (`struct Sgd` in the source).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SgdArgs {
    lr: f32,
    lr_rescale: f32,
    rescale: f32,
    clip: f32,
    lr_wd: f32,
    decay: f32,
    mu: f32,
    has_clip: u32,
}

// SAFETY: a plain `repr(C)` struct of 4-byte fields, the layout of `struct Sgd`.
unsafe impl DeviceRepr for SgdArgs {}

impl From<&SgdParams> for SgdArgs {
    fn from(p: &SgdParams) -> Self {
        // The same f32 products kvstore-cpu's SGD kernel forms on the host.
        let lr_wd = p.learning_rate * p.wd;
        SgdArgs {
            lr: p.learning_rate,
            lr_rescale: p.learning_rate * p.rescale_grad,
            rescale: p.rescale_grad,
            clip: p.clip_gradient.unwrap_or(0.0),
            lr_wd,
            decay: 1.0 - lr_wd,
            mu: p.momentum,
            has_clip: u32::from(p.clip_gradient.is_some()),
        }
    }
}

/// Adam's parameters as the kernels take them (`struct Adam` in the source).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AdamArgs {
    lr: f32,
    wd: f32,
    rescale: f32,
    clip: f32,
    b1: f32,
    b2: f32,
    one_b1: f32,
    one_b2: f32,
    eps: f32,
}

// SAFETY: a plain `repr(C)` struct of f32 fields, the layout of `struct Adam`.
unsafe impl DeviceRepr for AdamArgs {}

impl From<&AdamParams> for AdamArgs {
    fn from(p: &AdamParams) -> Self {
        AdamArgs {
            lr: p.learning_rate,
            wd: p.wd,
            rescale: p.rescale_grad,
            clip: p.clip_gradient.unwrap_or(f32::INFINITY),
            b1: p.beta1,
            b2: p.beta2,
            one_b1: 1.0 - p.beta1,
            one_b2: 1.0 - p.beta2,
            eps: p.epsilon,
        }
    }
}

/// Which Adam kernel a row_sparse gradient takes (MXNet's three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdamRows {
    /// `lazy_update` without clipping: only the gradient's rows, `(1-b2)*g*g` rounded as dense.
    Lazy,
    /// `lazy_update` with clipping: only the gradient's rows, the square taken first.
    LazyClipped,
    /// Every row; rows the gradient lacks step with the weight decay alone.
    All,
}

impl AdamRows {
    /// The kernel MXNet runs for these parameters.
    pub fn of(p: &AdamParams) -> AdamRows {
        match (p.lazy_update, p.clip_gradient.is_some()) {
            (true, false) => AdamRows::Lazy,
            (true, true) => AdamRows::LazyClipped,
            (false, _) => AdamRows::All,
        }
    }
}

/// Scratch buffers of [`Gpu::unique_ids`], kept by the caller so repeated calls on one table
/// size allocate nothing.
#[derive(Debug, Default)]
pub struct IdScratch {
    bitmap: Option<CudaSlice<u32>>,
    block_counts: Option<CudaSlice<u32>>,
    counters: Option<CudaSlice<u32>>,
}

/// One GPU with its kernels loaded.
#[derive(Debug)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    max_blocks: u32,
    sms: u32,
    tuning: Tuning,
}

fn invalid(message: String) -> CudaError {
    CudaError::Invalid(message)
}

fn check_len(what: &str, expected: usize, found: usize) -> Result<(), CudaError> {
    if expected == found {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} has {found} elements, expected {expected}"
        )))
    }
}

fn u64_of(n: usize) -> u64 {
    n as u64
}

impl Gpu {
    /// Opens device `ordinal`: loads the driver (a typed error if it or NVRTC is missing),
    /// creates the context, and compiles (once per process) and loads the kernels.
    pub fn open(ordinal: usize) -> Result<Gpu, CudaError> {
        Gpu::open_tuned(ordinal, Tuning::default())
    }

    /// [`Gpu::open`] with the streaming kernels compiled for `tuning` (for benchmarks).
    pub fn open_tuned(ordinal: usize, tuning: Tuning) -> Result<Gpu, CudaError> {
        if !(32..=1024).contains(&tuning.threads) || tuning.threads % 32 != 0 || tuning.unroll == 0
        {
            return Err(invalid(format!("unusable tuning {tuning:?}")));
        }
        crate::probe::libraries_present()?;
        let opened = std::panic::catch_unwind(|| -> Result<Gpu, CudaError> {
            let count = usize::try_from(CudaContext::device_count()?).unwrap_or(0);
            if ordinal >= count {
                return Err(CudaError::NoDevice { ordinal, count });
            }
            let ctx = CudaContext::new(ordinal)?;
            let sms = ctx.attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )?;
            let kernels = Kernels::load(&ctx, tuning)?;
            let stream = ctx.new_stream()?;
            keep_pool_memory(&ctx)?;
            let sms = u32::try_from(sms.max(1)).unwrap_or(1);
            Ok(Gpu {
                max_blocks: sms.saturating_mul(16),
                sms,
                ctx,
                stream,
                kernels,
                tuning,
            })
        });
        opened.unwrap_or_else(|_| Err(CudaError::Driver("the CUDA driver panicked".into())))
    }

    /// The device's context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream work goes to when no other is named.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A new stream (one per key: work on different keys overlaps).
    pub fn new_stream(&self) -> Result<Arc<CudaStream>, CudaError> {
        Ok(self.ctx.new_stream()?)
    }

    /// The device's name.
    pub fn name(&self) -> Result<String, CudaError> {
        Ok(self.ctx.name()?)
    }

    /// A copy of `host` on the device.
    pub fn upload<T: DeviceRepr>(
        &self,
        stream: &Arc<CudaStream>,
        host: &[T],
    ) -> Result<CudaSlice<T>, CudaError> {
        Ok(stream.clone_htod(host)?)
    }

    /// A host copy of `dev` (waits for the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        stream: &Arc<CudaStream>,
        dev: &CudaSlice<T>,
    ) -> Result<Vec<T>, CudaError> {
        Ok(stream.clone_dtoh(dev)?)
    }

    /// A grid-stride launch over `work` items.
    fn config(&self, work: usize) -> LaunchConfig {
        let threads = self.tuning.threads;
        let blocks = work
            .div_ceil(threads as usize)
            .clamp(1, self.max_blocks as usize);
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// A launch of the streaming kernels over `items`: one block per chunk of
    /// `THREADS * unroll` items (or the tuning's cap on blocks, the kernels then loop).
    fn stream_config(&self, items: usize) -> LaunchConfig {
        let chunk = (self.tuning.threads * self.tuning.unroll.max(1)) as usize;
        let mut blocks = items.div_ceil(chunk).max(1);
        if let Some(per_sm) = self.tuning.blocks_per_sm {
            blocks = blocks.min((self.sms * per_sm) as usize);
        }
        LaunchConfig {
            grid_dim: (blocks.min(i32::MAX as usize) as u32, 1, 1),
            block_dim: (self.tuning.threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// The tuning the kernels were compiled for.
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    fn scan_config(blocks: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (blocks.max(1) as u32, 1, 1),
            block_dim: (SCAN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn func(&self, f: fn(&Kernels) -> &CudaFunction) -> &CudaFunction {
        f(&self.kernels)
    }

    // -----------------------------------------------------------------------------------------
    // Reduce (R17)

    /// `out` = the sum of `inputs` in list order (each of `out`'s length, at least one).
    pub fn reduce(
        &self,
        stream: &Arc<CudaStream>,
        out: &mut CudaSlice<f32>,
        inputs: &[&CudaSlice<f32>],
    ) -> Result<(), CudaError> {
        let n = out.len();
        if inputs.is_empty() {
            return Err(invalid("a reduce needs at least one input".into()));
        }
        for x in inputs {
            check_len("a reduce input", n, x.len())?;
        }
        if n == 0 {
            return Ok(());
        }
        let (first, rest) = inputs.split_at(inputs.len().min(MAX_FUSED_INPUTS));
        // One thread per float2 item (kernels.cu says why not float4).
        let cfg = self.stream_config(n.div_ceil(2));
        self.launch8(stream, self.func(|k| &k.reduce8), cfg, out, first)?;
        for chunk in rest.chunks(MAX_FUSED_INPUTS) {
            let cfg = self.config(n);
            self.launch8(stream, self.func(|k| &k.accumulate8), cfg, out, chunk)?;
        }
        Ok(())
    }

    /// `out` = the sum of `inputs` (1 to [`MAX_FUSED_INPUTS`]) and `pulled` a copy of it, in
    /// one pass: a push with no updater fused with the pull that follows it (`pushpull`).
    pub fn reduce_pull(
        &self,
        stream: &Arc<CudaStream>,
        out: &mut CudaSlice<f32>,
        pulled: &mut CudaSlice<f32>,
        inputs: &[&CudaSlice<f32>],
    ) -> Result<(), CudaError> {
        let n = out.len();
        fused_inputs(n, inputs)?;
        check_len("the pull output", n, pulled.len())?;
        if n == 0 {
            return Ok(());
        }
        let (n64, k) = (u64_of(n), inputs.len() as u32);
        let cfg = self.stream_config(n.div_ceil(2));
        let mut b = stream.launch_builder(self.func(|k| &k.reduce8_pull));
        b.arg(out).arg(pulled).arg(&n64).arg(&k);
        for i in 0..MAX_FUSED_INPUTS {
            b.arg(inputs.get(i).copied().unwrap_or(inputs[0]));
        }
        // SAFETY: (float*, float*, u64, u32, 8 x const float*), lengths checked.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// `reduce8` or `accumulate8` on up to eight inputs (unused slots repeat the first).
    fn launch8(
        &self,
        stream: &Arc<CudaStream>,
        func: &CudaFunction,
        cfg: LaunchConfig,
        out: &mut CudaSlice<f32>,
        inputs: &[&CudaSlice<f32>],
    ) -> Result<(), CudaError> {
        let n = u64_of(out.len());
        let k = inputs.len() as u32;
        let slot = |i: usize| inputs.get(i).copied().unwrap_or(inputs[0]);
        let mut b = stream.launch_builder(func);
        b.arg(out).arg(&n).arg(&k);
        let slots: Vec<&CudaSlice<f32>> = (0..MAX_FUSED_INPUTS).map(slot).collect();
        for s in &slots {
            b.arg(*s);
        }
        // SAFETY: (float*, u64, u32, 8 x const float*), every input at least `n` long.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Compression (R38-R42)

    /// The number of bytes a compressed buffer of `n` elements takes (whole u32 words).
    pub fn compressed_bytes(codec: Codec, n: usize) -> usize {
        4 * codec.compressed_words(n)
    }

    /// Quantises `grad` with its `residual` (updated in place) into `bytes`, the little-endian
    /// image of the packed words ([`Gpu::compressed_bytes`] long).
    pub fn quantize(
        &self,
        stream: &Arc<CudaStream>,
        codec: Codec,
        grad: &CudaSlice<f32>,
        residual: &mut CudaSlice<f32>,
        bytes: &mut CudaSlice<u8>,
    ) -> Result<(), CudaError> {
        let n = grad.len();
        check_len("the residual", n, residual.len())?;
        let nbytes = Self::compressed_bytes(codec, n);
        check_len("the compressed buffer", nbytes, bytes.len())?;
        if nbytes == 0 {
            return Ok(());
        }
        let func = match codec {
            Codec::TwoBit { .. } => self.func(|k| &k.quantize_2bit),
            Codec::OneBit { .. } => self.func(|k| &k.quantize_1bit),
        };
        let (n64, nb, t) = (u64_of(n), u64_of(nbytes), codec.threshold());
        let mut b = stream.launch_builder(func);
        b.arg(grad)
            .arg(residual)
            .arg(bytes)
            .arg(&n64)
            .arg(&nb)
            .arg(&t);
        // SAFETY: (const float*, float*, uchar*, u64 n, u64 nbytes, float), lengths checked.
        unsafe { b.launch(self.stream_config(nbytes)) }?;
        Ok(())
    }

    /// Decodes `out.len()` elements of `bytes` into `out` (`accumulate`: adds to it).
    pub fn dequantize(
        &self,
        stream: &Arc<CudaStream>,
        codec: Codec,
        bytes: &CudaSlice<u8>,
        out: &mut CudaSlice<f32>,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        let n = out.len();
        let needed = Self::compressed_bytes(codec, n);
        if bytes.len() < needed {
            return Err(invalid(format!(
                "{n} elements need {needed} compressed bytes, {} given",
                bytes.len()
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let (n64, acc) = (u64_of(n), u32::from(accumulate));
        let mut b;
        match codec {
            Codec::TwoBit { threshold } => {
                b = stream.launch_builder(self.func(|k| &k.dequantize_2bit));
                b.arg(bytes).arg(out).arg(&n64).arg(&threshold).arg(&acc);
                // SAFETY: (const uchar*, float*, u64, float, u32), lengths checked.
                unsafe { b.launch(self.stream_config(n.div_ceil(4))) }?;
            }
            Codec::OneBit { .. } => {
                b = stream.launch_builder(self.func(|k| &k.dequantize_1bit));
                b.arg(bytes).arg(out).arg(&n64).arg(&acc);
                // SAFETY: (const uchar*, float*, u64, u32), lengths checked.
                unsafe { b.launch(self.stream_config(n.div_ceil(8))) }?;
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Rows (R30-R32)

    /// Output row k = `table` row `pos[k]`, or zeros where `pos[k] < 0`. `pos` must index rows
    /// of `table` (the caller's ids were checked, or come from [`Gpu::locate_rows`]).
    pub fn gather_rows(
        &self,
        stream: &Arc<CudaStream>,
        table: &CudaSlice<f32>,
        row_len: usize,
        pos: &CudaSlice<i64>,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let nrows = pos.len();
        check_len("the gathered rows", nrows * row_len, out.len())?;
        if row_len == 0 || table.len() % row_len != 0 {
            if out.is_empty() {
                return Ok(());
            }
            return Err(invalid("the table is not a whole number of rows".into()));
        }
        if nrows == 0 {
            return Ok(());
        }
        let (nr, rl) = (u64_of(nrows), u64_of(row_len));
        let work = if row_len % 4 == 0 {
            out.len() / 4
        } else {
            out.len()
        };
        let mut b = stream.launch_builder(self.func(|k| &k.gather_rows));
        b.arg(table).arg(pos).arg(out).arg(&nr).arg(&rl);
        // SAFETY: (const float*, const i64*, float*, u64, u64), lengths checked.
        unsafe { b.launch(self.config(work)) }?;
        Ok(())
    }

    /// `pos[k]` = the index of `want[k]` in the sorted `have`, or -1.
    pub fn locate_rows(
        &self,
        stream: &Arc<CudaStream>,
        have: &CudaSlice<i64>,
        want: &CudaSlice<i64>,
        pos: &mut CudaSlice<i64>,
    ) -> Result<(), CudaError> {
        check_len("the positions", want.len(), pos.len())?;
        if want.is_empty() {
            return Ok(());
        }
        let (nh, nw) = (u64_of(have.len()), u64_of(want.len()));
        let mut b = stream.launch_builder(self.func(|k| &k.locate_rows));
        b.arg(have).arg(&nh).arg(want).arg(&nw).arg(pos);
        // SAFETY: (const i64*, u64, const i64*, u64, i64*), lengths checked.
        unsafe { b.launch(self.config(want.len())) }?;
        Ok(())
    }

    /// `out` row `pos[k]` = (`out` row + ) `rows` row k. `pos` must be distinct and in range.
    pub fn scatter_rows(
        &self,
        stream: &Arc<CudaStream>,
        out: &mut CudaSlice<f32>,
        row_len: usize,
        pos: &CudaSlice<i64>,
        rows: &CudaSlice<f32>,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        check_len("the scattered rows", pos.len() * row_len, rows.len())?;
        if rows.is_empty() {
            return Ok(());
        }
        let (nr, rl, acc) = (u64_of(pos.len()), u64_of(row_len), u32::from(accumulate));
        let mut b = stream.launch_builder(self.func(|k| &k.scatter_rows));
        b.arg(out).arg(pos).arg(rows).arg(&nr).arg(&rl).arg(&acc);
        // SAFETY: (float*, const i64*, const float*, u64, u64, u32), lengths checked.
        unsafe { b.launch(self.config(rows.len())) }?;
        Ok(())
    }

    /// The sorted, distinct ids of `ids` for a table of `rows` rows, on the device (`None`
    /// when there are none): a bitmap over the rows, a count per block, a scan, then each block
    /// writes its ids. Waits for the stream once, to learn how many ids there are. An id
    /// outside `0..rows` is refused ([`CudaError::Invalid`]).
    pub fn unique_ids(
        &self,
        stream: &Arc<CudaStream>,
        ids: &CudaSlice<i64>,
        rows: usize,
        scratch: &mut IdScratch,
    ) -> Result<Option<CudaSlice<i64>>, CudaError> {
        let nwords = rows.div_ceil(32).max(1);
        let nblocks = nwords.div_ceil(WORDS_PER_BLOCK);
        let bitmap = reuse(stream, &mut scratch.bitmap, nwords)?;
        stream.memset_zeros(bitmap)?;
        let counters = reuse(stream, &mut scratch.counters, 2)?;
        stream.memset_zeros(counters)?;
        let (n, r, nw, nb) = (
            u64_of(ids.len()),
            u64_of(rows),
            u64_of(nwords),
            u64_of(nblocks),
        );
        if !ids.is_empty() {
            let mut b = stream.launch_builder(self.func(|k| &k.mark_ids));
            b.arg(ids)
                .arg(&n)
                .arg(&mut *bitmap)
                .arg(&r)
                .arg(&mut *counters);
            // SAFETY: (const i64*, u64, u32* of rows/32 words, u64, u32*).
            unsafe { b.launch(self.config(ids.len())) }?;
        }
        let counts = reuse(stream, &mut scratch.block_counts, nblocks)?;
        let mut b = stream.launch_builder(self.func(|k| &k.count_bits));
        b.arg(&*bitmap).arg(&nw).arg(&mut *counts);
        // SAFETY: (const u32*, u64, u32* of one count per block).
        unsafe { b.launch(Self::scan_config(nblocks)) }?;
        {
            let mut total = counters.slice_mut(1..2);
            let mut b = stream.launch_builder(self.func(|k| &k.scan_counts));
            b.arg(&mut *counts).arg(&nb).arg(&mut total);
            // SAFETY: (u32*, u64, u32*), one block.
            unsafe { b.launch(Self::scan_config(1)) }?;
        }
        let host = stream.clone_dtoh(&*counters)?;
        if host[0] != 0 {
            return Err(invalid(format!("{} ids lie outside 0..{rows}", host[0])));
        }
        let unique = host[1] as usize;
        if unique == 0 {
            return Ok(None);
        }
        // SAFETY: every element is written by `emit_ids` below before anything reads it.
        let mut out = unsafe { stream.alloc::<i64>(unique) }?;
        let mut b = stream.launch_builder(self.func(|k| &k.emit_ids));
        b.arg(&*bitmap).arg(&nw).arg(&*counts).arg(&mut out);
        // SAFETY: (const u32*, u64, const u32*, i64* of `unique` ids).
        unsafe { b.launch(Self::scan_config(nblocks)) }?;
        Ok(Some(out))
    }

    // -----------------------------------------------------------------------------------------
    // SGD (R45, R46)

    /// One dense SGD step, in place (`momentum` when the optimizer keeps one).
    pub fn sgd_dense(
        &self,
        stream: &Arc<CudaStream>,
        p: &SgdParams,
        weight: &mut CudaSlice<f32>,
        grad: &CudaSlice<f32>,
        momentum: Option<&mut CudaSlice<f32>>,
    ) -> Result<(), CudaError> {
        let n = weight.len();
        check_len("the gradient", n, grad.len())?;
        if let Some(m) = &momentum {
            check_len("the momentum", n, m.len())?;
        }
        if n == 0 {
            return Ok(());
        }
        let (args, n64, cfg) = (SgdArgs::from(p), u64_of(n), self.config(n));
        match momentum {
            None => {
                let mut b = stream.launch_builder(self.func(|k| &k.sgd_dense));
                b.arg(&args).arg(weight).arg(grad).arg(&n64);
                // SAFETY: (Sgd, float*, const float*, u64), lengths checked.
                unsafe { b.launch(cfg) }?;
            }
            Some(m) => {
                let mut b = stream.launch_builder(self.func(|k| &k.sgd_dense_momentum));
                b.arg(&args).arg(weight).arg(m).arg(grad).arg(&n64);
                // SAFETY: (Sgd, float*, float*, const float*, u64), lengths checked.
                unsafe { b.launch(cfg) }?;
            }
        }
        Ok(())
    }

    /// One SGD step with a row_sparse gradient: rows `ids` (distinct, in range) only.
    #[allow(clippy::too_many_arguments)]
    pub fn sgd_rows(
        &self,
        stream: &Arc<CudaStream>,
        p: &SgdParams,
        weight: &mut CudaSlice<f32>,
        row_len: usize,
        ids: &CudaSlice<i64>,
        rows: &CudaSlice<f32>,
        momentum: Option<&mut CudaSlice<f32>>,
    ) -> Result<(), CudaError> {
        check_len("the gradient rows", ids.len() * row_len, rows.len())?;
        if let Some(m) = &momentum {
            check_len("the momentum", weight.len(), m.len())?;
        }
        if rows.is_empty() {
            return Ok(());
        }
        let (args, nr, rl, cfg) = (
            SgdArgs::from(p),
            u64_of(ids.len()),
            u64_of(row_len),
            self.config(rows.len()),
        );
        match momentum {
            None => {
                let mut b = stream.launch_builder(self.func(|k| &k.sgd_rows));
                b.arg(&args)
                    .arg(weight)
                    .arg(ids)
                    .arg(rows)
                    .arg(&nr)
                    .arg(&rl);
                // SAFETY: (Sgd, float*, const i64*, const float*, u64, u64), lengths checked.
                unsafe { b.launch(cfg) }?;
            }
            Some(m) => {
                let mut b = stream.launch_builder(self.func(|k| &k.sgd_rows_momentum));
                b.arg(&args)
                    .arg(weight)
                    .arg(m)
                    .arg(ids)
                    .arg(rows)
                    .arg(&nr)
                    .arg(&rl);
                // SAFETY: (Sgd, float*, float*, const i64*, const float*, u64, u64).
                unsafe { b.launch(cfg) }?;
            }
        }
        Ok(())
    }

    /// The merge fused with a dense SGD step: `weight` steps with the sum of `grads` (1 to
    /// [`MAX_FUSED_INPUTS`]) in one pass, the same bits as [`Gpu::reduce`] then
    /// [`Gpu::sgd_dense`].
    pub fn reduce_sgd(
        &self,
        stream: &Arc<CudaStream>,
        p: &SgdParams,
        weight: &mut CudaSlice<f32>,
        momentum: Option<&mut CudaSlice<f32>>,
        grads: &[&CudaSlice<f32>],
    ) -> Result<(), CudaError> {
        let n = weight.len();
        fused_inputs(n, grads)?;
        let has_m = u32::from(momentum.is_some());
        if let Some(m) = &momentum {
            check_len("the momentum", n, m.len())?;
        }
        if n == 0 {
            return Ok(());
        }
        let (args, n64, k) = (SgdArgs::from(p), u64_of(n), grads.len() as u32);
        // Without momentum the kernel never touches `m`: a one-element buffer stands in.
        let mut dummy;
        let m_arg: &mut CudaSlice<f32> = match momentum {
            Some(m) => m,
            None => {
                dummy = stream.alloc_zeros::<f32>(1)?;
                &mut dummy
            }
        };
        let mut b = stream.launch_builder(self.func(|k| &k.reduce8_sgd));
        b.arg(&args)
            .arg(weight)
            .arg(m_arg)
            .arg(&has_m)
            .arg(&n64)
            .arg(&k);
        for i in 0..MAX_FUSED_INPUTS {
            b.arg(grads.get(i).copied().unwrap_or(grads[0]));
        }
        // SAFETY: (Sgd, float*, float*, u32, u64, u32, 8 x const float*), lengths checked.
        unsafe { b.launch(self.stream_config(n.div_ceil(4))) }?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Adam (R73)

    /// One dense Adam step, in place.
    pub fn adam_dense(
        &self,
        stream: &Arc<CudaStream>,
        p: &AdamParams,
        weight: &mut CudaSlice<f32>,
        grad: &CudaSlice<f32>,
        mean: &mut CudaSlice<f32>,
        var: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let n = weight.len();
        check_len("the gradient", n, grad.len())?;
        check_len("the mean", n, mean.len())?;
        check_len("the variance", n, var.len())?;
        if n == 0 {
            return Ok(());
        }
        let (args, n64) = (AdamArgs::from(p), u64_of(n));
        let mut b = stream.launch_builder(self.func(|k| &k.adam_dense));
        b.arg(&args)
            .arg(weight)
            .arg(grad)
            .arg(mean)
            .arg(var)
            .arg(&n64);
        // SAFETY: (Adam, float*, const float*, float*, float*, u64), lengths checked.
        unsafe { b.launch(self.config(n)) }?;
        Ok(())
    }

    /// One Adam step with a row_sparse gradient (rows `ids`, distinct and in range; `pos`
    /// maps each weight row to its gradient row or -1, needed by [`AdamRows::All`] only).
    #[allow(clippy::too_many_arguments)]
    pub fn adam_rows(
        &self,
        stream: &Arc<CudaStream>,
        p: &AdamParams,
        weight: &mut CudaSlice<f32>,
        row_len: usize,
        ids: &CudaSlice<i64>,
        pos: Option<&CudaSlice<i64>>,
        rows: &CudaSlice<f32>,
        mean: &mut CudaSlice<f32>,
        var: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let n = weight.len();
        check_len("the gradient rows", ids.len() * row_len, rows.len())?;
        check_len("the mean", n, mean.len())?;
        check_len("the variance", n, var.len())?;
        let args = AdamArgs::from(p);
        let rl = u64_of(row_len);
        match AdamRows::of(p) {
            kind @ (AdamRows::Lazy | AdamRows::LazyClipped) => {
                if rows.is_empty() {
                    return Ok(());
                }
                let square_first = u32::from(kind == AdamRows::LazyClipped);
                let nr = u64_of(ids.len());
                let mut b = stream.launch_builder(self.func(|k| &k.adam_rows_lazy));
                b.arg(&args)
                    .arg(&square_first)
                    .arg(weight)
                    .arg(ids)
                    .arg(rows);
                b.arg(mean).arg(var).arg(&nr).arg(&rl);
                // SAFETY: (Adam, u32, float*, const i64*, const float*, float*, float*, u64,
                // u64), lengths checked.
                unsafe { b.launch(self.config(rows.len())) }?;
            }
            AdamRows::All => {
                if row_len == 0 || n == 0 {
                    return Ok(());
                }
                let wrows = n / row_len;
                let pos =
                    pos.ok_or_else(|| invalid("Adam over every row needs positions".into()))?;
                check_len("the row positions", wrows, pos.len())?;
                let wr = u64_of(wrows);
                let mut b = stream.launch_builder(self.func(|k| &k.adam_rows_all));
                b.arg(&args)
                    .arg(weight)
                    .arg(pos)
                    .arg(rows)
                    .arg(mean)
                    .arg(var);
                b.arg(&wr).arg(&rl);
                // SAFETY: (Adam, float*, const i64*, const float*, float*, float*, u64, u64).
                unsafe { b.launch(self.config(n)) }?;
            }
        }
        Ok(())
    }

    /// The merge fused with a dense Adam step (1 to [`MAX_FUSED_INPUTS`] gradients).
    pub fn reduce_adam(
        &self,
        stream: &Arc<CudaStream>,
        p: &AdamParams,
        weight: &mut CudaSlice<f32>,
        mean: &mut CudaSlice<f32>,
        var: &mut CudaSlice<f32>,
        grads: &[&CudaSlice<f32>],
    ) -> Result<(), CudaError> {
        let n = weight.len();
        fused_inputs(n, grads)?;
        check_len("the mean", n, mean.len())?;
        check_len("the variance", n, var.len())?;
        if n == 0 {
            return Ok(());
        }
        let (args, n64, k) = (AdamArgs::from(p), u64_of(n), grads.len() as u32);
        let mut b = stream.launch_builder(self.func(|k| &k.reduce8_adam));
        b.arg(&args)
            .arg(weight)
            .arg(mean)
            .arg(var)
            .arg(&n64)
            .arg(&k);
        for i in 0..MAX_FUSED_INPUTS {
            b.arg(grads.get(i).copied().unwrap_or(grads[0]));
        }
        // SAFETY: (Adam, float*, float*, float*, u64, u32, 8 x const float*), lengths checked.
        unsafe { b.launch(self.stream_config(n.div_ceil(4))) }?;
        Ok(())
    }
}

fn fused_inputs(n: usize, grads: &[&CudaSlice<f32>]) -> Result<(), CudaError> {
    if grads.is_empty() || grads.len() > MAX_FUSED_INPUTS {
        return Err(invalid(format!(
            "a fused update takes 1 to {MAX_FUSED_INPUTS} gradients, not {}",
            grads.len()
        )));
    }
    for g in grads {
        check_len("a gradient", n, g.len())?;
    }
    Ok(())
}

/// Lets the device's memory pool keep freed memory instead of returning it at every
/// synchronisation, so a buffer allocated per call (a `row_sparse_pull`'s rows) is not mapped
/// anew each time.
fn keep_pool_memory(ctx: &Arc<CudaContext>) -> Result<(), CudaError> {
    use cudarc::driver::{result, sys};
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut threshold = u64::MAX;
    // SAFETY: the device belongs to `ctx`; the attribute takes a u64, passed by pointer.
    unsafe {
        let pool = result::device::get_mem_pool(ctx.cu_device())?;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )?;
    }
    Ok(())
}

/// `slot`'s buffer, reallocated only when its length is not `len` (a table of another size).
pub(crate) fn reuse<'a, T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<&'a mut CudaSlice<T>, CudaError> {
    if slot.as_ref().is_none_or(|s| s.len() != len) {
        *slot = Some(stream.alloc_zeros::<T>(len)?);
    }
    slot.as_mut()
        .ok_or_else(|| CudaError::Driver("lost a scratch buffer".into()))
}
