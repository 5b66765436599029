//! Fuzz target `state_files`: damaged, crafted and arbitrary optimizer-state files into
//! `load_optimizer_states`, on the spec's `LocalStore` and on engine + CPU.

use super::{
    crafted_states, dtype, elements, engine_store, observe, public_args, settle, store_key,
    variant, KeyMix, TempFile, GOOD_SHAPES,
};
use arbitrary::Unstructured;
use kvstore::KvStore;
use kvstore_spec::kind::Kind;
use kvstore_spec::optimizer::{Optimizer, Sgd};
use kvstore_spec::store::{LocalStore, Observable};
use kvstore_spec::{Error, Key, Tensor, Value};
use serde_json::{json, Value as Json};

/// Fuzz body of optimizer-state files (SPEC R47, R7).
///
/// A `local` or `device` store (the spec's `LocalStore`, and `kvstore::create`: engine + CPU)
/// gets one to three keys, usually an SGD optimizer (with or without momentum) and a few
/// pushes, so that it holds real states. Then `load_optimizer_states` gets one of: the bytes it
/// saved itself (with or without the optimizer), those bytes with bytes flipped, inserted,
/// removed or cut short, the saved JSON document with one node replaced, removed or duplicated
/// (another version, format, key, shape, dtype, element, optimizer parameter...), a crafted
/// state file, or arbitrary bytes. Then:
///
/// - without an optimizer the load is `NoOptimizer`; a failing load is a typed error
///   (`InvalidState`, `InvalidOptimizer`) and leaves `observable()` as it was (R7);
/// - after a successful load, a save (with the optimizer) gives a document that loads into the
///   store as it was before the first load and reaches the same observable state, and saves to
///   the same bytes again (R47);
/// - the engine store loading the same file gives the same result and the same observable
///   state, and a push after the load (which runs SGD on the loaded states) gives the same
///   result and state on both.
pub fn state_files(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let kind = *u.choose(&["local", "device"])?;
    let (Ok(parsed), Ok(engine)) = (Kind::parse(kind), engine_store(kind)) else {
        panic!("create({kind}) failed");
    };
    let Ok(mut spec) = LocalStore::new(parsed) else {
        panic!("LocalStore::new({kind}) failed");
    };
    let mix = if u.arbitrary()? {
        KeyMix::Ints
    } else {
        KeyMix::Strings
    };
    let mut inits: Vec<(Key, Value)> = Vec::new();
    for _ in 0..u.int_in_range(1u8..=3)? {
        let key = store_key(u, mix)?;
        if inits.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let shape = GOOD_SHAPES[u.choose_index(GOOD_SHAPES.len())?];
        if let Some(value) = dense(u, shape)? {
            inits.push((key, value));
        }
    }
    let (keys, values) = public_args(&inits);
    let init = (
        spec.init(&inits),
        settle(&engine, engine.init(keys, values)),
    );
    assert_eq!(init.0, init.1, "init of {inits:?}");
    let with_optimizer = u.ratio(3u8, 4)?;
    if with_optimizer {
        let sgd = Sgd {
            learning_rate: *u.choose(&[0.1, 0.5])?,
            momentum: *u.choose(&[0.0, 0.9, 0.9])?,
            wd: *u.choose(&[0.0, 0.01])?,
            ..Sgd::default()
        };
        let optimizer = Optimizer::Sgd(sgd);
        let set = (
            spec.set_optimizer(optimizer.clone()),
            settle(&engine, engine.set_optimizer(optimizer)),
        );
        assert_eq!(set.0, set.1, "set_optimizer");
    }
    // The engine's `observable()` as the last push left it (nothing touches the engine store
    // until the load): an engine `observable()` is a round trip through its workers.
    let mut engine_observed = None;
    for _ in 0..u.int_in_range(0u8..=2)? {
        engine_observed = Some(push_both(u, &mut spec, &engine, &inits, "before the load")?);
    }
    let saved = spec.save_optimizer_states(u.arbitrary()?);
    let bytes = state_bytes(u, saved.as_deref().ok())?;

    let before = spec.clone();
    let observed_before = spec.observable();
    let engine_before = engine_observed.unwrap_or_else(|| observe(&engine));
    let result = spec.load_optimizer_states(&bytes);
    let file = TempFile::new("state-files");
    file.write(&bytes);
    let engine_result = settle(&engine, engine.load_optimizer_states(&file.0));
    let shown = String::from_utf8_lossy(&bytes);
    assert_eq!(
        result, engine_result,
        "spec and engine disagree on loading {shown}"
    );
    // The engine's state after the load (the checks below touch only the spec's stores).
    let engine_now = observe(&engine);
    match &result {
        Err(error) => {
            if with_optimizer {
                assert!(
                    matches!(
                        error,
                        Error::InvalidState { .. } | Error::InvalidOptimizer { .. }
                    ),
                    "R47: loading {shown} failed with {error:?}"
                );
            } else {
                assert!(
                    matches!(error, Error::NoOptimizer),
                    "R47: a store without optimizer loaded {shown}: {error:?}"
                );
            }
            assert!(
                spec.observable() == observed_before,
                "R7: a failing load ({}) changed the store: {shown}",
                variant(error)
            );
            assert!(
                engine_now == engine_before,
                "R7: a failing load ({}) changed the engine store: {shown}",
                variant(error)
            );
        }
        Ok(()) => {
            assert!(
                with_optimizer,
                "R47: a store without optimizer loaded {shown}"
            );
            let again = match spec.save_optimizer_states(true) {
                Ok(again) => again,
                Err(error) => panic!("R47: no save after loading {shown}: {error:?}"),
            };
            let mut fresh = before.clone();
            if let Err(error) = fresh.load_optimizer_states(&again) {
                panic!(
                    "R47: the save after loading {shown} does not load: {error:?}\n{}",
                    String::from_utf8_lossy(&again)
                );
            }
            assert!(
                fresh.observable() == spec.observable(),
                "R47: loading the save after loading {shown} gives another state"
            );
            assert_eq!(
                fresh.save_optimizer_states(true).ok().as_ref(),
                Some(&again),
                "R47: the save of the reloaded store differs"
            );
        }
    }
    let spec_now = spec.observable();
    assert!(
        spec_now == engine_now,
        "after loading {shown} the stores differ\nspec:   {spec_now:?}\nengine: {engine_now:?}"
    );
    push_both(u, &mut spec, &engine, &inits, "after the load")?;
    let saves = (spec.save_optimizer_states(true), engine_save(&engine));
    assert!(
        saves.0 == saves.1,
        "saves differ after loading {shown}: {saves:?}"
    );
    Ok(())
}

fn engine_save(engine: &KvStore) -> kvstore::Result<Vec<u8>> {
    let file = TempFile::new("state-files-save");
    engine
        .save_optimizer_states(&file.0, true)
        .map(|()| file.read())
}

/// A dense value of `shape`: f32 mostly, or another dtype.
fn dense(u: &mut Unstructured<'_>, shape: &[usize]) -> arbitrary::Result<Option<Value>> {
    let dtype = dtype(u)?;
    let data = elements(u, dtype, shape.iter().product())?;
    Ok(Tensor::new(shape.to_vec(), data).ok().map(Value::Dense))
}

/// A dense gradient for some of the keys, on both stores: same result, same state. Returns the
/// engine store's `observable()` after the push.
fn push_both(
    u: &mut Unstructured<'_>,
    spec: &mut LocalStore,
    engine: &KvStore,
    inits: &[(Key, Value)],
    when: &str,
) -> arbitrary::Result<Observable> {
    let mut pairs = Vec::new();
    for (key, value) in inits {
        if u.ratio(3u8, 4)? {
            if let Some(grad) = dense(u, value.shape())? {
                pairs.push((key.clone(), grad));
            }
        }
    }
    let spec_result = spec.push(&pairs);
    let (keys, values) = public_args(&pairs);
    let engine_result = settle(engine, engine.push(keys, values));
    assert_eq!(spec_result, engine_result, "push {when} of {pairs:?}");
    let (spec_now, engine_now) = (spec.observable(), observe(engine));
    assert!(
        spec_now == engine_now,
        "after the push {when} the stores differ\nspec:   {spec_now:?}\nengine: {engine_now:?}"
    );
    Ok(engine_now)
}

/// The bytes to load: the store's own save, damaged at the byte or JSON level, a crafted file,
/// or arbitrary bytes.
fn state_bytes(u: &mut Unstructured<'_>, saved: Option<&[u8]>) -> arbitrary::Result<Vec<u8>> {
    let choice = u.int_in_range(0u8..=7)?;
    match (choice, saved) {
        (0, Some(saved)) => Ok(saved.to_vec()),
        (1 | 2, Some(saved)) => {
            let mut bytes = saved.to_vec();
            for _ in 0..u.int_in_range(1u8..=3)? {
                let at = u.choose_index(bytes.len() + 1)?;
                match u.int_in_range(0u8..=3)? {
                    0 if at < bytes.len() => bytes[at] = u.arbitrary()?,
                    1 => bytes.insert(at, *u.choose(b"0123456789-.,:[]{}\"e ")?),
                    2 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.truncate(at),
                }
            }
            Ok(bytes)
        }
        (3..=5, Some(saved)) => {
            let Ok(mut doc) = serde_json::from_slice::<Json>(saved) else {
                panic!("the store's own save is not JSON: {saved:?}");
            };
            for _ in 0..u.int_in_range(1u8..=2)? {
                mutate(u, &mut doc)?;
            }
            Ok(serde_json::to_vec(&doc).unwrap_or_default())
        }
        (6, _) => crafted_states(u),
        _ => {
            let n = u.int_in_range(0u8..=64)?;
            (0..n).map(|_| u.arbitrary::<u8>()).collect()
        }
    }
}

/// Replaces, removes or duplicates one node of a JSON document.
fn mutate(u: &mut Unstructured<'_>, doc: &mut Json) -> arbitrary::Result<()> {
    let count = nodes(doc);
    let mut n = u.choose_index(count)?;
    let replacement = replacement(u, doc)?;
    let Some(node) = nth(doc, &mut n) else {
        return Ok(());
    };
    match (u.int_in_range(0u8..=3)?, node) {
        (0, Json::Array(items)) if !items.is_empty() => {
            let at = u.choose_index(items.len())?;
            items.remove(at);
        }
        (1, Json::Array(items)) if !items.is_empty() => {
            let at = u.choose_index(items.len())?;
            let copy = items[at].clone();
            items.insert(at, copy);
        }
        (0 | 1, Json::Object(fields)) if !fields.is_empty() => {
            let at = u.choose_index(fields.len())?;
            let name = fields.keys().nth(at).cloned().unwrap_or_default();
            fields.remove(&name);
        }
        (_, node) => *node = replacement,
    }
    Ok(())
}

/// Values a node may become: other types, extreme numbers, non-finite texts, a copy of a node.
fn replacement(u: &mut Unstructured<'_>, doc: &Json) -> arbitrary::Result<Json> {
    Ok(match u.int_in_range(0u8..=12)? {
        0 => Json::Null,
        1 => json!(0),
        2 => json!(-1),
        3 => json!(2),
        4 => json!(1.5),
        5 => json!(u64::MAX),
        6 => json!(1e39),
        7 => json!(*u.choose(&["nan", "inf", "-inf", "x", "F16", "float16", "cpu(1)"])?),
        8 => json!([]),
        9 => json!({}),
        10 => json!([3, 2]),
        11 => json!(u.arbitrary::<bool>()?),
        _ => {
            let mut n = u.choose_index(nodes(doc))?;
            let mut copy = doc.clone();
            nth(&mut copy, &mut n)
                .map(|n| n.clone())
                .unwrap_or_default()
        }
    })
}

fn nodes(doc: &Json) -> usize {
    1 + match doc {
        Json::Array(items) => items.iter().map(nodes).sum(),
        Json::Object(fields) => fields.values().map(nodes).sum(),
        _ => 0,
    }
}

/// The `n`th node in pre-order.
fn nth<'a>(doc: &'a mut Json, n: &mut usize) -> Option<&'a mut Json> {
    if *n == 0 {
        return Some(doc);
    }
    *n -= 1;
    match doc {
        Json::Array(items) => items.iter_mut().find_map(|item| nth(item, n)),
        Json::Object(fields) => fields.values_mut().find_map(|item| nth(item, n)),
        _ => None,
    }
}
