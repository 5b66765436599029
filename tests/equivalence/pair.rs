//! Two stores driven with the same ops: the spec (the oracle) and an engine store. After each
//! op their results, pulled outputs and saved state files must agree bit for bit.

use crate::ops::{leaves, Op};
use kvstore::spec::optimizer::{OptimizerUpdater, State};
use kvstore::spec::store::Observable;
use kvstore::{
    BackendKind, DType, Error, Input, KvStore, NdArray, Optimizer, Options, PullOptions, Result,
    Tensor, Values,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// What one op did on one store.
struct Outcome {
    result: Result<()>,
    /// Every output array the op wrote (or had to leave alone), in argument order.
    outputs: Vec<NdArray>,
    /// The bytes a save wrote.
    saved: Option<Vec<u8>>,
}

/// Arrays holding `values`, one per leaf.
fn arrays(values: &Values<kvstore::Value>) -> Values<NdArray> {
    values.clone().map(NdArray::new)
}

fn flat(arrays: &Values<NdArray>) -> Vec<NdArray> {
    leaves(arrays).into_iter().cloned().collect()
}

fn state_file(dir: &Path, file: u8) -> PathBuf {
    dir.join(format!("states-{file}.json"))
}

/// Runs `op` on `store`, whose slot arrays are `slots`. The same code runs on both stores, so
/// their calls are identical.
fn run(store: &KvStore, op: &Op, dir: &Path, slots: &[NdArray]) -> Outcome {
    let mut outputs = Vec::new();
    let mut saved = None;
    let result = match op {
        Op::Init { keys, values } => store.init(keys.clone(), values.clone()),
        Op::Push {
            keys,
            values,
            priority,
            from_arrays: false,
        } => store.push_with_priority(keys.clone(), values.clone(), *priority),
        Op::Push {
            keys,
            values,
            priority,
            from_arrays: true,
        } => {
            let inputs = arrays(values);
            let result =
                store.push_with_priority(keys.clone(), inputs.clone().map(Input::Array), *priority);
            // The push copied (or read, in engine order) the arrays: writing them now must not
            // reach the store (R20).
            for array in flat(&inputs) {
                array.set(Tensor::full(array.shape(), DType::F32, 7.0).unwrap());
            }
            result
        }
        Op::Pull {
            keys,
            outs,
            ignore_sparse,
            priority,
        } => {
            let outs = arrays(outs);
            outputs = flat(&outs);
            let options = PullOptions {
                priority: *priority,
                ignore_sparse: *ignore_sparse,
            };
            store.pull_with(keys.clone(), outs, options)
        }
        Op::RowSparsePull {
            keys,
            outs,
            row_ids,
            priority,
        } => {
            let outs = arrays(outs);
            outputs = flat(&outs);
            store.row_sparse_pull_with_priority(keys.clone(), outs, row_ids.clone(), *priority)
        }
        Op::PushPull { keys, values, outs } => {
            let inputs = arrays(values);
            let outs = match outs {
                Some(outs) => arrays(outs),
                None => inputs.clone(),
            };
            outputs = flat(&outs);
            store.pushpull(keys.clone(), inputs.map(Input::Array), outs)
        }
        Op::Broadcast { keys, values, outs } => {
            let outs = arrays(outs);
            outputs = flat(&outs);
            store.broadcast(keys.clone(), values.clone(), outs)
        }
        Op::PushSlots {
            keys,
            slots: picked,
            priority,
        } => {
            let inputs = picked.clone().map(|i| Input::Array(slots[i].clone()));
            store.push_with_priority(keys.clone(), inputs, *priority)
        }
        Op::PullSlots {
            keys,
            slots: picked,
            ignore_sparse,
        } => {
            let outs = picked.clone().map(|i| slots[i].clone());
            outputs = flat(&outs);
            let options = PullOptions {
                priority: 0,
                ignore_sparse: *ignore_sparse,
            };
            store.pull_with(keys.clone(), outs, options)
        }
        Op::SetCompression(c) => store.set_gradient_compression(*c),
        Op::SetOptimizer(optimizer) => store.set_optimizer(optimizer.clone()),
        Op::SetUpdater(kind) => {
            store.set_updater(kind.build());
            Ok(())
        }
        Op::SaveStates {
            file,
            dump_optimizer,
        } => {
            let path = state_file(dir, *file);
            let result = store.save_optimizer_states(&path, *dump_optimizer);
            if result.is_ok() {
                saved = Some(std::fs::read(&path).unwrap());
            }
            result
        }
        Op::LoadStates { file } => store.load_optimizer_states(state_file(dir, *file)),
        // Files are written once, by the spec's turn; the engine's turn loads nothing new.
        Op::WriteStates { .. } | Op::CorruptStates { .. } => Ok(()),
        Op::ValueOf(key) => {
            // What a key holds, as an output to compare (a dense placeholder when it has none).
            let value = store
                .value_of(key.clone())
                .unwrap_or_else(|| Tensor::zeros([0], DType::F32).unwrap().into());
            outputs.push(NdArray::new(value));
            Ok(())
        }
        Op::WaitAll => store.wait_all(),
    };
    Outcome {
        result,
        outputs,
        saved,
    }
}

/// Writes the state files `WriteStates` and `CorruptStates` describe.
fn write_state_file(op: &Op, dir: &Path) {
    match op {
        Op::WriteStates {
            file,
            key,
            momentum,
            optimizer,
        } => {
            let momentum = momentum
                .as_ref()
                .map(|shape| Tensor::full(shape.clone(), DType::F32, 0.5).unwrap());
            let optimizer = optimizer.clone().unwrap_or_default();
            let states = BTreeMap::from([(key.clone(), State::momentum(1, momentum))]);
            // An invalid optimizer cannot be saved: such a file holds the default one.
            let updater = OptimizerUpdater::with_states(Optimizer::Sgd(optimizer), states.clone())
                .or_else(|_| {
                    OptimizerUpdater::with_states(Optimizer::Sgd(Default::default()), states)
                })
                .unwrap();
            let bytes = updater.save(true).unwrap();
            std::fs::write(state_file(dir, *file), bytes).unwrap();
        }
        Op::CorruptStates { file } => {
            std::fs::write(state_file(dir, *file), b"{\"format\": 7").unwrap();
        }
        _ => {}
    }
}

/// Set to print every op's outcome, to judge the generator's mix of ops and errors:
/// `EQUIVALENCE_STATS=1 cargo test ... -- --nocapture 2>&1 | grep '^op ' | sort | uniq -c`.
const STATS_VAR: &str = "EQUIVALENCE_STATS";

/// `op <Op variant> <ok | error variant>`.
fn outcome_line(op: &Op, result: &Result<()>) -> String {
    let name = |debug: String| {
        let end = debug.find([' ', '(']).unwrap_or(debug.len());
        debug[..end].to_owned()
    };
    let outcome = match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => name(format!("{e:?}")),
    };
    format!("op {} {outcome}", name(format!("{op:?}")))
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// The spec store and an engine store, with a folder for their state files.
#[derive(Debug)]
pub struct Pair {
    spec: KvStore,
    engine: KvStore,
    dir: PathBuf,
    /// Wait for the engine only at `WaitAll` ops, observable checks and errors, and compare
    /// outputs only then.
    pipelined: bool,
    steps: usize,
    /// Output arrays of earlier ops, as (spec's, engine's): later ops reuse them.
    spec_slots: Vec<NdArray>,
    engine_slots: Vec<NdArray>,
    /// Outputs to compare at the next check, with the op that wrote them.
    unchecked: Vec<(String, NdArray, NdArray)>,
    /// Errors of ops the engine ran in a pipelined run, not collected yet, in issue order.
    unreported: Vec<(String, Error)>,
}

impl Pair {
    pub fn new(kind: &str, backend: BackendKind, workers: usize, pipelined: bool) -> Pair {
        let store = |backend| kvstore::create_with(kind, Options { backend, workers }).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "kvstore-equivalence-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Pair {
            spec: store(BackendKind::Spec),
            engine: store(backend),
            dir,
            pipelined,
            steps: 0,
            spec_slots: Vec::new(),
            engine_slots: Vec::new(),
            unchecked: Vec::new(),
            unreported: Vec::new(),
        }
    }

    /// Runs `op` on both stores and checks that they agree.
    pub fn apply(&mut self, op: &Op) {
        if matches!(op, Op::WaitAll) {
            // The errors of earlier ops come back first.
            self.collect_errors();
        }
        write_state_file(op, &self.dir);
        let spec = run(&self.spec, op, &self.dir, &self.spec_slots);
        let engine = run(&self.engine, op, &self.dir, &self.engine_slots);
        // An error found while the engine ran the op comes back at a later wait: the next one,
        // or in a pipelined run the next check's.
        let failed_while_running = spec.result.is_err() && engine.result.is_ok();
        match &spec.result {
            Err(error) if failed_while_running && self.pipelined => {
                self.unreported.push((format!("{op:?}"), error.clone()));
            }
            _ => {
                let engine_result = match engine.result {
                    Ok(()) if failed_while_running => self.engine.wait_all(),
                    result => result,
                };
                assert_eq!(
                    engine_result, spec.result,
                    "engine and spec disagree on the result of {op:?}"
                );
            }
        }
        if spec.result.is_ok() && !self.pipelined {
            assert_eq!(self.engine.wait_all(), Ok(()), "wait_all after {op:?}");
        }
        if !self.pipelined {
            // The op's error also reaches each array it writes, once (none when it succeeded).
            let expected = if failed_while_running {
                spec.result.clone()
            } else {
                Ok(())
            };
            for (i, out) in engine.outputs.iter().enumerate() {
                if !engine.outputs[..i].iter().any(|o| o.same_array(out)) {
                    assert_eq!(out.wait(), expected, "wait on output {i} of {op:?}");
                }
            }
        }
        assert_eq!(engine.saved, spec.saved, "state file saved by {op:?}");
        for (i, (s, e)) in spec.outputs.iter().zip(&engine.outputs).enumerate() {
            self.unchecked
                .push((format!("output {i} of {op:?}"), s.clone(), e.clone()));
        }
        if !matches!(op, Op::PullSlots { .. } | Op::ValueOf(_)) {
            self.spec_slots.extend(spec.outputs);
            self.engine_slots.extend(engine.outputs);
        }
        if std::env::var_os(STATS_VAR).is_some() {
            eprintln!("{}", outcome_line(op, &spec.result));
        }
        self.steps += 1;
        if !self.pipelined {
            self.check_outputs();
        }
        let every = if self.pipelined { 8 } else { 3 };
        if self.steps % every == 0 || matches!(op, Op::WaitAll) {
            self.collect_errors();
            self.check_outputs();
            self.check_observable();
        }
    }

    /// Each error the engine found while running earlier ops comes back from one `wait_all`,
    /// in issue order, and then there is none.
    fn collect_errors(&mut self) {
        for (what, error) in self.unreported.drain(..) {
            assert_eq!(self.engine.wait_all(), Err(error), "the error of {what}");
        }
        assert_eq!(
            self.engine.wait_all(),
            Ok(()),
            "wait_all with no error left"
        );
    }

    /// Outputs written since the last check agree. In a pipelined run an output may have been
    /// written again since; both stores saw the same writes, so their contents still agree.
    fn check_outputs(&mut self) {
        for (what, spec, engine) in self.unchecked.drain(..) {
            assert_eq!(engine.value(), spec.value(), "{what}");
        }
    }

    /// Both stores' observable states agree, key by key.
    pub fn check_observable(&self) {
        let spec = self.spec.observable().unwrap();
        let engine = self.engine.observable().unwrap();
        compare(&engine, &spec);
    }

    /// The final checks: no error left behind in the engine, equal states.
    pub fn finish(&mut self) {
        self.collect_errors();
        self.check_outputs();
        self.check_observable();
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Compares field by field so a failure names the key that differs.
fn compare(engine: &Observable, spec: &Observable) {
    assert_eq!(engine.key_type, spec.key_type, "key type");
    assert_eq!(
        engine.values.keys().collect::<Vec<_>>(),
        spec.values.keys().collect::<Vec<_>>(),
        "keys"
    );
    for (key, value) in &spec.values {
        assert_eq!(engine.values.get(key), Some(value), "value of key {key}");
    }
    assert_eq!(engine.compression, spec.compression, "compression");
    assert_eq!(engine.residuals, spec.residuals, "residuals");
    assert_eq!(engine.optimizer, spec.optimizer, "optimizer and states");
    assert_eq!(engine.has_updater, spec.has_updater, "has_updater");
}
