//! Fuzz target `differential`: the spec backend and engine + CPU, driven through the public API
//! with the same operations.

use super::{
    decode_op, default_options, engine_store, observe, public_args, public_outputs, settle,
    KindChoice, Op, TempFile, MAX_OPS,
};
use arbitrary::Unstructured;
use kvstore::{BackendKind, KvStore, NdArray, Options, PullOptions, RowIds};

/// Fuzz body of the equivalence of the backends (SPEC R7, R60, R61).
///
/// Decodes the operation sequences of [`super::store_ops`] (init, push, pull, row_sparse_pull,
/// pushpull, broadcast, compression, SGD, saving and loading optimizer states, damaged state
/// files) and runs each on `kvstore::create_with(kind, Options { backend: BackendKind::Spec, .. })`
/// and on `kvstore::create(kind)` (engine + CPU), through the same public calls. After each
/// operation, once the engine has run it:
///
/// - both return the same result: `Ok`, or the same typed error (an error the engine raises
///   while running is taken from the `wait_all` that follows, R61);
/// - every output array holds the same value, and a save writes the same bytes;
/// - `observable()` is the same on both (values bit for bit with NaN equal to NaN, R60;
///   residuals, optimizer and its states);
/// - a failing operation leaves both stores' `observable()` as it was (R7).
pub fn differential(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(kind) = u.arbitrary::<KindChoice>() else {
        return;
    };
    let spec_options = Options {
        backend: BackendKind::Spec,
        ..default_options()
    };
    let (spec, engine) = match (
        kvstore::create_with(kind.name(), spec_options),
        engine_store(kind.name()),
    ) {
        (Ok(spec), Ok(engine)) => (spec, engine),
        (spec, engine) => panic!("create({}) failed: {spec:?} {engine:?}", kind.name()),
    };
    let load_file = TempFile::new("differential-load");
    let save_files = (
        TempFile::new("differential-spec"),
        TempFile::new("differential-engine"),
    );
    let mut saved: Vec<Vec<u8>> = Vec::new();
    // Each store's `observable()` as the last step left it. Nothing touches the stores between
    // two steps, so it is their state before the next step: each step observes each store once,
    // after its operation (an engine `observable()` is a round trip through its workers).
    let (mut spec_before, mut engine_before) = (observe(&spec), observe(&engine));
    for step in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = decode_op(&mut u, &saved) else {
            break;
        };
        let Some(op) = op else {
            continue;
        };
        if let Op::Load(bytes) = &op {
            load_file.write(bytes);
        }
        let (spec_result, spec_outs) = run(&spec, &op, &load_file, &save_files.0);
        let (engine_result, engine_outs) = run(&engine, &op, &load_file, &save_files.1);
        assert!(
            spec_result == engine_result,
            "step {step}: {op:?}\nspec:   {spec_result:?}\nengine: {engine_result:?}"
        );
        for (i, (s, e)) in spec_outs.iter().zip(&engine_outs).enumerate() {
            let (s, e) = (s.value(), e.value());
            assert!(
                s == e,
                "step {step}: output {i} of {op:?}\nspec:   {s:?}\nengine: {e:?}"
            );
        }
        let spec_after = observe(&spec);
        let engine_after = observe(&engine);
        if spec_result.is_err() {
            assert!(
                spec_after == spec_before,
                "R7: step {step}: {op:?} failed with {spec_result:?} but changed the spec store"
            );
            assert!(
                engine_after == engine_before,
                "R7: step {step}: {op:?} failed with {engine_result:?} but changed the engine store\nbefore: {engine_before:?}\nafter:  {engine_after:?}"
            );
        }
        assert!(
            spec_after == engine_after,
            "step {step}: after {op:?} ({spec_result:?}) the stores differ\nspec:   {spec_after:?}\nengine: {engine_after:?}"
        );
        if let (Op::Save(_), Ok(())) = (&op, &spec_result) {
            let (s, e) = (save_files.0.read(), save_files.1.read());
            assert!(
                s == e,
                "step {step}: {op:?} saved other bytes\nspec:   {}\nengine: {}",
                String::from_utf8_lossy(&s),
                String::from_utf8_lossy(&e)
            );
            saved.push(s);
        }
        (spec_before, engine_before) = (spec_after, engine_after);
    }
}

/// Runs `op` on `store` through the public API: its settled result and the output arrays it
/// was given.
fn run(
    store: &KvStore,
    op: &Op,
    load: &TempFile,
    save: &TempFile,
) -> (kvstore::Result<()>, Vec<NdArray>) {
    let mut arrays = Vec::new();
    let result = match op {
        Op::Init(pairs) => {
            let (keys, values) = public_args(pairs);
            store.init(keys, values)
        }
        Op::Push(pairs) => {
            let (keys, values) = public_args(pairs);
            store.push(keys, values)
        }
        Op::Pull(outs, ignore_sparse) => {
            let (keys, _) = public_args(outs);
            let (a, outs) = public_outputs(outs);
            arrays = a;
            let options = PullOptions {
                priority: 0,
                ignore_sparse: *ignore_sparse,
            };
            store.pull_with(keys, outs, options)
        }
        Op::RowSparsePull(outs, ids) => {
            let (keys, _) = public_args(outs);
            let (a, outs) = public_outputs(outs);
            arrays = a;
            store.row_sparse_pull(keys, outs, RowIds(ids.clone()))
        }
        Op::PushPull(pairs, outs) => {
            let (keys, values) = public_args(pairs);
            let (a, outs) = public_outputs(outs);
            arrays = a;
            store.pushpull(keys, values, outs)
        }
        Op::Broadcast(pairs, outs) => {
            let (keys, values) = public_args(pairs);
            let (a, outs) = public_outputs(outs);
            arrays = a;
            store.broadcast(keys, values, outs)
        }
        Op::SetCompression(c) => store.set_gradient_compression(*c),
        Op::SetOptimizer(o) => store.set_optimizer(o.clone()),
        Op::Save(dump) => store.save_optimizer_states(&save.0, *dump),
        Op::Load(_) => store.load_optimizer_states(&load.0),
    };
    (settle(store, result), arrays)
}
