//! Push + pull of one dense f32 key per worker, timed on worker 0.

use kvstore_mpi::Handle;
use kvstore_spec::{Key, Result, Tensor, Value};

/// Times `iterations` push + pull of `elements` f32; worker 0 reports the median and the
/// fastest iteration.
pub fn run(kv: &dyn Handle, elements: usize, iterations: usize) -> Result<Option<String>> {
    let key = Key::Int(0);
    let zeros = Value::Dense(Tensor::new([elements], vec![0.0_f32; elements])?);
    kv.init(&[(key.clone(), zeros)])?;
    let grad = (0..elements)
        .map(|j| (j % 7) as f32 * 0.25)
        .collect::<Vec<f32>>();
    let pairs = [(key.clone(), Value::Dense(Tensor::new([elements], grad)?))];
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        kv.barrier()?;
        let started = std::time::Instant::now();
        kv.push(&pairs)?;
        let pulled = kv.pull(std::slice::from_ref(&key))?;
        times.push(started.elapsed().as_secs_f64());
        drop(pulled);
    }
    times.sort_by(f64::total_cmp);
    let (median, fastest) = (times[times.len() / 2], times[0]);
    Ok((kv.rank() == 0).then(|| {
        format!(
            "push+pull of {elements} f32, {} workers: median {:.2} ms, fastest {:.2} ms",
            kv.num_workers(),
            median * 1e3,
            fastest * 1e3
        )
    }))
}

/// The copy ceiling in the same run: the median time of copying `elements` f32 into a warm
/// buffer, which every copy of a gradient (a slice, an MPI transfer, a reply) pays at least.
pub fn memcpy(elements: usize, iterations: usize) -> String {
    let source: Vec<f32> = (0..elements).map(|j| j as f32).collect();
    let mut target = vec![0.0_f32; elements];
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        let started = std::time::Instant::now();
        target.copy_from_slice(&source);
        times.push(started.elapsed().as_secs_f64());
        std::hint::black_box(&mut target);
    }
    times.sort_by(f64::total_cmp);
    format!(
        "memcpy of {elements} f32: median {:.2} ms, fastest {:.2} ms",
        times[times.len() / 2] * 1e3,
        times[0] * 1e3
    )
}
