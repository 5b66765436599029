//! `soak SECONDS`: workers push and pull one key in a loop until SECONDS pass, so a test can
//! stop or kill a process from outside mid-job (R64: the others must fail, never hang).

use kvstore_mpi::Handle;
use kvstore_spec::{Key, Result, Tensor, Value};
use std::io::Write;
use std::time::{Duration, Instant};

/// Loops push + pull; prints `worker R: soaking` once the loop runs.
pub fn run(kv: &dyn Handle, seconds: u64) -> Result<String> {
    let key = Key::Int(1);
    let value = |x: f32| -> Result<Value> { Ok(Value::Dense(Tensor::new([4], vec![x; 4])?)) };
    kv.init(&[(key.clone(), value(0.0)?)])?;
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        kv.push(&[(key.clone(), value(1.0)?)])?;
        kv.pull(std::slice::from_ref(&key))?;
        rounds += 1;
        if rounds == 1 {
            println!("worker {}: soaking", kv.rank());
            // The test waits for this line before it strikes.
            let _ = std::io::stdout().flush();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(format!("worker {}: {rounds} rounds", kv.rank()))
}
